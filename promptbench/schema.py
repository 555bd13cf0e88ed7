"""Typed schema of the keys users override most (Hydra structured config).

``conf/train.yaml`` starts from the node ``pb_train_schema`` registered here, so a value of the wrong type
(``method.epochs=two``, ``shots=abc``, ``trainer.deterministic=maybe``) fails while the config is composed, before
any data or weights load, with an error naming the key. The schema is open (not struct): methods, datasets and
backbones keep their own extra keys; only the keys below are typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_args, get_type_hints

from omegaconf import AnyNode, BooleanNode, FloatNode, IntegerNode, OmegaConf, StringNode

SCHEMA_NAME = "pb_train_schema"


@dataclass
class OptimSchema:
    name: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5.0e-4
    scheduler: str | None = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1.0e-5


@dataclass
class MethodSchema:
    name: str = "???"
    epochs: int = 0
    batch_size: int = 32
    optim: OptimSchema = field(default_factory=OptimSchema)


@dataclass
class TrainerSchema:
    accelerator: str = "auto"
    devices: Any = 1
    precision: str = "32-true"
    num_workers: int = 0
    eval_batch_size: int = 64
    val_every_n_epochs: int | None = None
    log_every_n_steps: int = 10
    deterministic: bool = False
    gradient_clip_val: float | None = None
    enable_progress_bar: bool = True
    threads: int | None = None


@dataclass
class TrainSchema:
    shots: int = 16
    seed: int = 1
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
