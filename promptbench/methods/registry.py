"""Method registry: ``@register("name")`` on a :class:`~promptbench.methods.base.Method` subclass."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from promptbench.methods.base import Method

METHODS: dict[str, type[Method]] = {}
_NOT_METHODS = {"registry", "base", "common"}


def register(name: str):
    """Class decorator adding a method under a unique lowercase name."""
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"method names are lowercase identifiers, got '{name}'")

    def wrap(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method '{name}' registered twice ({METHODS[name].__name__}, {cls.__name__})")
        cls.method_name = name
        METHODS[name] = cls
        return cls

    return wrap


def load_all() -> dict[str, type[Method]]:
    """Import every module of ``promptbench.methods`` so their ``@register`` lines run."""
    package = importlib.import_module("promptbench.methods")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"promptbench.methods.{info.name}")
    return METHODS


def get_method(name: str) -> type[Method]:
    methods = load_all()
    if name not in methods:
        raise KeyError(f"unknown method '{name}'. Available: {', '.join(sorted(methods))}")
    return methods[name]


def preset_methods(scope: str, *listed: str) -> str:
    """``${pb_methods:<scope>,<name>,...}`` in an experiment's ``hydra.sweeper.params.method``.

    The listed methods in that order (the tables' row order), then every other registered method
    (alphabetically), so a new method file joins the presets without editing them. ``scope``: ``all``, or ``demo``
    (leaves out methods declaring ``demo_excluded``). Returns Hydra's sweep syntax ``a,b,c``.
    """
    if scope not in ("all", "demo"):
        raise ValueError(f"pb_methods scope must be 'all' or 'demo', got '{scope}'")
    methods = load_all()
    names = [str(n) for n in listed] + sorted(set(methods) - {str(n) for n in listed})
    if scope == "demo":
        names = [n for n in names if not (n in methods and methods[n].demo_excluded)]
    return ",".join(dict.fromkeys(names))
