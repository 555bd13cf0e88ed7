"""Issue 21: every number is checked against what produced it (weights, subset file, data bytes, result schema),
and nothing is reported stale whose inputs did not change (docs/_i21_provenance.md)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from promptbench.backbones import MODEL_CONFIG_DIR, build_backbone
from promptbench.config import compose
from promptbench.core import filehash
from promptbench.data.preflight import data_fingerprint
from promptbench.data.readers import read_dataset
from promptbench.engine.results import config_hash, identity, is_done, read_result, result_path, write_json_atomic
from promptbench.sweep import grid as sweep_grid
from promptbench.sweep import status as sweep_status
from tests.test_reliability import cfg_for, make_dataset

REV = "0123456789abcdef0123456789abcdef01234567"
ASSETS = Path(__file__).resolve().parents[1] / "assets" / "backbones" / "medclip_tiny"

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(autouse=True)
def hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private on-disk hash cache per test (and an empty in-process one)."""
    path = tmp_path / "filehash.json"
    monkeypatch.setenv(filehash.CACHE_ENV, str(path))
    monkeypatch.setattr(filehash, "_MEMORY", {})
    monkeypatch.setattr(filehash, "_LOADED", set())
    monkeypatch.setattr(filehash, "_NEW", {})
    return path


def _run(cfg) -> dict:
    from promptbench.engine.run import run

    return run(cfg)


def _status(cfg) -> tuple[str, str]:
    return sweep_status.cell_status(cfg)


def _flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place (same size, same inode), then put the old atime/mtime back."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    with open(path, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


# ------------------------------------------------------------------------------------------------ weights
def test_weights_replaced_in_place_make_the_cell_stale_rewritten_bytes_do_not(tmp_path: Path) -> None:
    folder = tmp_path / "medclip_tiny"
    shutil.copytree(ASSETS, folder)
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 1})
    cfg = cfg_for(root, tmp_path / "out", "backbone=medclip_tiny", f"backbone.source=local-dir:{folder}")
    result = _run(cfg)
    weights = folder / "open_clip_model.safetensors"
    assert result["hashes"]["weights"] == filehash.sha256_file(weights)
    assert is_done(cfg) and _status(cfg) == ("done", "")

    os.utime(weights, ns=(1, 1))                        # the same bytes with another mtime (a copy, a touch)
    weights.write_bytes(weights.read_bytes())
    assert is_done(cfg) and _status(cfg) == ("done", "")

    _flip_byte(weights, offset=os.path.getsize(weights) - 1)  # new weights at the same path, mtime restored
    assert not is_done(cfg)
    status, detail = _status(cfg)
    assert status == "stale" and detail.startswith("weights changed since this result"), detail


def test_weights_are_hashed_once_per_file_identity(tmp_path: Path, hash_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 1000)
    calls: list[str] = []
    real = filehash.sha256_file
    monkeypatch.setattr(filehash, "sha256_file", lambda p, *a: calls.append(str(p)) or real(p, *a))
    first = filehash.file_hash(path)
    assert filehash.file_hash(path) == first and len(calls) == 1
    monkeypatch.setattr(filehash, "_MEMORY", {})         # a new process: the on-disk cache answers
    monkeypatch.setattr(filehash, "_LOADED", set())
    assert filehash.file_hash(path) == first and len(calls) == 1
    assert json.loads(hash_cache.read_text()) == {filehash.file_key(path): first}
    _flip_byte(path)                                     # same path, size, mtime and inode: ctime changed
    assert filehash.file_hash(path) != first and len(calls) == 2


def test_a_cached_backbone_reports_the_weights_it_loaded_not_the_file_now(tmp_path: Path) -> None:
    folder = tmp_path / "medclip_tiny"
    shutil.copytree(ASSETS, folder)
    weights = folder / "open_clip_model.safetensors"
    loaded = filehash.sha256_file(weights)
    backbone = build_backbone(OmegaConf.create({"name": "m", "source": f"local-dir:{folder}"}))
    _flip_byte(weights, offset=os.path.getsize(weights) - 1)      # replaced after loading, before a run records it
    assert backbone.weights_sha256 == loaded != filehash.sha256_file(weights)


def _fake_hub(cache: Path, weights: bytes | None = None) -> Path:
    """``models--org--tiny`` in an HF cache layout (refs/main, snapshots/<rev>) holding tiny_clip's config and
    weights; returns the weights file."""
    repo = cache / "models--org--tiny"
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    shutil.copy(MODEL_CONFIG_DIR / "tiny_clip" / "open_clip_config.json", snap)
    target = snap / "open_clip_model.safetensors"
    if weights is None:
        from safetensors.torch import save_file

        model = build_backbone(OmegaConf.create({"name": "tiny_clip", "load_weights": False,
                                                 "source": f"local-dir:{MODEL_CONFIG_DIR / 'tiny_clip'}"})).model
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, target)
    else:
        target.write_bytes(weights)
    return target


def test_a_hub_backbone_records_its_snapshot_and_weights_hash(tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    weights = _fake_hub(cache)
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 1})
    cfg = cfg_for(root, tmp_path / "out", "backbone.source=hf-hub:org/tiny", "backbone.load_weights=true",
                  f"+backbone.cache_dir={cache}")
    hashes = _run(cfg)["hashes"]
    assert hashes["weights"] == filehash.sha256_file(weights) and hashes["weights_revision"] == REV
    assert _status(cfg) == ("done", "")
    _flip_byte(weights, offset=os.path.getsize(weights) - 1)  # the snapshot's blob replaced
    assert _status(cfg)[1].startswith("weights changed since this result")


# ------------------------------------------------------------------------------------------------ subsets
def _subset(tmp_path: Path) -> tuple[Path, dict]:
    from promptbench.data.subsets import export_subsets

    export_subsets(["dataset=demo_btmri", "shots=4", "seeds=1", f"out={tmp_path}"])
    path = tmp_path / "demo_btmri" / "shots_4-seed_1.json"
    return path, json.loads(path.read_text())


def test_an_edited_subset_file_is_refused_in_one_line(tmp_path: Path) -> None:
    from promptbench.data.records import stable_hash
    from promptbench.data.subsets import load_subset

    path, good = _subset(tmp_path)
    splits = read_dataset(compose(["dataset=demo_btmri"]).dataset)

    def error(doc: dict) -> str:
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError) as info:
            load_subset(path, splits, folder="BTMRI", shots=4, seed=1)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        return str(info.value)

    dropped = {**good, "train": [e for e in good["train"] if e[1] != 2]}            # a class dropped
    assert "it was edited" in error(dropped)
    repeated = {**good, "train": [good["train"][0], *good["train"][:-1]]}            # an image repeated
    assert "it was edited" in error(repeated)

    def rehashed(doc: dict) -> dict:                                                 # the hash "fixed" by hand
        body = {k: v for k, v in doc.items() if k != "content_hash"}
        return {**body, "content_hash": stable_hash(body)}

    assert "has 0 image(s) of class 'pituitary tumor' but a 4-shot subset" in error(rehashed(dropped))
    assert "is listed twice" in error(rehashed(repeated))
    pool = [r.key for r in splits.train if r.label == 0 and r.key not in {e[0] for e in good["train"]}]
    swapped = rehashed({**good, "train": [[pool[0], 0], *good["train"][1:]]})         # an intended custom subset
    path.write_text(json.dumps(swapped))
    assert load_subset(path, splits, folder="BTMRI", shots=4, seed=1)[2]["content_hash"] == swapped["content_hash"]


def test_a_changed_subset_file_makes_its_cells_stale(tmp_path: Path) -> None:
    from promptbench.data.records import stable_hash

    path, good = _subset(tmp_path / "subsets")
    cfg = compose(["backbone=tiny_clip", "method=zeroshot", "dataset=demo_btmri", "shots=4", "logger=none",
                   f"protocol.subset_file={path}", f"paths.output_dir={tmp_path / 'out'}"])
    result = {"schema": 2, "identity": identity(cfg), "status": "ok",
              "hashes": {"config": config_hash(cfg), "subset": good["content_hash"]}}
    write_json_atomic(result_path(cfg), result)
    assert _status(cfg) == ("done", "") and is_done(cfg)
    body = {k: v for k, v in good.items() if k != "content_hash"} | {"sampler": "by hand"}
    path.write_text(json.dumps({**body, "content_hash": stable_hash(body)}))   # another subset at the same path
    assert not is_done(cfg)
    assert _status(cfg)[1].startswith("subset file changed since this result"), _status(cfg)


# ------------------------------------------------------------------------------------------------ data
def test_an_image_replaced_with_its_mtime_restored_makes_the_cell_stale(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 1})
    cfg = cfg_for(root, tmp_path / "out")
    _run(cfg)
    splits = read_dataset(cfg.dataset)
    assert _status(cfg) == ("done", "")
    images = sorted((root / "MINI" / "MINI").rglob("*.jpg"))
    stat_before = data_fingerprint(splits)

    # another image of the same size written beside it and renamed over it, mtime restored: new inode
    victim, other = images[0], images[1]
    st = os.stat(victim)
    replacement = other.read_bytes()[: st.st_size].ljust(st.st_size, b"\0")
    (victim.parent / "tmp.jpg").write_bytes(replacement)
    os.replace(victim.parent / "tmp.jpg", victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data_fingerprint(read_dataset(cfg.dataset)) == stat_before     # size and mtime cannot tell
    assert not is_done(cfg)
    assert _status(cfg) == ("stale", "data changed since this result (image bytes or split file)")


def test_an_image_edited_in_place_with_its_mtime_restored_makes_the_cell_stale(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 1})
    cfg = cfg_for(root, tmp_path / "out")
    _run(cfg)
    assert is_done(cfg)
    _flip_byte(sorted((root / "MINI" / "MINI").rglob("*.jpg"))[2])       # same path, size, mtime, inode
    assert not is_done(cfg) and _status(cfg)[0] == "stale"


def test_copied_data_with_new_mtimes_is_not_stale(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 1})
    cfg = cfg_for(root, tmp_path / "out")
    _run(cfg)
    for image in (root / "MINI" / "MINI").rglob("*.jpg"):                # re-extracted: same bytes, new mtimes
        data = image.read_bytes()
        image.unlink()
        image.write_bytes(data)
        os.utime(image, ns=(10**18, 10**18))
    assert is_done(cfg) and _status(cfg) == ("done", "")


# ------------------------------------------------------------------------------------------------ schema, upgrade
def test_result_schema_older_is_stale_newer_is_never_done(tmp_path: Path) -> None:
    cfg = compose(["backbone=tiny_clip", "method=zeroshot", "logger=none", f"paths.output_dir={tmp_path}"])
    # 0 and 3 are not results this promptbench can use (identity part): listed missing with the reason, never done
    for schema, status in ((0, "missing"), (1, "done"), (2, "done"), (3, "missing")):
        write_json_atomic(result_path(cfg), {"schema": schema, "identity": identity(cfg), "status": "ok",
                                             "hashes": {"config": config_hash(cfg)}})
        assert _status(cfg)[0] == status, (schema, _status(cfg))
        assert is_done(cfg) == (status == "done")
        if status != "done":
            assert "schema" in _status(cfg)[1]
    assert "newer than this promptbench" in _status(cfg)[1]


def test_results_written_before_this_change_stay_done(tmp_path: Path) -> None:
    """A schema-1 result (no weights_revision / data_content / subset; hub weights null) is done while its
    recorded inputs are unchanged, and stale when one of them changed."""
    cache = tmp_path / "hf"
    _fake_hub(cache)
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 1, "test": 1})
    cfg = cfg_for(root, tmp_path / "out", "backbone.source=hf-hub:org/tiny", "backbone.load_weights=true",
                  f"+backbone.cache_dir={cache}")
    new = _run(cfg)
    old = {**new, "schema": 1, "hashes": {k: new["hashes"][k] for k in ("config", "data", "split", "manifest")}
           | {"weights": None}}
    write_json_atomic(result_path(cfg), old)
    assert is_done(cfg) and _status(cfg) == ("done", "")
    image = sorted((root / "MINI" / "MINI").rglob("*.jpg"))[0]
    image.write_bytes(image.read_bytes() + b"\0")                        # what schema 1 could see: size/mtime
    assert _status(cfg) == ("stale", "data changed since this result (split file or image sizes/mtimes)")


# ------------------------------------------------------------------------------------------------ tables
def test_a_table_built_during_a_sweep_marks_no_finished_cell_stale(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported stale cells: cells the sweep finished between the table composing the grid (no result yet:
    no expected config hash computed) and reading the results were compared with that missing hash."""
    from promptbench.report import build as table_build
    from tests.test_tables import write_result

    overrides = ["method=zeroshot,biomed_dpt", "dataset=demo_btmri", "shots=1", "seed=1,2", "backbone=tiny_clip",
                 f"paths.output_dir={tmp_path}"]
    cells = sweep_grid.grid(["experiment=demo_seed_comparison", *overrides])
    res = tmp_path / "results"

    def finish(ovs: list[str], stamp: str = "2026-12-01T22:00:00+00:00", chash: str | None = None) -> None:
        cfg = compose(ovs)
        path = write_result(res, str(cfg.dataset.name), str(cfg.method.name), 1, int(cfg.seed), {"test/acc": 0.5},
                            config_hash=chash or config_hash(cfg))
        write_json_atomic(path, {**read_result(path), "finished": stamp})

    def build_while(step: str, action) -> object:
        real = getattr(table_build, step)
        monkeypatch.setattr(table_build, step, lambda *a: (action(), real(*a))[1])
        try:
            return table_build.build(experiment="demo_seed_comparison", overrides=overrides, plots=False)
        finally:
            monkeypatch.setattr(table_build, step, real)

    finish(cells[0])                                                 # done before the table started
    built = build_while("collect", lambda: [finish(ovs) for ovs in cells[1:]])   # 3 finish while it is built
    assert len(built.tables[0].long) == 4 and len(built.tables[0].stale) == 0, list(built.tables[0].stale["path"])
    assert "Stale results" not in (built.out_dir / "table.md").read_text()
    assert [c.status for c in sweep_grid.compose_cells(cells)] == ["done"] * 4

    finish(cells[0], chash="outdated")                               # stale; the sweep re-runs it meanwhile:
    built = build_while("cell_frame", lambda: finish(cells[0], stamp="2026-12-01T23:00:00+00:00"))
    assert len(built.tables[0].stale) == 1                           # the number shown is the stale one


def test_a_table_agrees_with_the_sweep_on_results_hashed_before_a_key_became_runtime_only(tmp_path: Path) -> None:
    from promptbench.report import build as table_build
    from tests.test_tables import write_result

    overrides = ["method=zeroshot", "dataset=demo_btmri", "shots=1", "seed=1", "backbone=tiny_clip",
                 f"paths.output_dir={tmp_path}"]
    cfg = compose(sweep_grid.grid(["experiment=demo_seed_comparison", *overrides])[0])
    path = write_result(tmp_path / "results", "demo_btmri", "zeroshot", 1, 1, {"test/acc": 0.5},
                        config_hash="hashed-with-threads")
    result = read_result(path)
    write_json_atomic(path, {**result, "config": OmegaConf.to_container(cfg, resolve=True)})
    cells = sweep_grid.compose_cells(sweep_grid.grid(["experiment=demo_seed_comparison", *overrides]))
    assert [c.status for c in cells] == ["done"]
    built = table_build.build(experiment="demo_seed_comparison", overrides=overrides, plots=False)
    assert len(built.tables[0].stale) == 0


def test_a_command_line_search_path_composes_every_cell_of_a_grid(tmp_path: Path) -> None:
    """``hydra.searchpath=[file://DIR]`` on a sweep's command line is part of what composes each cell: the grid's
    status and config hashes use it (before: dropped, so cells tuned there were listed stale after a sweep)."""
    tuned = tmp_path / "conf" / "tuned" / "few_shot" / "coop"
    tuned.mkdir(parents=True)
    (tuned / "demo_btmri.yaml").write_text("# @package _global_\nmethod:\n  epochs: 3\n")
    args = ["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "shots=1", "seed=1,2",
            f"paths.output_dir={tmp_path / 'out'}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    cells = sweep_grid.compose_cells(sweep_grid.grid(args), with_status=False, keep_config=True)
    assert [int(c.cfg.method.epochs) for c in cells] == [3, 3]
    assert int(compose([a for a in args if not a.startswith(("hydra.", "seed="))]).method.epochs) != 3
