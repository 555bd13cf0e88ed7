"""Whole-file writes that a concurrent reader (another worker, another SLURM job) never sees half done."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o644  # readable by collaborators whatever the umask (mkstemp alone creates 0600)


def write_atomic(path: str | os.PathLike[str], content: str | bytes | Callable[[IO[Any]], Any]) -> Path:
    """Write ``content`` (text, bytes, or a function writing to a binary handle) to a temporary file in the
    target's folder, then ``os.replace`` it over ``path`` (atomic on POSIX, and on NFS within one folder).

    No fsync (slow on shared filesystems): after a crash a torn file fails to parse and is recomputed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
