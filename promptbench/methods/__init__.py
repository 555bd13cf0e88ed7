"""Prompt-learning methods, one file each, registered by name (see ``registry``)."""

from promptbench.methods.base import Method
from promptbench.methods.registry import METHODS, get_method, load_all, register


def build_method(cfg, backbone, classnames, dataset) -> Method:
    """Instantiate ``cfg.name`` from the registry."""
    return get_method(str(cfg.name))(backbone, classnames, cfg, dataset)


__all__ = ["METHODS", "Method", "build_method", "get_method", "load_all", "register"]
