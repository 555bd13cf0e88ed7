"""Prompt-learning methods, one file each, registered by name (see ``registry``), each with a typed config
(``config``: a :class:`~promptbench.methods.config.MethodConfig` dataclass, checked by :func:`check_method_config`).

Importing the package imports neither torch nor any method (``Method`` is loaded on first use): ``promptbench list``
reads the registered names without them (:meth:`~promptbench.core.registry.Registry.declared_names`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from promptbench.methods.config import MethodConfig
from promptbench.methods.registry import METHODS, check_method_config, get_method, load_all, register, unregister

if TYPE_CHECKING:
    from promptbench.methods.base import Method


def build_method(cfg, backbone, classnames, dataset) -> Method:
    """Instantiate ``cfg.name`` from the registry."""
    return get_method(str(cfg.name))(backbone, classnames, cfg, dataset)


def __getattr__(name: str) -> Any:
    if name == "Method":
        from promptbench.methods.base import Method

        return Method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "check_method_config", "get_method", "load_all",
           "register", "unregister"]
