"""Tower adapters, one module per family (imported on first lookup of
:data:`promptbench.backbones.towers.TOWER_ADAPTERS`); each registers its classes with ``@register_tower(...)``."""
