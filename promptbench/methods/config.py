"""Typed method configs: every method declares its keys once, as a dataclass (type, default, one-line help).

``conf/method/<name>.yaml`` stays what Hydra composes (paper presets, ``conf/tuned`` values and the
``${oc.select:fidelity.<key>,...}`` quirk switches all keep working, and config hashes are unchanged). Each literal
value it carries must equal the dataclass default, and a value it reads from ``conf/fidelity`` must be exactly the
fidelity key the field names in its ``fidelity`` metadata (``tests/test_method_config.py``); such a field's default
is what applies where no preset sets the key (a node built by hand), the presets' values are in ``conf/fidelity``.

:func:`typed_config` merges a composed method node into ``OmegaConf.structured(config_class)``: an unknown
key (``+method.n_ctxx=4``) or a mistyped value (``method.n_ctx=four``) fails in one line naming the key, the method,
close matches and the expected type. The result (a dataclass instance) is what a method reads (``self.config``).
``docs/method_keys.md`` is generated from these dataclasses (``scripts/method_keys.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from promptbench.core.errors import ConfigValueError

__all__ = ["AugmentConfig", "MainAugmentConfig", "MainBaselineConfig", "MethodConfig", "OptimConfig",
           "typed_config", "config_fields", "display_name", "option", "type_name"]


def option(default: Any, help: str, *, choices: Sequence[str] | None = None, fidelity: str | None = None) -> Any:
    """A config field: its ``default``, one-line ``help``, the allowed ``choices`` (checked) and the
    ``conf/fidelity`` key (``fidelity``) whose value the method's YAML reads with ``${oc.select:fidelity.<key>,..}``."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if fidelity is not None:
        meta["fidelity"] = fidelity
    if isinstance(default, (list, dict)) or is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def display_name(name: str) -> Any:
    """The ``display_name`` field of a method called ``name`` in tables, plots and reports."""
    return option(name, "name in tables, plots and reports (not part of the config hash)")


@dataclass
class AugmentConfig:
    """Train-time view (Dassl default: RandomResizedCrop scale 0.08-1, bicubic, no flip)."""

    scale: list[float] = option([0.08, 1.0], "RandomResizedCrop scale range of the training views")
    flip: bool = option(False, "random horizontal flip of the training views")


@dataclass
class OptimConfig:
    """Shared optimisation defaults (Dassl / CoOp family): SGD, momentum 0.9, wd 5e-4, cosine per epoch, one
    constant warm-up epoch at 1e-5 (``promptbench.methods.optim``)."""

    name: str = option("sgd", "optimizer", choices=("sgd", "adamw", "adam"))
    lr: float = option(0.002, "learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5.0e-4, "weight decay")
    scheduler: str = option("cosine", "LR schedule", choices=("cosine", "constant"))
    warmup_epochs: int = option(1, "constant warm-up units at warmup_lr")
    warmup_lr: float = option(1.0e-5, "warm-up learning rate")
    cosine_restart: bool = option(True, "Dassl WARMUP_RECOUNT: the cosine restarts after the warm-up",
                                  fidelity="cosine_restart")
    interval: str = option("epoch", "the unit the schedule advances by (warm-up and t_max counted in it)",
                           choices=("epoch", "step"))
    t_max: int | None = option(None, "cosine period in units; null = the whole run")


@dataclass
class MethodConfig:
    """Keys every method has (``conf/method/_base.yaml``)."""

    name: str = option("???", "registered method name")
    display_name: str | None = option(None, "name in tables, plots and reports (not part of the config hash); "
                                            "null = the method name")
    epochs: int = option(50, "training epochs (0 for methods that do not train)")
    trains: bool = option(True, "whether the method trains by gradient (= its class's ``trains``; not hashed); "
                                "false lets method.epochs be 0")
    demo_excluded: bool = option(False, "left out of the CPU demo preset (= its class's ``demo_excluded``; not "
                                        "hashed; read without importing the method by ``${pb_methods:demo,...}``)")
    batch_size: int = option(32, "training batch size")
    drop_last: bool = option(True, "drop the incomplete last training batch (Dassl: when len >= batch)",
                             fidelity="drop_last")
    augment: AugmentConfig = option(AugmentConfig(), "train-time view")
    train_mode: Any = option([], "submodules run in train mode (dropout on) inside training steps, e.g. [backbone]")
    template: str | None = option(None, "the method's single template (one {}); null = dataset.template")
    subset_seed: int | None = option(None, "seed of the few-shot subset (protocol.subset_seed wins); null = the "
                                           "run's seed")
    optim: OptimConfig = option(OptimConfig(), "optimiser and LR schedule (promptbench.methods.optim)")


# -- validation ----------------------------------------------------------------------------------------------------


def config_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """Every leaf key of a config dataclass: (dotted key, type, field), nested dataclasses flattened."""
    hints = get_type_hints(cls)
    out: list[tuple[str, Any, dataclasses.Field]] = []
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            out.extend(config_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", tp, f))
    return out


def type_name(tp: Any) -> str:
    """``int``, ``float or null``, ``list of float``, ``any``: a type in words."""
    if tp is Any:
        return "any value"
    args = get_args(tp)
    if get_origin(tp) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return f"{' or '.join(type_name(a) for a in rest)} or null"
    if get_origin(tp) is list:
        return f"list of {type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _fail(message: str) -> Exception:
    return ConfigValueError(message)


def _unknown_key(cls: type, key: str, method: str) -> Exception:
    from promptbench.core.registry import did_you_mean

    parent = key.rpartition(".")[0]
    siblings = [k for k, _, _ in config_fields(cls) if k.rpartition(".")[0] == parent]
    return _fail(f"method.{key}: method '{method}' has no key '{key}'{did_you_mean(key, siblings)} "
                 f"(its keys: docs/method_keys.md)")


def _bad_value(cls: type, key: str, data: Any, method: str, detail: str) -> Exception:
    hints = {k: tp for k, tp, _ in config_fields(cls)}
    if key not in hints:  # a whole section (``optim``, ``augment``) given as a scalar
        sections = [f.name for f in fields(cls) if is_dataclass(get_type_hints(cls)[f.name])]
        key = key or next((s for s in sections if s in data and not isinstance(data[s], dict)), "?")
        return _fail(f"method.{key}: method '{method}' expects a mapping of keys for {key}, got {data.get(key)!r}")
    value = OmegaConf.select(OmegaConf.create(data), key, default=None)
    shown = repr(value) if isinstance(value, str) else value
    return _fail(f"method.{key}={shown} is not allowed: method '{method}' expects {type_name(hints[key])} for {key}")


def _declared_only(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """``data`` without the keys ``cls`` does not declare (nested sections included)."""
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in hints:
            tp = hints[key]
            out[key] = _declared_only(value, tp) if is_dataclass(tp) and isinstance(value, dict) else value
    return out


def typed_config(node: Mapping[str, Any] | DictConfig, cls: type[MethodConfig], *, strict: bool = True) -> Any:
    """The typed config of a composed method node (``cfg.method``): its values merged into
    ``OmegaConf.structured(cls)``, defaults filled in (:func:`promptbench.methods.check_method_config` finds ``cls``
    from the node's method name).

    Cheap (no model is built): call it wherever a cell's config is composed (``engine.run`` does for every run).
    An unknown key, a value of the wrong type or one outside a key's ``choices`` raises a one-line
    ``ConfigValueError`` naming the key, the method, close matches and what is expected; an unknown method raises
    the registry's one-line ``UnknownName``. ``strict=False`` (what building a method uses, so that nodes shared by
    several methods still build) ignores undeclared keys but still checks the declared ones."""
    name = str(node.get("name"))
    try:
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else copy.deepcopy(
            dict(node))
    except OmegaConfBaseException as err:
        raise _fail(f"method.{err.full_key or '?'}: cannot resolve for method '{name}': "
                    f"{str(err).splitlines()[0]}") from None
    if not strict:
        data = _declared_only(data, cls)
    key = (cls, json.dumps(data, sort_keys=True, default=repr))
    if key not in _TYPED:
        if len(_TYPED) >= 512:
            _TYPED.clear()
        _TYPED[key] = _merged(cls, data, name)
    return copy.deepcopy(_TYPED[key])  # each caller its own object (a method may keep and edit its config)


#: typed configs already checked in this process, by (class, the node's values): a cell checks its method node
#: and then builds the method from the same node, and a worker runs many cells of one method
_TYPED: dict[tuple[type, str], Any] = {}


def _merged(cls: type[MethodConfig], data: dict[str, Any], name: str) -> Any:
    """``data`` merged into ``OmegaConf.structured(cls)`` and checked (types, choices): the typed object."""
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, data)
    except ConfigKeyError as err:
        raise _unknown_key(cls, str(err.full_key), name) from None
    except ValidationError as err:
        raise _bad_value(cls, str(err.full_key or ""), data, name, str(err).splitlines()[0]) from None
    for key, _, f in config_fields(cls):
        allowed = f.metadata.get("choices")
        value = OmegaConf.select(merged, key)
        if allowed and value is not None and str(value) not in allowed:
            raise _fail(f"method.{key}={value!r} is not allowed: method '{name}' expects one of "
                        f"{', '.join(allowed)} for {key}")
    return OmegaConf.to_object(merged)


@dataclass
class MainAugmentConfig(AugmentConfig):
    """The main.py baselines' view: RandomResizedCrop scale 0.5-1 + horizontal flip (training and caches)."""

    scale: list[float] = option([0.08, 1.0], "RandomResizedCrop scale range of the training views and caches",
                                fidelity="main_augment.scale")
    flip: bool = option(False, "random horizontal flip of the training views and caches",
                        fidelity="main_augment.flip")


@dataclass
class MainBaselineConfig(MethodConfig):
    """Keys of the baselines of BiomedCoOp's main.py (linear probe, LP++, CLIP-Adapter, Tip-Adapter(-F))."""

    drop_last: bool = option(False, "drop the incomplete last training batch (main.py build_data_loader keeps "
                                    "every batch)")
    augment: MainAugmentConfig = option(MainAugmentConfig(), "train-time view (also the caches' view)")
    template: str | None = option(None, "the single template (one {}); null = dataset.template",
                                  fidelity="baseline_template")
    subset_seed: int | None = option(None, "few-shot subset seed (reference main.py: seed 1 for every seed); "
                                           "null = the run's seed", fidelity="baseline_subset_seed")
