"""A cell's saved trainable state: ``state.safetensors`` beside ``result.json`` (docs/state.md).

Only what is not the frozen backbone is saved (:meth:`~promptbench.methods.base.Method.trainable_state`: context
vectors, visual prompts, adapters, LoRA/SVD deltas, closed-form heads and caches), in the safetensors format (no
pickle: loading never runs code), with the method, backbone name, backbone weights sha256 and class names in the
file's metadata and in ``result.json``'s ``state`` block (with the file's sha256). :func:`load_state` refuses, in
one line, a file whose sha256, method, backbone or class names differ from the target's.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from promptbench.core.fileio import write_atomic
from promptbench.prompts.text import clean_classname

STATE_FILE = "state.safetensors"
#: the metadata layout written now (``promptbench_state`` in the file's metadata)
STATE_SCHEMA = 1


class StateMismatch(ValueError):
    """A saved state that does not belong to the target (method, backbone, weights, class names) or is not intact."""


def _short(sha: str | None) -> str:
    return f"{sha[:12]}..." if sha else "unhashed"


def state_metadata(method_name: str, backbone_name: str, weights_sha256: str | None,
                   classnames: Sequence[str]) -> dict[str, str]:
    """The safetensors metadata (strings only) identifying what a state belongs to."""
    return {"promptbench_state": str(STATE_SCHEMA), "method": str(method_name), "backbone": str(backbone_name),
            "weights_sha256": weights_sha256 or "", "classnames": json.dumps(_names(classnames))}


def _names(classnames: Sequence[str]) -> list[str]:
    """Class names as the methods use them (``clean_classname``: underscores, case as given)."""
    return [clean_classname(str(c)) for c in classnames]


def save_state(run_dir: str | Path, method: Any, backbone: Any, classnames: Sequence[str]) -> dict[str, Any] | None:
    """Write ``<run_dir>/state.safetensors`` (atomically) and return ``result.json``'s ``state`` block; ``None``
    (nothing written) when the method has no state of its own (zero-shot)."""
    tensors = method.trainable_state()
    if not tensors:
        return None
    name, weights = str(backbone.info.name), backbone.weights_sha256
    data = save_safetensors(tensors, metadata=state_metadata(method.method_name, name, weights, classnames))
    write_atomic(Path(run_dir) / STATE_FILE, data)
    return {"file": STATE_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tensors": len(tensors), "numel": int(sum(t.numel() for t in tensors.values())),
            "method": method.method_name, "backbone": name, "weights_sha256": weights,
            "classnames": _names(classnames)}


def read_metadata(data: bytes, path: Path | str = STATE_FILE) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (a file that is not safetensors: one-line refusal)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError
    except (struct.error, ValueError, UnicodeDecodeError):
        raise StateMismatch(f"{path} is not a safetensors file (states are only read as safetensors, never "
                            "unpickled)") from None
    meta = header.get("__metadata__") or {}
    if "promptbench_state" not in meta:
        raise StateMismatch(f"{path} is a safetensors file without promptbench state metadata (method, backbone, "
                            "class names)")
    return meta


def load_state(path: str | Path, method: Any, backbone: Any, classnames: Sequence[str] | None = None, *,
               sha256: str | None = None, allow_other_classes: bool = False) -> dict[str, str]:
    """Load a saved state into a freshly built ``method`` on ``backbone``; returns the file's metadata.

    Read with safetensors only. Refused in one line (:class:`StateMismatch`): a file whose sha256 differs from
    ``sha256`` (``result.json``'s ``state.sha256``), that is not safetensors, or that was trained with another method,
    another backbone (name or weights sha256), or other class names (``classnames``: the target's training classes;
    default the method's own; ``allow_other_classes`` for cross-dataset evaluation). A key or shape the method does
    not expect: the method's one-line ``ValueError``."""
    path = Path(path)
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StateMismatch(f"{path} has sha256 {_short(hashlib.sha256(data).hexdigest())}, result.json records "
                            f"{_short(sha256)}: the file was changed or replaced")
    meta = read_metadata(data, path)
    saved_method, saved_backbone = meta.get("method"), meta.get("backbone")
    saved_weights = meta.get("weights_sha256") or None
    target_weights = backbone.weights_sha256
    where = (f"{path.name} was trained with method {saved_method} on backbone {saved_backbone} "
             f"(weights {_short(saved_weights)})")
    if saved_method != method.method_name:
        raise StateMismatch(f"{where}, not method {method.method_name}: evaluate it with method={saved_method}")
    if saved_backbone != str(backbone.info.name) or saved_weights != target_weights:
        raise StateMismatch(f"{where}, not backbone {backbone.info.name} (weights {_short(target_weights)}): "
                            f"evaluate it with backbone={saved_backbone}")
    saved_classes = json.loads(meta.get("classnames") or "[]")
    target_classes = _names(classnames if classnames is not None else method.classnames)
    if not allow_other_classes and saved_classes != target_classes:
        raise StateMismatch(f"{where} on classes {saved_classes}, not {target_classes} "
                            "(allow_other_classes=True for cross-dataset evaluation)")
    try:
        tensors = load_safetensors(data)
    except SafetensorError as err:
        raise StateMismatch(f"{path} is not a readable safetensors file: {str(err).splitlines()[0]}") from None
    method.load_trainable_state(tensors)
    return meta
