"""``result.json``: one self-describing file per run, at a deterministic path, written atomically.

Tables and plots are built from these files only (never from logs).

Attempts: every run of a cell (ok, failed, diverged, interrupted) appends one line to ``attempts.jsonl`` beside
``result.json``. ``result.json`` holds the cell's last *good* result when there is one: a failed, diverged or
interrupted re-run never replaces it (it is recorded in the attempt log only). Without a good result,
``result.json`` holds the latest failure, so status listings can show its error. See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptbench.backbones.sources import current_weights
from promptbench.backbones.weights import hub_revision
from promptbench.core.errors import ConfigValueError, error_line  # noqa: F401 - re-exported
from promptbench.core.fileio import FILE_MODE, write_atomic
from promptbench.core.hashing import subset_content_hash

log = logging.getLogger("promptbench")

#: the ``result.json`` schema written now (2: input hashes ``weights_revision``, ``data_content``, ``subset``)
SCHEMA_VERSION = 2
#: the oldest schema whose results still count as done (raise it when a change makes older numbers wrong)
OLDEST_VALID_SCHEMA = 1
#: config keys that do not change what a run computes (excluded from the config hash)
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "trainer.enable_progress_bar", "trainer.num_workers",
                     "trainer.eval_batch_size", "continue_on_error", "skip_done",
                     # runtime-only: results are bit-identical across them (measured, docs/reliability.md)
                     "trainer.threads", "trainer.accelerator", "reuse_backbone",
                     "features.enabled", "features.disk", "features.memory", "features.memory_mb",
                     "features.batch_size",  # where features are kept, not what they are (docs/features.md)
                     "table",  # an experiment's table layout (conf/experiment/*.yaml)
                     "method.display_name",  # the name tables and reports print
                     "method.trains",  # declared by the method (Method.trains); checked by the contract tests
                     "method.demo_excluded",  # likewise (Method.demo_excluded): which presets list the method
                     "tags")  # free labels of a run (promptbench/tracking/tags.py)
#: result statuses that are not a good result (kept out of result.json when a good one exists)
FAILURE_STATUSES = ("failed", "diverged", "interrupted")
ATTEMPTS_FILE = "attempts.jsonl"
#: permissions of every result / manifest / attempt file, whatever the umask (readable by the group and others)


def int_value(cfg: DictConfig, key: str) -> int:
    """``cfg[key]`` as an int; refuses ``1.5``, ``"abc"`` and booleans in one line naming the key."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or value is None:
        raise ConfigValueError(f"{key}={value!r} is not an integer (e.g. {key}=1)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ConfigValueError(f"{key}={value!r} is not an integer (e.g. {key}=1)")


def cell_dir(cfg: DictConfig) -> Path:
    """``<output_dir>/results/<protocol>/<dataset>/<backbone>/<method>[+variant]/shots_<K>/seed_<S>``."""
    method = str(cfg.method.name) + (f"+{cfg.variant}" if cfg.get("variant") else "")
    return (Path(str(cfg.paths.output_dir)) / "results" / str(cfg.protocol.name) / str(cfg.dataset.name)
            / str(cfg.backbone.name) / method / f"shots_{int_value(cfg, 'shots')}" / f"seed_{int_value(cfg, 'seed')}")


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
        "shots": int_value(cfg, "shots"),
        "seed": int_value(cfg, "seed"),
    }


def result_path(cfg: DictConfig) -> Path:
    return cell_dir(cfg) / "result.json"


def semantic_config(cfg: DictConfig) -> dict[str, Any]:
    return _drop_non_semantic(OmegaConf.to_container(cfg, resolve=True))


def _drop_non_semantic(data: Any) -> Any:
    for dotted in NON_SEMANTIC_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """sha256 (16 hex) of the config without :data:`NON_SEMANTIC_KEYS` (a resolved config dict works too)."""
    return _digest(semantic_config(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg))


def _digest(semantic: dict[str, Any]) -> str:
    """sha256 (16 hex) of a semantic config's canonical JSON."""
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolved_config_hash(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """``(OmegaConf.to_container(cfg, resolve=True), config_hash(cfg))`` from one resolution of ``cfg`` (a run
    records both; resolving a composed config is most of the cost)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    return data, _digest(_drop_non_semantic(copy.deepcopy(data)))


@functools.lru_cache(maxsize=1)
def _git_state() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes, read once per process (a sweep worker
    records the state its code was loaded from)."""
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
    """Python, the packages a result depends on and the git state (read once per process: ~20 ms a cell)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, Any]:
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
    """Write strict JSON (NaN/inf refused) atomically, mode 0644 (:func:`promptbench.core.fileio.write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def read_result(path: Path) -> dict[str, Any] | None:
    """A result file's content, or None when it is missing or unreadable (see :func:`load_result` for whether
    the content is a usable result)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_result(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(result, '')`` for a usable result file, else ``(None, why)``: unreadable, not JSON (with line and
    column), or :func:`result_problem`."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"unreadable ({type(err).__name__}: {getattr(err, 'strerror', None) or err})"
    try:
        result = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except ValueError as err:  # e.g. a number too long to convert
        return None, f"not valid JSON ({err})"
    problem = result_problem(result)
    return (None, problem) if problem else (result, "")


#: identity fields that name a cell's folder (:func:`cell_dir`), with their types
IDENTITY_FIELDS: dict[str, type] = {"protocol": str, "dataset": str, "backbone": str, "method": str,
                                    "variant": str, "shots": int, "seed": int}
#: result fields that must be objects when present (tables and plots read into them)
_OBJECT_FIELDS = ("hashes", "metrics", "timing", "params", "trust", "eval_sets")


def result_problem(result: Any) -> str:
    """Why ``result`` (a parsed ``result.json``) cannot be used as a result ('' when it can): not an object, a
    schema newer than :data:`SCHEMA_VERSION` (or not a positive integer), a missing or ill-typed identity field
    (``variant`` may be null, ``modality``/``organ`` may be absent), a non-string status, or ``hashes``,
    ``metrics``, ``timing``, ``params``, ``trust`` or ``eval_sets`` that are not objects. A result without
    ``schema`` is read as schema 1."""
    if not isinstance(result, dict):
        return f"not a JSON object ({type(result).__name__})"
    schema = result.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        return f"schema {schema!r} is not a version number"
    if schema > SCHEMA_VERSION:
        return f"schema {schema} is newer than this promptbench reads ({SCHEMA_VERSION}): upgrade to read it"
    ident = result.get("identity")
    if not isinstance(ident, dict):
        return "no identity" if ident is None else f"identity is not an object ({type(ident).__name__})"
    for key, kind in IDENTITY_FIELDS.items():
        value = ident.get(key)
        if key == "variant" and value is None:
            continue
        if key not in ident:
            return f"identity.{key} is missing"
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is str and key != "variant"
                                                                      and not value.strip()):
            return f"identity.{key}={value!r} is not {'an integer' if kind is int else 'a name'}"
    for key in ("modality", "organ"):
        if ident.get(key) is not None and not isinstance(ident[key], str):
            return f"identity.{key}={ident[key]!r} is not a string"
    if not isinstance(result.get("status"), str):
        return f"status={result.get('status')!r} is not a string"
    for key in _OBJECT_FIELDS:
        if result.get(key) is not None and not isinstance(result[key], dict):
            return f"{key} is not an object ({type(result[key]).__name__})"
    return ""


def identity_parts(ident: dict[str, Any]) -> tuple[str, ...]:
    """The folder names a result of this identity lives under: ``(<protocol>, <dataset>, <backbone>,
    <method>[+variant], shots_<K>, seed_<S>)`` (the last six parts of :func:`cell_dir`)."""
    method = str(ident["method"]) + (f"+{ident['variant']}" if ident.get("variant") else "")
    return (str(ident["protocol"]), str(ident["dataset"]), str(ident["backbone"]), method,
            f"shots_{ident['shots']}", f"seed_{ident['seed']}")


def at_own_path(result: dict[str, Any], path: Path) -> bool:
    """Whether a (valid, :func:`result_problem`) result's file lies at its identity's cell path, whatever the
    root above ``<protocol>/``."""
    parts = (path if isinstance(path, Path) else Path(path)).parts
    return parts[-1] == "result.json" and parts[-7:-1] == identity_parts(result["identity"])


def identity_mismatch(result: dict[str, Any], expected: dict[str, Any]) -> str:
    """Why a result is not the cell whose identity is ``expected`` ('' when it is): a malformed result
    (:func:`result_problem`), or the cell its identity names (e.g. a copied or moved result.json)."""
    problem = result_problem(result)
    if problem:
        return f"result.json here is unusable: {problem}"
    claimed, own = identity_parts(result["identity"]), identity_parts(expected)
    if claimed != own:
        return f"result.json here is the result of {'/'.join(claimed)} (copied or moved?), not of this cell"
    return ""


def append_attempt(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one attempt (status, error, times, hashes) as a line of ``attempts.jsonl`` (0644)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ATTEMPTS_FILE
    line = json.dumps(record, sort_keys=False, default=str, allow_nan=False) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # the last line was cut short (a crash mid-write): start on a line of our own
        os.write(fd, line.encode())  # one write of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, FILE_MODE)


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable record of a cell's ``attempts.jsonl`` (oldest first). A line cut short by a crash is
    skipped with one warning; a record written after it on the same line (by a writer without
    :func:`append_attempt`'s newline check) is still read."""
    path = Path(run_dir) / ATTEMPTS_FILE
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out, broken = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record, whole = _attempt_record(line)
        if record is not None:
            out.append(record)
        if not whole:
            broken.append(str(number))
    if broken:
        log.warning("%s: line %s cut short (a crash mid-write?) and skipped; the other records are read", path,
                    ", ".join(broken))
    return out


def _attempt_record(line: str) -> tuple[dict[str, Any] | None, bool]:
    """``(record, True)`` for a line holding one JSON object; else ``(the attempt that ends the line after a
    truncated one, or None, False)`` (an attempt has a ``status``, which tells it from a nested object)."""
    line = line.strip()
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        return (record, True) if isinstance(record, dict) else (None, False)
    decoder = json.JSONDecoder()
    start = line.find("{", 1)
    while start != -1:  # the first brace from which one object runs to the end of the line
        with contextlib.suppress(ValueError):
            record, end = decoder.raw_decode(line, start)
            if end == len(line) and isinstance(record, dict) and "status" in record:
                return record, False
        start = line.find("{", start + 1)
    return None, False


def record_outcome(path: Path, payload: dict[str, Any]) -> bool:
    """Record a run's outcome: append it to the attempt log, and write ``result.json`` unless the outcome is a
    failure and the file already holds a good (``ok``) result. Returns whether ``result.json`` was written."""
    summary = {k: payload.get(k) for k in ("status", "error", "started", "finished")}
    summary["hashes"] = payload.get("hashes", {})
    summary["pid"] = os.getpid()
    append_attempt(path.parent, summary)
    if payload.get("status") in FAILURE_STATUSES:
        existing = read_result(path)
        if existing and existing.get("status") == "ok":
            return False
    write_json_atomic(path, payload)
    return True


def is_good(result: dict[str, Any] | None) -> bool:
    return isinstance(result, dict) and result.get("status") == "ok"


def staleness(result: dict[str, Any], expected_hash: str | None, data_hash: str | None = None,
              current: dict[str, Any] | None = None) -> str:
    """Why a good result no longer matches what its cell would use now ('' when it does): the result schema, the
    config, the backbone weights, the subset file or the data. ``current`` holds today's input hashes
    (:func:`current_inputs`; ``data_hash`` is today's stat fingerprint, ``current["data"]``). An input is compared
    only when both the result and ``current`` have it: results written before an input was recorded, or a
    machine without the data, are not checked for it. A content fingerprint, when both have one, replaces the stat
    one (a copy with new mtimes is not stale)."""
    schema = _schema(result)
    if schema > SCHEMA_VERSION:
        return f"result schema {schema} is newer than this promptbench's ({SCHEMA_VERSION}): upgrade, or re-run"
    if schema < OLDEST_VALID_SCHEMA:
        return f"result schema {schema} is older than {OLDEST_VALID_SCHEMA} (its numbers are no longer valid)"
    hashes = result.get("hashes") or {}
    if hashes.get("config") != expected_hash and not _same_semantics(result, expected_hash):
        return "config changed since this result"
    now = dict(current or {})
    if data_hash:
        now.setdefault("data", data_hash)
    if _differs(hashes, now, "weights", legacy_none=schema < 2):  # schema 1 wrote null for hub weights
        return (f"weights changed since this result (sha256 {str(hashes['weights'])[:12]} -> "
                f"{str(now['weights'])[:12]})")
    if _differs(hashes, now, "subset"):
        return f"subset file changed since this result (content {hashes['subset']} -> {now['subset']})"
    if hashes.get("data_content") and now.get("data_content"):
        if hashes["data_content"] != now["data_content"]:
            return "data changed since this result (image bytes or split file)"
    elif hashes.get("data") and now.get("data") and hashes["data"] != now["data"]:
        return "data changed since this result (split file or image sizes/mtimes)"
    return ""


def _schema(result: dict[str, Any]) -> int:
    try:
        return int(result.get("schema", 1))
    except (TypeError, ValueError):
        return 0


def _differs(recorded: dict[str, Any], now: dict[str, Any], key: str, legacy_none: bool = False) -> bool:
    if key not in recorded or key not in now or (legacy_none and recorded[key] is None):
        return False
    return recorded[key] != now[key]


def current_inputs(cfg: DictConfig, result: dict[str, Any] | None, memo: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Today's value of each input hash ``result`` recorded (weights, subset, data fingerprints), computed only for
    those and left out where it cannot be known (data unreadable, hub weights not cached). ``memo`` (one status
    listing) computes each backbone's and dataset's once; file hashes are cached on disk by file identity."""
    from promptbench.data.preflight import fingerprints  # heavy: torchvision via promptbench.data

    hashes = (result or {}).get("hashes") or {}
    memo = {} if memo is None else memo
    out: dict[str, Any] = {}
    if "weights" in hashes:

        key = "w:" + json.dumps(OmegaConf.to_container(cfg.backbone, resolve=True), sort_keys=True, default=str)
        if key not in memo:
            memo[key] = current_weights(cfg.backbone)
        out.update(memo[key])
    if "subset" in hashes:
        out.update(_current_subset(cfg))
    if hashes.get("data") or hashes.get("data_content"):

        content = bool(hashes.get("data_content"))
        key = f"d:{content}:" + json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True,
                                           default=str)
        if key not in memo:
            memo[key] = fingerprints(cfg.dataset, content=content)
        out.update(memo[key])
    return out


def _current_subset(cfg: DictConfig) -> dict[str, Any]:
    """``{"subset": content hash of the subset file the cell would read now}`` (None: no subset file)."""
    from promptbench.data.subsets import resolve_subset_file  # heavy: torchvision via promptbench.data

    value = OmegaConf.select(cfg, "protocol.subset_file")
    if value in (None, "") or str(OmegaConf.select(cfg, "protocol.name")) in ("full", "realistic"):
        return {"subset": None}  # those protocols never read a subset file (data/datamodule.py)

    seed = OmegaConf.select(cfg, "protocol.subset_seed")
    seed = OmegaConf.select(cfg, "method.subset_seed") if seed is None else seed
    try:
        path = resolve_subset_file(value, str(cfg.dataset.get("name") or cfg.dataset.get("folder")),
                                   int_value(cfg, "shots"), int_value(cfg, "seed") if seed is None else int(seed))
        return {"subset": subset_content_hash(path)}
    except (OSError, ValueError):
        return {"subset": "unreadable"}


def recorded_inputs(backbone: Any, splits: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """The input hashes a run records (``result.json`` → ``hashes``): the weights' sha256 (as loaded) and hub
    snapshot, the data's content fingerprint, the subset file's content hash (None without one)."""
    from promptbench.data.preflight import content_fingerprint  # heavy: torchvision via promptbench.data


    source = manifest.get("source") or {}
    return {"weights": backbone.weights_sha256, "weights_revision": hub_revision(backbone.info.weights_path),
            "data_content": content_fingerprint(splits),
            "subset": source.get("content_hash") if source.get("subset_file") else None}


def _same_semantics(result: dict[str, Any], expected_hash: str | None) -> bool:
    """The stored config hashed with today's :data:`NON_SEMANTIC_KEYS` matches: a result written before a key
    was declared runtime-only (e.g. ``trainer.threads``) is not stale because of it."""
    stored = result.get("config")
    if not isinstance(stored, dict) or expected_hash is None:
        return False
    try:
        return config_hash(stored) == expected_hash
    except Exception:  # noqa: BLE001 - an unreadable stored config: compare hashes only
        return False


def is_done(cfg: DictConfig) -> bool:
    """True when the cell has a good, well-formed result of this very cell (identity equal to the cell's) that is
    not stale (:func:`staleness`: schema, config, weights, subset, data, each computed now). A later failed
    attempt does not undo it; a failure-only result.json is not done."""
    result = read_result(result_path(cfg))
    if not is_good(result) or identity_mismatch(result, identity(cfg)):
        return False  # malformed, or another cell's result.json (copied or moved): not this cell's result
    assert result is not None
    expected = config_hash(cfg)
    if staleness(result, expected):  # schema or config: no input need be hashed
        return False
    return not staleness(result, expected, current=current_inputs(cfg, result))
