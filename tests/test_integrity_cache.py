"""The frozen-feature store only ever costs time: a bad entry is recomputed (one warning naming it) and never gives
a number; an unwritable folder degrades to memory; an explicit ``paths.cache_dir`` beats ``$PROMPTBENCH_CACHE``.

Every test runs real cells (tiny backbone, demo BTMRI images) on real files in tmp folders."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from promptbench.config import compose
from promptbench.engine.run import run
from promptbench.features import FeatureStore, cache_dir, memory_cache
from promptbench.features import store as store_module

from .conftest import DEMO

pytestmark = pytest.mark.skipif(not (DEMO / "BTMRI" / "split_BTMRI.json").is_file(), reason="no demo BTMRI images")


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Each test starts as a fresh process would: empty memory LRU, no warnings given, no folder marked unwritable."""
    monkeypatch.delenv("PROMPTBENCH_CACHE", raising=False)
    memory_cache.clear()
    for state in ("_WARNED", "_UNWRITABLE"):
        getattr(store_module, state, {}).clear()
    yield
    memory_cache.clear()
    for state in ("_WARNED", "_UNWRITABLE"):
        getattr(store_module, state, {}).clear()


def _cell(out: Path, cache: Path | None, *extra: str) -> dict:
    """One CoOp cell (2 epochs: two training-view entries, plus the test and validation sets)."""
    overrides = ["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "shots=2", "seed=1", "method.epochs=2",
                 "method.batch_size=4", "logger=none", "trainer.enable_progress_bar=false",
                 f"paths.output_dir={out}", *extra]
    if cache is not None:
        overrides.append(f"paths.cache_dir={cache}")
    memory_cache.clear()  # a new process: entries come from disk
    return run(compose(overrides))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[dict, dict[str, np.ndarray], dict[str, dict]]:
    """A clean cell's result and the entries (arrays, sidecars) of its fresh store, by key."""
    tmp = tmp_path_factory.mktemp("clean")
    memory_cache.clear()
    result = _cell(tmp / "out", tmp / "cache")
    entries = FeatureStore(tmp / "cache" / "features").entries()
    arrays = {e["key"]: np.load(e["path"]) for e in entries}
    sidecars = {e["key"]: json.loads(Path(e["path"]).with_suffix(".json").read_text()) for e in entries}
    assert result["status"] == "ok" and len(arrays) == 4  # train views of epochs 0 and 1, test, val
    return result, arrays, sidecars


def _seed_store(cache: Path, arrays: dict[str, np.ndarray], sidecars: dict[str, dict]) -> FeatureStore:
    store = FeatureStore(cache / "features")
    for key, array in arrays.items():
        path = store.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        path.with_suffix(".json").write_text(json.dumps(sidecars[key]))
    return store


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _rewrite(path: Path, array: np.ndarray, *, consistent: bool) -> None:
    """Replace an entry's array; ``consistent``: update its sidecar's shape and checksum too, so only the check
    against what the caller expects (rows, embedding dim, finite values) can catch it."""
    np.save(path, array)
    if consistent:
        meta = json.loads(path.with_suffix(".json").read_text())
        meta.update(shape=list(array.shape), sha256=_checksum(array))
        path.with_suffix(".json").write_text(json.dumps(meta))


def _each(change: Callable[[Path], None]) -> Callable[[FeatureStore, dict[str, dict]], list[str]]:
    def corrupt(store: FeatureStore, sidecars: dict[str, dict]) -> list[str]:
        for key in sidecars:
            change(store.path(key))
        return list(sidecars)
    return corrupt


def _permuted(path: Path) -> None:  # right shape, right dtype, wrong content (the user's 0.590 -> 0.225)
    _rewrite(path, np.load(path)[::-1].copy(), consistent=False)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _columns(path: Path) -> None:
    _rewrite(path, np.load(path)[:, :-1].copy(), consistent=True)


def _flat(path: Path) -> None:
    _rewrite(path, np.load(path).ravel().copy(), consistent=True)


def _nan(path: Path) -> None:
    array = np.load(path)
    array[0, 0] = np.nan
    _rewrite(path, array, consistent=True)


def _swapped(store: FeatureStore, sidecars: dict[str, dict]) -> list[str]:
    """Two whole, valid entries of the same shape (the training views of epochs 0 and 1) under each other's name."""
    a, b = sorted(k for k, m in sidecars.items() if m.get("kind") == "train_view")
    for suffix in (".npy", ".json"):
        pa, pb = store.path(a).with_suffix(suffix), store.path(b).with_suffix(suffix)
        data = pa.read_bytes()
        pa.write_bytes(pb.read_bytes())
        pb.write_bytes(data)
    return [a, b]


CORRUPTIONS: dict[str, Callable[[FeatureStore, dict[str, dict]], list[str]]] = {
    "permuted": _each(_permuted), "empty": _each(_empty), "truncated": _each(_truncated),
    "columns": _each(_columns), "flat": _each(_flat), "nan": _each(_nan), "swapped": _swapped}


def _assert_same_metrics(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"] == b["metrics"]  # exactly: a recomputed entry is the entry a fresh store computes


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "promptbench" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_bad_entry_is_recomputed_with_one_warning_and_never_gives_a_number(tmp_path, clean, caplog, kind):
    result, arrays, sidecars = clean
    store = _seed_store(tmp_path / "cache", arrays, sidecars)
    bad = CORRUPTIONS[kind](store, sidecars)
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        again = _cell(tmp_path / "out", tmp_path / "cache")
    _assert_same_metrics(result, again)
    assert again["feature_cache"]["computed"] == again["feature_cache"]["rejected"] == len(bad)
    warned = [w for w in _warnings(caplog) if w.startswith("feature cache")]
    assert len(warned) == len(bad), warned  # one per entry, each naming the folder and the entry
    for key in bad:
        assert sum(w.startswith(f"feature cache {store.root}: entry {key[:2]}/{key}.npy ") for w in warned) == 1
    assert all("recomputing it" in w for w in warned)
    memory_cache.clear()  # the bad entries were replaced by good ones
    for key, array in arrays.items():
        value, problem = store.read(key)
        assert problem is None and np.array_equal(value.numpy(), array)


def test_a_permuted_entry_of_one_epoch_is_recomputed_exactly(tmp_path, clean, caplog):
    """Only the training views of epoch 1 are bad: that entry alone is encoded again, bitwise as a fresh store's."""
    result, arrays, sidecars = clean
    store = _seed_store(tmp_path / "cache", arrays, sidecars)
    (key,) = [k for k, m in sidecars.items() if m.get("kind") == "train_view" and m.get("epoch") == 1]
    _permuted(store.path(key))
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        again = _cell(tmp_path / "out", tmp_path / "cache")
    _assert_same_metrics(result, again)
    assert again["feature_cache"]["computed"] == again["feature_cache"]["rejected"] == 1
    assert [w for w in _warnings(caplog) if "fails its checksum" in w] == [
        f"feature cache {store.root}: entry {key[:2]}/{key}.npy fails its checksum (its content changed after it "
        f"was written); recomputing it (it is never used)"]
    assert np.array_equal(np.load(store.path(key)), arrays[key])


def test_a_good_result_is_not_replaced_by_a_bad_entry(tmp_path, clean):
    """The user's case: a permuted test-set entry used to write status ok with another accuracy over result.json."""
    result, arrays, sidecars = clean
    first = _cell(tmp_path / "out", tmp_path / "cache")
    _assert_same_metrics(result, first)
    store = FeatureStore(tmp_path / "cache" / "features")
    for entry in store.entries():
        _permuted(Path(entry["path"]))
    _cell(tmp_path / "out", tmp_path / "cache")
    (path,) = (tmp_path / "out" / "results").rglob("result.json")
    assert json.loads(path.read_text())["metrics"] == result["metrics"]


def test_entries_without_a_checksum_are_recomputed_once_with_one_warning(tmp_path, clean, caplog, capsys):
    """Entries the previous format wrote (sidecar without sha256, or none) cannot be verified: each is recomputed
    once and rewritten with a checksum; one warning for the folder, not one per entry."""
    result, arrays, sidecars = clean
    old = {k: {f: v for f, v in m.items() if f not in ("sha256", "format")} for k, m in sidecars.items()}
    store = _seed_store(tmp_path / "cache", arrays, old)
    stray = next(iter(arrays))
    store.path(stray).with_suffix(".json").unlink()  # an array with no sidecar at all
    from promptbench.cli import main

    assert main(["cache", "list", f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    assert "4 entries have no checksum" in capsys.readouterr().out
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        again = _cell(tmp_path / "out", tmp_path / "cache")
    _assert_same_metrics(result, again)
    assert again["feature_cache"]["computed"] == 4
    warned = [w for w in _warnings(caplog) if w.startswith("feature cache")]
    assert len(warned) == 1 and "no checksum" in warned[0] and str(store.root) in warned[0], warned
    assert all(e["checked"] for e in store.entries()) and len(store.entries()) == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        third = _cell(tmp_path / "out2", tmp_path / "cache")
    _assert_same_metrics(result, third)
    assert third["feature_cache"]["computed"] == 0 and third["feature_cache"]["disk"] == 4
    assert not [w for w in _warnings(caplog) if w.startswith("feature cache")]


# -- a cache folder that cannot be written --------------------------------------------------------------------


def _refuse_writes_under(monkeypatch, root: Path, code: int) -> None:
    """Make every file or folder creation under ``root`` fail with ``code``, at the OS boundary (``os.open``,
    ``os.mkdir``), as a full or read-only filesystem does (chmod does not stop root)."""
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path: os.PathLike | str) -> bool:
        return str(os.path.abspath(os.fspath(path))).startswith(str(root))

    def fake_open(path, flags, *args, **kw):
        if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, flags, *args, **kw)

    def fake_mkdir(path, *args, **kw):
        if refused(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def _assert_degraded(result: dict, clean_result: dict, warned: list[str], root: Path) -> None:
    _assert_same_metrics(clean_result, result)
    mine = [w for w in warned if w.startswith("feature cache")]
    assert len(mine) == 1 and f"feature cache {root / 'features'} cannot be written" in mine[0], mine
    assert "keeping features in memory" in mine[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_an_unwritable_cache_folder_degrades_to_memory_with_one_warning(tmp_path, monkeypatch, clean, caplog, code):
    result, _, _ = clean
    cache = tmp_path / "cache"
    _refuse_writes_under(monkeypatch, cache, code)
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        first = _cell(tmp_path / "out", cache)
        second = _cell(tmp_path / "out2", cache)  # another cell of the same process: no second warning
    _assert_degraded(first, result, _warnings(caplog), cache)
    _assert_same_metrics(result, second)
    assert first["feature_cache"]["computed"] == 4 and not (cache / "features").exists()


def test_memory_off_and_an_unwritable_folder_still_encode_each_entry_once(tmp_path, monkeypatch, clean, caplog):
    """``features.memory=false`` with a folder that fails: the store falls back to memory anyway."""
    result, _, _ = clean
    cache = tmp_path / "cache"
    _refuse_writes_under(monkeypatch, cache, errno.EROFS)
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        first = _cell(tmp_path / "out", cache, "features.memory=false")
    _assert_degraded(first, result, _warnings(caplog), cache)
    assert first["feature_cache"]["computed"] == 4


def test_a_cache_folder_under_a_file_degrades_to_memory(tmp_path, clean, caplog):
    result, _, _ = clean
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        first = _cell(tmp_path / "out", tmp_path / "blocker")
    _assert_degraded(first, result, _warnings(caplog), tmp_path / "blocker")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (needs mount rights: root, or skipped); unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_really_full_cache_filesystem_degrades_to_memory(small_tmpfs, tmp_path, clean, caplog):
    result, _, _ = clean
    (small_tmpfs / "cache" / "features").mkdir(parents=True)
    _fill(small_tmpfs)
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        first = _cell(tmp_path / "out", small_tmpfs / "cache")
    _assert_degraded(first, result, _warnings(caplog), small_tmpfs / "cache")


def test_a_really_read_only_cache_filesystem_serves_its_entries_and_degrades(small_tmpfs, tmp_path, clean, caplog):
    """A read-only filesystem holding every good entry but one evaluation set's: those are read (verified), that
    one is computed and kept in memory, with one warning."""
    result, arrays, sidecars = clean
    missing = sorted(k for k, m in sidecars.items() if m.get("kind") == "eval")[0]
    kept = {k: v for k, v in arrays.items() if k != missing}
    _seed_store(small_tmpfs / "cache", kept, sidecars)
    done = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.decode().strip()[:200]}")
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        first = _cell(tmp_path / "out", small_tmpfs / "cache")
    _assert_degraded(first, result, _warnings(caplog), small_tmpfs / "cache")
    assert first["feature_cache"]["disk"] == 3 and first["feature_cache"]["computed"] == 1


# -- which folder: an explicit paths.cache_dir beats the environment ----------------------------------------


def test_an_explicit_cache_dir_beats_the_environment_for_runs_and_the_cli(tmp_path, monkeypatch, clean, capsys):
    from promptbench.cli import main

    env_dir, explicit = tmp_path / "env", tmp_path / "explicit"
    monkeypatch.setenv("PROMPTBENCH_CACHE", str(env_dir))
    assert cache_dir(compose([f"paths.cache_dir={explicit}"])) == explicit / "features"
    assert cache_dir(compose([])) == env_dir / "features"  # the default still follows the variable
    _cell(tmp_path / "out", explicit)
    assert len(FeatureStore(explicit / "features").entries()) == 4 and not env_dir.exists()
    _cell(tmp_path / "out_env", None)  # no explicit folder: the variable's
    assert len(FeatureStore(env_dir / "features").entries()) == 4
    assert main(["cache", "clear", f"paths.cache_dir={explicit}"]) == 0
    assert f"removed 4 feature entries from {explicit / 'features'}" in capsys.readouterr().out
    assert FeatureStore(explicit / "features").entries() == []
    assert len(FeatureStore(env_dir / "features").entries()) == 4  # the variable's folder is untouched
    monkeypatch.delenv("PROMPTBENCH_CACHE")
    assert cache_dir(compose([f"paths.output_dir={tmp_path / 'o'}"])) == tmp_path / "o" / "cache" / "features"


def test_store_reads_check_the_embedding_width_even_without_a_sidecar_mismatch(tmp_path):
    """Store level: the caller's (rows, cols) decide, and a memory entry of another shape is not served either."""
    store = FeatureStore(tmp_path)
    value = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    store.put("ab" + "0" * 62, value)
    assert torch.equal(store.get("ab" + "0" * 62, 3, 4), value)
    assert store.get("ab" + "0" * 62, 3, 5) is None and store.get("ab" + "0" * 62, 2, 4) is None
    memory_cache.clear()
    assert store.read("ab" + "0" * 62, 3, 5)[1] == "has 4 columns where the embedding has 5"


def _entry(store: FeatureStore, key: str, array: np.ndarray, **meta) -> Path:
    path = store.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    sidecar = {"key": key, "shape": list(array.shape), "dtype": "float32", "sha256": _checksum(array), **meta}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


@pytest.mark.parametrize("case", ["rows", "float64", "fortran", "sidecar", "npz", "pickle", "other_key"])
def test_every_check_of_a_read(tmp_path, case, caplog):
    """Store level, one check each: the entry is refused (with its problem named once) and recomputed."""
    store = FeatureStore(tmp_path)
    key = "cd" + "1" * 62
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = _entry(store, key, good)
    if case == "rows":
        _entry(store, key, good[:2])
    elif case == "float64":
        _entry(store, key, good.astype(np.float64))
    elif case == "fortran":
        np.save(path, np.asfortranarray(good))
    elif case == "sidecar":
        path.with_suffix(".json").write_text("[1, 2")
    elif case == "npz":
        with open(path, "wb") as f:
            np.savez(f, good)
    elif case == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "other_key":
        meta = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**meta, "key": "ef" + "2" * 62}))
    with caplog.at_level(logging.WARNING, logger="promptbench"):
        value = store.get_or_compute(key, lambda: torch.from_numpy(good.copy()), rows=3, cols=4)
        again = store.get_or_compute(key, lambda: torch.zeros(3, 4), rows=3, cols=4)
    assert torch.equal(value, torch.from_numpy(good)) and torch.equal(again, value)
    assert store.hits["computed"] == store.hits["rejected"] == 1
    warned = [w for w in _warnings(caplog) if w.startswith(f"feature cache {tmp_path}: entry {key[:2]}/{key}.npy ")]
    assert len(warned) == 1, _warnings(caplog)
    memory_cache.clear()
    assert store.read(key, 3, 4)[1] is None  # replaced by a verified entry
    assert store.read(key, 3, 5)[1] == "has 4 columns where the embedding has 5"
