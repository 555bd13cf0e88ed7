"""Typed schema of the keys users override most (Hydra structured config).

``conf/train.yaml`` starts from the node ``pb_train_schema`` registered here, so a value of the wrong type
(``method.epochs=two``, ``shots=abc``, ``trainer.deterministic=maybe``) fails while the config is composed, before
any data or weights load, with an error naming the key. The schema is open (not struct): methods, datasets and
backbones keep their own extra keys; only the keys below are typed.

Each numeric key also declares its valid range and each choice key its allowed values, in the field's metadata
(:func:`ranged`, :func:`choice`). :func:`validate` checks them on a composed config (``promptbench train``,
``train -m``, ``sweep`` and ``sweep --dry-run`` call it through :func:`promptbench.config.compose` and
:func:`promptbench.sweep.compose_cells`, before anything is written or launched), raising a one-line
:class:`~promptbench.core.errors.ConfigValueError` that names the key, the value and what is allowed.
Two ranges depend on the rest of the config: ``shots`` (>= 1; a protocol named ``full`` trains on the whole
split and also accepts 0) and ``method.epochs`` (>= 1 for a method that trains; 0 only for methods declaring
``trains = False``, whose epochs are unused): an untrained initialisation is never filed as a method's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_args, get_type_hints

from omegaconf import AnyNode, BooleanNode, FloatNode, IntegerNode, OmegaConf, StringNode

from promptbench.core.errors import ConfigValueError

SCHEMA_NAME = "pb_train_schema"


#: ``trainer.precision`` values Lightning 2.x accepts (``lightning.fabric.connector._PRECISION_INPUT``; the
#: integers arrive as strings, since the key is typed ``str``)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")
#: ``trainer.accelerator`` values (Lightning's registered accelerators, plus its ``gpu`` and ``auto``)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
#: ``method.optim.name`` / ``method.optim.scheduler`` (``promptbench.methods.optim``)
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULERS = ("cosine", "constant")


@dataclass(frozen=True)
class Rule:
    """The values a key accepts: a numeric range (``min`` inclusive, ``above`` exclusive) or ``choices``.

    ``relax`` names a condition on the whole config (see :data:`RELAXATIONS`) under which ``relaxed_min``
    replaces ``min``. ``None`` is accepted where the key is optional in the schema, unless ``null`` is False."""

    min: float | None = None
    above: float | None = None
    choices: tuple[str, ...] | None = None
    relax: str | None = None
    relaxed_min: float | None = None
    null: bool = True  # False: refuse None even where the schema types the key Optional

    def allowed(self, integer: bool, minimum: float | None = None) -> str:
        """What the key accepts, in words (``an integer >= 1``, ``one of a, b``)."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if integer else "a number"
        lo = self.min if minimum is None else minimum
        if self.above is not None:
            return f"{kind} > {self.above:g}"
        return f"{kind} >= {lo:g}" if lo is not None else kind

    def accepts(self, value: Any, minimum: float | None = None) -> bool:
        if self.choices is not None:
            return str(value) in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        lo = self.min if minimum is None else minimum
        return (lo is None or value >= lo) and (self.above is None or value > self.above)


def ranged(default: Any, *, min: float | None = None, above: float | None = None, relax: str | None = None,
           relaxed_min: float | None = None) -> Any:
    """A numeric schema field with its valid range (``min`` inclusive, ``above`` exclusive)."""
    return field(default=default, metadata={"rule": Rule(min=min, above=above, relax=relax, relaxed_min=relaxed_min)})


def choice(default: Any, choices: tuple[str, ...], *, null: bool = True) -> Any:
    """A string schema field with its allowed values (``null=False``: None refused even if typed Optional)."""
    return field(default=default, metadata={"rule": Rule(choices=tuple(choices), null=null)})


@dataclass
class OptimSchema:
    name: str = choice("sgd", OPTIMIZERS)
    lr: float = ranged(0.002, above=0)
    momentum: float = ranged(0.9, min=0)
    weight_decay: float = ranged(5.0e-4, min=0)
    scheduler: str | None = choice("cosine", SCHEDULERS, null=False)  # Optional typing kept (config hashes)
    warmup_epochs: int = ranged(0, min=0)
    warmup_lr: float = ranged(1.0e-5, min=0)


@dataclass
class MethodSchema:
    name: str = "???"
    epochs: int = ranged(0, min=1, relax="method_does_not_train", relaxed_min=0)
    batch_size: int = ranged(32, min=1)
    optim: OptimSchema = field(default_factory=OptimSchema)


@dataclass
class TrainerSchema:
    accelerator: str = choice("auto", ACCELERATORS)
    devices: Any = 1
    precision: str = choice("32-true", PRECISIONS)
    num_workers: int = ranged(0, min=0)
    eval_batch_size: int = ranged(64, min=1)
    val_every_n_epochs: int | None = ranged(None, min=1)
    log_every_n_steps: int = ranged(10, min=1)
    deterministic: bool = False
    gradient_clip_val: float | None = ranged(None, min=0)
    enable_progress_bar: bool = True
    threads: int | None = ranged(None, min=1)


@dataclass
class TrainSchema:
    shots: int = ranged(16, min=1, relax="whole_split_protocol", relaxed_min=0)
    seed: int = ranged(1, min=0)
    variant: str = ""
    reuse_backbone: bool = True
    continue_on_error: bool = False
    skip_done: bool = False
    method: MethodSchema = field(default_factory=MethodSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


def _typed_tree(schema: type) -> dict[str, Any]:
    """The dataclass as nested plain dicts of typed OmegaConf value nodes: typed leaves, but no structured-config
    object type, so the nodes stay open for every other key of a method or trainer preset while composing and
    Hydra's struct mode (unknown keys rejected on the command line) applies as before."""
    hints = get_type_hints(schema)
    out: dict[str, Any] = {}
    for f in fields(schema):
        tp, default = hints[f.name], getattr(schema(), f.name)
        if is_dataclass(tp):
            out[f.name] = _typed_tree(tp)
            continue
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = type(None) in get_args(tp)
        base = args[0] if optional and len(args) == 1 else tp
        node_type = {int: IntegerNode, float: FloatNode, bool: BooleanNode, str: StringNode}.get(base, AnyNode)
        out[f.name] = node_type(default, is_optional=optional) if node_type is not AnyNode else AnyNode(default)
    return out


def register() -> None:
    """Store the schema in Hydra's ConfigStore as ``pb_train_schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=OmegaConf.create(_typed_tree(TrainSchema)),
                                 provider="promptbench")


# --------------------------------------------------------------------------------------------- validation
def _whole_split_protocol(cfg: Any) -> bool:
    """A protocol named ``full`` trains on the whole training split (shots unused, 0 accepted)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.select(cfg, "protocol.name", default="")) == "full"


def _method_does_not_train(cfg: Any) -> bool:
    """``method.trains: false`` in the method's config (its class's ``trains``, kept equal by the contract tests)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, "method.trains", default=True) is False


#: conditions under which a rule's ``relaxed_min`` applies (named in :func:`ranged`)
RELAXATIONS: dict[str, Callable[[Any], bool]] = {
    "whole_split_protocol": _whole_split_protocol,
    "method_does_not_train": _method_does_not_train,
}
_RELAX_TEXT = {
    "whole_split_protocol": "K per class; only a protocol named full, which trains on the whole split, "
                            "accepts {m:g}",
    "method_does_not_train": "{m:g} only for methods that do not train, e.g. zeroshot; "
                             "for an untrained baseline use method=zeroshot",
}


def rules(schema: type = TrainSchema, prefix: str = "") -> list[tuple[str, Rule, bool, bool]]:
    """Every checked key of ``schema``: (dotted key, rule, is an integer, accepts None)."""
    hints = get_type_hints(schema)
    out: list[tuple[str, Rule, bool, bool]] = []
    for f in fields(schema):
        tp = hints[f.name]
        if is_dataclass(tp):
            out.extend(rules(tp, f"{prefix}{f.name}."))
        elif "rule" in f.metadata:
            args = get_args(tp)
            base = next((a for a in args if a is not type(None)), tp) if args else tp
            out.append((f"{prefix}{f.name}", f.metadata["rule"], base is int, type(None) in args))
    return out


_RULES: list[tuple[str, Rule, bool, bool]] | None = None
_ABSENT = object()


def validate(cfg: Any) -> None:
    """Check every ranged / choice key of the schema on a composed ``train`` config; raise a one-line
    :class:`~promptbench.core.errors.ConfigValueError` naming the first bad key, its value and what is allowed.
    Keys absent from ``cfg`` (another config, a partial node) or still ``???`` are not checked."""
    from omegaconf import OmegaConf


    global _RULES
    if _RULES is None:
        _RULES = rules()
    for key, rule, integer, optional in _RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or value == "???" or (value is None and optional and rule.null):
            continue
        if value is not None and rule.accepts(value):
            continue
        relax = rule.relax is not None and RELAXATIONS[rule.relax](cfg)  # evaluated only for a failing value
        if relax and value is not None and rule.accepts(value, rule.relaxed_min):
            continue
        hint = ""
        if rule.relax and not relax:
            hint = f" ({_RELAX_TEXT[rule.relax].format(m=rule.relaxed_min)})"
            if key == "method.epochs":
                hint = f" for {OmegaConf.select(cfg, 'method.name', default='this method')}, which trains{hint}"
        shown = "null" if value is None else repr(value) if isinstance(value, str) else value
        allowed = rule.allowed(integer, rule.relaxed_min if relax else None)
        raise ConfigValueError(f"{key}={shown} is not allowed: {key} must be {allowed}{hint}")
