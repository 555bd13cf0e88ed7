"""Dashboards: one W&B run per cell with a deterministic id (a rerun replaces it), the run's status follows the
cell, the summary holds identity/metrics/params/timing/memory/hashes, epoch is the x-axis; TensorBoard writes a
new version per run, epoch steps and HParams. W&B runs offline in a temporary folder; the offline ``.wandb`` files
are read back with W&B's own protobuf records (a LevelDB-style log, parsed by :func:`wandb_records`)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from promptbench.config import compose
from promptbench.engine.results import config_hash, identity
from promptbench.tracking.loggers import cell_tags, run_summary, wandb_run_id

REPO = Path(__file__).resolve().parents[1]
needs_demo = pytest.mark.skipif(not (REPO / "data" / "demo" / "BTMRI").is_dir(), reason="no vendored demo data")
CELL = ["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "shots=1", "method.epochs=2", "logger=wandb",
        "logger.kinds=[csv,tensorboard,wandb]", "logger.tags=[demo]", "trainer.enable_progress_bar=false"]


def wandb_records(path: Path) -> list:
    """Records of an offline ``run-<id>.wandb`` file: a ':W&B' header, then 32 KiB blocks of chunks
    (crc32, length, type 1 full / 2 first / 3 middle / 4 last) that concatenate to protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def complete_records(path: Path, timeout: float = 60.0) -> list:
    """The records once the run's ``exit`` record is on disk (W&B's service writes offline files asynchronously, so
    they can lag a moment behind ``wandb.finish()``)."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def offline_run(cell: Path) -> tuple[Path, dict]:
    """The cell's single offline run folder and what it recorded: run id, tags, final summary, metric
    definitions, exit code."""
    runs = sorted((cell / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    info: dict = {"summary": {}, "metrics": {}, "exit_code": None}
    for record in complete_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info["id"], info["tags"] = record.run.run_id, list(record.run.tags)
        elif kind == "summary":
            info["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
        elif kind == "metric" and record.metric.glob_name:
            info["metrics"][record.metric.glob_name] = record.metric.step_metric
        elif kind == "exit":
            info["exit_code"] = record.exit.exit_code
    return runs[0], info


def test_sync_reports_missing_folder_and_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from promptbench.tracking.sync import main as sync_main

    assert sync_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"sync: no folder {tmp_path / 'nope'} (give the sweep's paths.output_dir)"
    assert sync_main([str(tmp_path)]) == 0
    assert "no offline W&B runs" in capsys.readouterr().out


def test_run_id_is_deterministic_per_cell_and_config() -> None:
    cfg = compose(CELL)
    ident, h = identity(cfg), config_hash(cfg)
    assert wandb_run_id(ident, h) == wandb_run_id(dict(ident), h)
    assert wandb_run_id({**ident, "seed": 2}, h) != wandb_run_id(ident, h)
    assert wandb_run_id(ident, "other") != wandb_run_id(ident, h)
    assert set(cell_tags(ident, ["demo"])) == {"coop", "demo_btmri", "MRI", "few_shot", "tiny_clip", "1-shot", "demo"}
    summary = run_summary({"status": "failed", "error": "E: x", "identity": ident, "hashes": {"config": h}})
    assert summary["status"] == "failed" and summary["identity/method"] == "coop" and summary["config_hash"] == h


@needs_demo
def test_rerun_keeps_one_wandb_run_and_a_failed_cell_is_marked_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    import wandb

    import promptbench.engine.module as module
    from promptbench.engine.results import cell_dir, read_attempts, read_result, result_path
    from promptbench.engine.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    cfg = compose([*CELL, f"paths.output_dir={tmp_path}"])
    cell, expected_id = cell_dir(cfg), wandb_run_id(identity(cfg), config_hash(cfg))
    capfd.readouterr()
    run(cfg)
    assert not [line for line in capfd.readouterr().err.splitlines() if line.startswith("wandb:")]  # quiet
    first, _ = offline_run(cell)
    marker = first / "pb-first-run"  # the folder name has 1 s resolution: two quick runs can share it
    marker.touch()
    run(cfg)                                                              # the same cell again
    folder, info = offline_run(cell)                                      # still one run, same id
    assert not marker.exists()                                            # the first run's folder was replaced
    assert folder.name.endswith(expected_id) and info["id"] == expected_id
    assert wandb.run is None
    assert info["exit_code"] == 0 and info["summary"]["status"] == "ok"
    s = info["summary"]
    for key in ("identity/protocol", "identity/dataset", "identity/modality", "identity/organ", "identity/backbone",
                "identity/method", "identity/variant", "identity/shots", "identity/seed", "params/trainable",
                "params/total", "timing/wall_s", "timing/train_s", "memory/process_peak_rss_mb", "hashes/config",
                "hashes/split", "hashes/manifest", "test/acc", "test/macro_f1", "train/loss"):
        assert key in s, key
    assert s["test/acc"] == pytest.approx(read_result(result_path(cfg))["metrics"]["test/acc"])
    assert s["hashes/config"] == config_hash(cfg) and s["identity/shots"] == 1
    assert {"coop", "demo_btmri", "MRI", "1-shot", "demo"} <= set(info["tags"])
    assert info["metrics"].get("train/*") == "epoch" and info["metrics"].get("val/*") == "epoch"

    def broken(self, batch, batch_idx):
        raise RuntimeError("injected training failure")

    monkeypatch.setattr(module.PromptModule, "training_step", broken)
    with pytest.raises(RuntimeError, match="injected"):
        run(cfg)
    _, failed = offline_run(cell)                                          # replaced again, now failed
    assert failed["id"] == expected_id and failed["exit_code"] == 1
    assert failed["summary"]["status"] == "failed" and "injected" in failed["summary"]["error"]
    assert read_result(result_path(cfg))["status"] == "ok"        # the good result stays (issue 14) ...
    assert read_attempts(cell)[-1]["status"] == "failed"           # ... and the failure is in the attempt log
    assert wandb.run is None

    # `promptbench sync`: finds the cell's offline run and hands it to `wandb sync` (its --dry-run needs no network)
    from promptbench.tracking.sync import main as sync_main

    capfd.readouterr()
    assert sync_main([str(tmp_path), "--dry-run"]) == 0
    out = capfd.readouterr()
    assert "sync: 1 offline run(s)" in out.out and f"run-{expected_id}.wandb" in out.out + out.err

    # TensorBoard: one version per run, scalars per epoch, HParams with the final test metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted(p.name for p in (cell / "tensorboard").iterdir())
    assert versions == ["version_0", "version_1", "version_2"]
    events = EventAccumulator(str(cell / "tensorboard" / "version_1")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]          # epochs, not optimiser steps
    assert "hparams/test/acc" in events.Tags()["scalars"]
    plugin = events.PluginTagToContent("hparams")
    assert plugin and any(b"test/acc" in v for v in plugin.values())
