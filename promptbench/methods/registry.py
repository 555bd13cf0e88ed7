"""Method registry: ``@register("name")`` on a :class:`~promptbench.methods.base.Method` subclass.

A :class:`~promptbench.core.registry.Registry`: every module of ``promptbench.methods`` is imported on the first
lookup (a new method is a new file), methods of other distributions come from the ``promptbench.methods`` entry
points, and an unknown name fails in one line with close matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from promptbench.config.paths import config_dirs
from promptbench.core.registry import Registry
from promptbench.methods.config import typed_config

if TYPE_CHECKING:
    from promptbench.methods.base import Method

M = TypeVar("M", bound="type[Method]")

#: method family → its name in figures (one figure per family with ``figure.split_by=group``), in drawing order;
#: docs/methods_text.md, methods_visual.md and methods_weight.md describe the families' members
FAMILIES: dict[str, str] = {
    "baseline": "Zero-shot and linear probes",
    "adapter": "Feature adapters",
    "text": "Text and multimodal prompts",
    "visual": "Visual prompts",
    "weight": "Weight-space adaptation",
    "other": "Other methods",
}

#: modules of the package that hold no method
_NOT_METHODS = {"registry", "base", "common", "config"}
METHODS: Registry[type[Method]] = Registry("method", package="promptbench.methods", skip=_NOT_METHODS,
                                           entry_point_group="promptbench.methods")


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a method under a unique lowercase name (sets its ``method_name``)."""
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"method names are lowercase identifiers, got '{name}'")

    def wrap(cls: M) -> M:
        METHODS.register(name, cls)
        cls.method_name = name
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove ``name`` (tests registering a throw-away method)."""
    METHODS.unregister(name)


def load_all() -> dict[str, type[Method]]:
    """Every registered method by name (imports the package's modules and the entry points once)."""
    return METHODS.as_dict()


def get_method(name: str) -> type[Method]:
    """The method class called ``name``; an unknown name raises a one-line ``UnknownName`` with close matches."""
    return METHODS.get(name)


def preset_methods(scope: str, *listed: str) -> str:
    """``${pb_methods:<scope>,<name>,...}`` in an experiment's ``hydra.sweeper.params.method``.

    The listed methods in that order (the tables' row order), then every other registered method
    (alphabetically), so a new method file joins the presets without editing them. ``scope``: ``all``, or ``demo``
    (leaves out methods declaring ``demo_excluded``). Returns Hydra's sweep syntax ``a,b,c``.
    """
    if scope not in ("all", "demo"):
        raise ValueError(f"pb_methods scope must be 'all' or 'demo', got '{scope}'")
    known = METHODS.declared_names()  # read from the sources: composing a grid imports no method (nor torch)
    names = [str(n) for n in listed] + sorted(set(known) - {str(n) for n in listed})
    if scope == "demo":
        names = [n for n in names if not (n in known and declared_demo_excluded(n))]
    return ",".join(dict.fromkeys(names))


def declared_demo_excluded(name: str) -> bool:
    """``demo_excluded`` as ``conf/method/<name>.yaml`` declares it (the method's class is imported only for a method
    without a config file, e.g. one from an entry point); the contract tests keep the two equal."""
    for folder in config_dirs():
        path = folder / "method" / f"{name}.yaml"
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return bool(data.get("demo_excluded", False))
    return bool(get_method(name).demo_excluded)


def check_method_config(node: Any) -> Any:
    """The typed config of a composed method node (``cfg.method``), checked against the dataclass of the method it
    names: cheap, nothing is built; call it wherever a cell's config is composed (``engine.run`` and the
    sweep's grid do). An unknown key, a mistyped value or one outside a key's ``choices`` raises a one-line
    ``ConfigValueError``; an unknown method the registry's one-line ``UnknownName``."""
    return typed_config(node, get_method(str(node.get("name"))).config_class)
