"""Prompt-learning methods, one file each, registered by name (see ``registry``), each with a typed config
(``config``: a :class:`~promptbench.methods.config.MethodConfig` dataclass, checked by :func:`check_method_config`)."""

from promptbench.methods.base import Method
from promptbench.methods.config import MethodConfig
from promptbench.methods.registry import METHODS, check_method_config, get_method, load_all, register, unregister


def build_method(cfg, backbone, classnames, dataset) -> Method:
    """Instantiate ``cfg.name`` from the registry."""
    return get_method(str(cfg.name))(backbone, classnames, cfg, dataset)


__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "check_method_config", "get_method", "load_all",
           "register", "unregister"]
