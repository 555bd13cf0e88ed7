"""Backbone sources and folder formats, one module per family (imported on first lookup of
:data:`promptbench.backbones.sources.SOURCES`). A module registers with ``@SOURCES.register("<prefix>")`` /
``@FOLDER_FORMATS.register("<name>")`` and imports its heavy libraries inside ``load`` only."""
