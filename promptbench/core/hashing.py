"""Deterministic JSON and the hashes and seeds derived from it (never Python's salted ``hash``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, no whitespace) used for every hash in the data layer."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stable_hash(obj: Any, n_hex: int = 16) -> str:
    """First ``n_hex`` hex chars of sha256 over :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:n_hex]


def stable_seed(*parts: Any) -> int:
    """A 63-bit integer seed that depends only on ``parts`` (never on Python's salted ``hash``)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def content_hash_of(doc: dict[str, Any]) -> str:
    """The ``content_hash`` a parsed JSON document (a subset file) has: everything in it but the stated hash."""
    return stable_hash({k: v for k, v in doc.items() if k != "content_hash"})


def subset_content_hash(path: str | os.PathLike[str]) -> str:
    """The ``content_hash`` a subset file's content has (not the one it states: an edited file differs)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a subset file")
    return content_hash_of(doc)


__all__ = ["canonical_json", "content_hash_of", "stable_hash", "stable_seed", "subset_content_hash"]
