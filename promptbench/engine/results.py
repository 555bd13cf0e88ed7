"""``result.json``: one self-describing file per run, at a deterministic path, written atomically.

Tables and plots are built from these files only (never from logs).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

SCHEMA_VERSION = 1
#: config keys that do not change what a run computes (excluded from the config hash)
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "trainer.enable_progress_bar", "trainer.num_workers",
                     "trainer.eval_batch_size", "continue_on_error", "skip_done",
                     "features.enabled", "features.disk", "features.memory", "features.memory_mb",
                     "features.batch_size", "table")  # an experiment's table layout (conf/experiment/*.yaml)


def cell_dir(cfg: DictConfig) -> Path:
    """``<output_dir>/results/<protocol>/<dataset>/<backbone>/<method>[+variant]/shots_<K>/seed_<S>``."""
    method = str(cfg.method.name) + (f"+{cfg.variant}" if cfg.get("variant") else "")
    return (Path(str(cfg.paths.output_dir)) / "results" / str(cfg.protocol.name) / str(cfg.dataset.name)
            / str(cfg.backbone.name) / method / f"shots_{int(cfg.shots)}" / f"seed_{int(cfg.seed)}")


def identity(cfg: DictConfig) -> dict[str, Any]:
    """What a cell is: the fields tables group by (``result.json`` → ``identity``)."""
    return {
        "protocol": str(cfg.protocol.name),
        "dataset": str(cfg.dataset.name),
        "modality": str(cfg.dataset.get("modality", "")),
        "organ": str(cfg.dataset.get("organ", "")),
        "backbone": str(cfg.backbone.name),
        "method": str(cfg.method.name),
        "variant": str(cfg.get("variant") or ""),
        "shots": int(cfg.shots),
        "seed": int(cfg.seed),
    }


def result_path(cfg: DictConfig) -> Path:
    return cell_dir(cfg) / "result.json"


def semantic_config(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_SEMANTIC_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return {"git_sha": sha or None, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("promptbench", "torch", "open_clip_torch", "timm", "transformers", "lightning", "torchmetrics"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return {**out, **_git_state()}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(path: Path) -> dict[str, Any] | None:
    """A result file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_done(cfg: DictConfig) -> bool:
    """True when this cell already has a successful result with the same config hash."""
    result = read_result(result_path(cfg))
    return bool(result and result.get("status") == "ok"
                and result.get("hashes", {}).get("config") == config_hash(cfg))
