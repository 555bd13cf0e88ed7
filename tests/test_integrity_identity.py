"""Issue 21, identity: a result is the cell its folder says it is. Copied or moved result folders are never
counted twice (one warning names both files), results at no cell's own path and malformed or future-schema
files are left out with one warning, status never calls another cell's result ``done``, and an attempt line
cut short by a crash never swallows the next record. Real result files in tmp folders."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from promptbench import cli
from promptbench.config import compose
from promptbench.engine import results
from promptbench.engine.results import ATTEMPTS_FILE, SCHEMA_VERSION, append_attempt, config_hash, read_attempts
from promptbench.report.collect import collect, load_results
from promptbench.sweep import grid as sweep_grid
from promptbench.sweep import status as sweep_status
from tests.test_tables import lookup, md_rows, write_result

CELL = Path("few_shot/xa/tiny_clip/coop/shots_1")


def table(tmp: Path, capsys: pytest.CaptureFixture, left_out: int) -> tuple[pd.DataFrame, list[list[str]]]:
    """``promptbench table`` over ``tmp/results``: exit 0 and ``left_out`` files said to be left out, then
    (long.csv, table rows)."""
    out = tmp / "tables"
    assert cli.main(["table", "--results", str(tmp / "results"), "--out", str(out), "--no-plots",
                     f"paths.output_dir={tmp}"]) == 0
    assert f"{left_out} result file(s) left out" in capsys.readouterr().out
    return pd.read_csv(out / "long.csv"), md_rows((out / "table.md").read_text())


def warnings_naming(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    """The promptbench warning lines that contain every needle."""
    return [r.getMessage() for r in caplog.records if r.name == "promptbench" and r.levelno == logging.WARNING
            and all(n in r.getMessage() for n in needles)]


# ----------------------------------------------------------------------------- copies, backups, moved trees
def test_a_backup_copy_of_a_cell_is_never_a_second_seed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         capsys: pytest.CaptureFixture) -> None:
    res = tmp_path / "results"
    own = write_result(res, "xa", "coop", 1, 1, {"test/acc": 0.30})
    write_result(res, "xa", "zeroshot", 1, 1, {"test/acc": 0.25})
    backup = res / "few_shot/xa/tiny_clip/coop.bak/shots_1/seed_1/result.json"
    shutil.copytree(res / "few_shot/xa/tiny_clip/coop", backup.parents[2])   # cp -r coop coop.bak
    older = json.loads(backup.read_text())
    older["metrics"]["test/acc"] = 0.59                                         # the backup holds an older run
    backup.write_text(json.dumps(older))
    caplog.set_level(logging.WARNING, "promptbench")
    long, rows = table(tmp_path, capsys, left_out=1)
    assert lookup(rows, "xa", "coop")["K=1"] == "30.00"                         # before: 44.50 ± 20.51
    coop = long[long["method"] == "coop"]
    assert len(coop) == 1 and coop["path"].item() == str(own)
    lines = warnings_naming(caplog, str(own), str(backup))
    assert len(lines) == 1 and "\n" not in lines[0] and "few_shot/xa/tiny_clip/coop/shots_1/seed_1" in lines[0]
    assert len(warnings_naming(caplog, str(backup))) == 1                       # one line, not one per file


def test_a_result_at_no_cells_own_path_is_left_out_with_one_warning(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    res = tmp_path / "results"
    for seed, acc in ((1, 0.30), (2, 0.40)):
        write_result(res, "xa", "coop", 1, seed, {"test/acc": acc})
    write_result(res, "xa", "zeroshot", 1, 1, {"test/acc": 0.25})
    bak = res / "few_shot/xa/tiny_clip/coop.bak"
    (res / CELL).parent.rename(bak)                                             # only a backup is left
    moved = res / "few_shot/xa/tiny_clip/zeroshot/shots_1/seed_1"
    moved.rename(moved.with_name("seed_9"))                                     # a folder renamed by hand
    caplog.set_level(logging.WARNING, "promptbench")
    long = collect(res)
    assert long.empty and long.attrs["left_out"] == 3                           # before: 3 rows, coop 2 seeds
    for path, claimed in ((bak / "shots_1/seed_1/result.json", "coop/shots_1/seed_1"),
                          (bak / "shots_1/seed_2/result.json", "coop/shots_1/seed_2"),
                          (moved.with_name("seed_9") / "result.json", "zeroshot/shots_1/seed_1")):
        lines = warnings_naming(caplog, str(path))
        assert len(lines) == 1 and f"few_shot/xa/tiny_clip/{claimed}" in lines[0], lines


def test_a_results_tree_copied_inside_itself_is_counted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             capsys: pytest.CaptureFixture) -> None:
    res = tmp_path / "results"
    for seed, acc in ((1, 0.30), (2, 0.40)):
        write_result(res, "xa", "coop", 1, seed, {"test/acc": acc})
    shutil.copytree(res / "few_shot", res / "old" / "few_shot")                 # cp -r results/few_shot results/old/
    caplog.set_level(logging.WARNING, "promptbench")
    long, rows = table(tmp_path, capsys, left_out=2)
    assert len(long) == 2 and not long["path"].str.contains("/old/").any()
    assert lookup(rows, "xa", "coop")["K=1"] == "35.00 ± 7.07"                  # before: 35.00 ± 5.77 (4 "seeds")
    for seed in (1, 2):
        lines = warnings_naming(caplog, str(res / CELL / f"seed_{seed}/result.json"),
                                str(res / "old" / CELL / f"seed_{seed}/result.json"))
        assert len(lines) == 1, lines


def test_a_file_listed_twice_is_one_result_without_a_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = write_result(tmp_path / "results", "xa", "coop", 1, 1, {"test/acc": 0.30})
    caplog.set_level(logging.WARNING, "promptbench")
    assert len(load_results([path, str(path)])) == 1 and not warnings_naming(caplog, str(path))


# ----------------------------------------------------------------------------- malformed and future files
BAD = {
    "shots_null": lambda r: r["identity"].update(shots=None),
    "future_schema": lambda r: r.update(schema=SCHEMA_VERSION + 1),
    "metrics_list": lambda r: r.update(metrics=[0.42]),
    "no_identity": lambda r: r.pop("identity"),
    "seed_string": lambda r: r["identity"].update(seed="1"),
    "method_number": lambda r: r["identity"].update(method=7),
    "status_missing": lambda r: r.pop("status"),
    "eval_sets_list": lambda r: r.update(eval_sets=["a", "b"]),
    "trust_list": lambda r: r.update(trust=[0.1]),
}


def test_malformed_and_future_schema_results_are_left_out_with_one_warning_each(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    res = tmp_path / "results"
    write_result(res, "xa", "coop", 1, 1, {"test/acc": 0.30})
    bad: dict[str, Path] = {}
    for seed, (name, spoil) in enumerate(BAD.items(), 2):
        path = write_result(res, "xa", "coop", 1, seed, {"test/acc": 42.0})   # 4200.00 if it were shown
        payload = json.loads(path.read_text())
        spoil(payload)
        path.write_text(json.dumps(payload))
        bad[name] = path
    for name, text in (("not_json", '{"schema": 1, "identity": {'), ("array", "[1, 2]"), ("empty", ""),
                       ("folder", None)):
        seed = len(bad) + 2
        path = write_result(res, "xa", "coop", 1, seed, {"test/acc": 42.0})
        if text is None:                                                        # a folder named result.json
            path.unlink()
            path.mkdir()
        else:
            path.write_text(text)
        bad[name] = path
    nan = write_result(res, "xa", "coop", 1, len(bad) + 2, {"test/acc": 0.5})
    nan.write_text(nan.read_text().replace('"test/acc": 0.5', '"test/acc": NaN'))  # hand-written, not strict JSON
    caplog.set_level(logging.WARNING, "promptbench")
    long, rows = table(tmp_path, capsys, left_out=len(bad))                    # before: a pandas error (shots null)
    assert lookup(rows, "xa", "coop")["K=1"] == "30.00 (1/2)"                   # before: 4200.00 shown (future schema)
    assert list(long["seed"]) == [1, len(bad) + 2] and long["test/acc"].isna().tolist() == [False, True]
    assert len(warnings_naming(caplog, str(nan), "test/acc=nan is not finite")) == 1
    assert "unreadable" in warnings_naming(caplog, str(bad["folder"]))[0]
    for name, path in bad.items():
        lines = warnings_naming(caplog, str(path))
        assert len(lines) == 1 and "\n" not in lines[0], (name, lines)
    assert "newer than" in warnings_naming(caplog, str(bad["future_schema"]))[0]
    assert "identity.shots" in warnings_naming(caplog, str(bad["shots_null"]))[0]
    assert "line 1 column" in warnings_naming(caplog, str(bad["not_json"]))[0]


def test_result_problem_accepts_what_run_writes() -> None:
    result_problem = results.result_problem
    ident = {"protocol": "few_shot", "dataset": "d", "modality": "", "organ": "", "backbone": "b", "method": "m",
             "variant": "", "shots": 0, "seed": 1}
    assert result_problem({"schema": 1, "identity": ident, "status": "ok", "metrics": {"test/acc": 0.5}}) == ""
    assert result_problem({"identity": {**ident, "variant": None}, "status": "failed", "error": "x"}) == ""
    assert "newer" in result_problem({"schema": SCHEMA_VERSION + 1, "identity": ident, "status": "ok"})
    assert "identity.shots" in result_problem({"identity": {**ident, "shots": True}, "status": "ok"})


# ----------------------------------------------------------------------------- status and sweeps
def test_another_cells_result_at_a_cell_path_is_not_done(tmp_path: Path) -> None:
    args = ["backbone=tiny_clip", "method=zeroshot", "dataset=demo_btmri", "shots=1", f"paths.output_dir={tmp_path}"]
    one, two = compose([*args, "seed=1"]), compose([*args, "seed=2"])
    path = tmp_path / "results/few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_2/result.json"
    path.parent.mkdir(parents=True)
    ident = {"protocol": "few_shot", "dataset": "demo_btmri", "modality": "MRI", "organ": "brain",
             "backbone": "tiny_clip", "method": "zeroshot", "variant": "", "shots": 1, "seed": 1}
    # seed 1's result moved into seed 2's folder, with seed 2's config hash (before: done, never re-run)
    path.write_text(json.dumps({"schema": 1, "identity": ident, "status": "ok", "metrics": {"test/acc": 0.5},
                                "hashes": {"config": config_hash(two)}}))
    status, detail = sweep_status.cell_status(two)
    assert status == "missing" and "few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1" in detail, detail
    cells = sweep_grid.compose_cells(sweep_grid.grid([*args, "seed=1,2"]))
    assert [(c.status, "seed_1 (copied or moved?)" in c.detail) for c in cells] == [("missing", False),
                                                                                     ("missing", True)]
    assert sweep_status.cell_status(one) == ("missing", "")
    path.write_text(json.dumps({"schema": 1, "identity": {**ident, "seed": None}, "status": "ok",
                                "hashes": {"config": config_hash(two)}}))
    status, detail = sweep_status.cell_status(two)
    assert status == "missing" and "identity.seed" in detail
    for text, why in (("[1, 2]", "not a JSON object"), ('{"identity": 1, "status": "ok"}', "identity is not"),
                      (json.dumps({"identity": {**ident, "seed": 2}, "status": "ok", "hashes": []}), "hashes")):
        path.write_text(text)                                                   # before: AttributeError
        status, detail = sweep_status.cell_status(two)
        assert status == "missing" and why in detail, detail
        assert [c.status for c in sweep_grid.compose_cells(sweep_grid.grid([*args, "seed=2"]))] == ["missing"]
    path.write_text(json.dumps({"schema": 1, "identity": {**ident, "seed": 2}, "status": "ok",
                                "hashes": {"config": config_hash(two)}}))
    assert sweep_status.cell_status(two) == ("done", "")                               # its own result still counts


# ----------------------------------------------------------------------------- attempts.jsonl
def test_an_attempt_line_cut_short_never_swallows_the_next_record(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    cell = tmp_path / "cell"
    append_attempt(cell, {"status": "ok", "error": None, "pid": 1})
    with open(cell / ATTEMPTS_FILE, "a") as f:
        f.write('{"status": "failed", "error": "Runt')                          # killed mid-write: no newline
    append_attempt(cell, {"status": "interrupted", "error": "interrupted by SIGTERM", "pid": 3})
    caplog.set_level(logging.WARNING, "promptbench")
    assert [a["status"] for a in read_attempts(cell)] == ["ok", "interrupted"]  # before: ["ok"]
    assert (cell / ATTEMPTS_FILE).read_text().endswith('"pid": 3}\n')
    lines = warnings_naming(caplog, str(cell / ATTEMPTS_FILE), "line 2")
    assert len(lines) == 1

    # a log written by the old writer (the next record joined the cut line) is still read
    old = tmp_path / "old"
    old.mkdir()
    (old / ATTEMPTS_FILE).write_text('{"status": "ok", "pid": 1}\n{"status": "failed", "hashes": {"config": "a'
                                     '{"status": "diverged", "error": "Diverged: x", "hashes": {"config": "b"}}\n'
                                     '{"status": "ok", "pid": 4}\n')
    assert [a["status"] for a in read_attempts(old)] == ["ok", "diverged", "ok"]
    (old / ATTEMPTS_FILE).write_text('{"status": "ok", "pid": 1}\n{"status": "failed", "hashes": {"config": "a"}')
    assert [a["status"] for a in read_attempts(old)] == ["ok"]                 # a nested object is not a record
    (old / ATTEMPTS_FILE).write_text('[1]\n"x"\n{"status": "ok"}\n')
    assert read_attempts(old) == [{"status": "ok"}]


def test_a_cut_attempt_line_does_not_hide_the_last_attempt_from_status(tmp_path: Path) -> None:
    args = ["backbone=tiny_clip", "method=zeroshot", "dataset=demo_btmri", "shots=1", "seed=1",
            f"paths.output_dir={tmp_path}"]
    cfg = compose(args)
    cell = tmp_path / "results/few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1"
    write_result(tmp_path / "results", "demo_btmri", "zeroshot", 1, 1, {"test/acc": 0.5},
                 config_hash=config_hash(cfg))
    payload = json.loads((cell / "result.json").read_text())
    payload["identity"].update(modality="MRI", organ="brain")
    payload["finished"] = "2026-01-01T00:00:00+00:00"
    (cell / "result.json").write_text(json.dumps(payload))
    (cell / ATTEMPTS_FILE).write_text('{"status": "ok", "finished": "2026-01-01T00:00:00+00:00"}\n{"status": "o')
    append_attempt(cell, {"status": "failed", "error": "RuntimeError: boom", "finished": "2026-02-01T00:00:00+00:00"})
    assert sweep_status.cell_status(cfg) == ("done", "good result kept; last attempt failed: RuntimeError: boom")
    append_attempt(cell, {"status": "failed", "error": "RuntimeError: late", "finished": None})  # before: TypeError
    assert sweep_status.cell_status(cfg) == ("done", "")


@pytest.mark.parametrize("overrides", [["method=coop", "dataset=demo_btmri"],
                                       ["method=linear_probe", "experiment=demo", "shots=4", "seed=2"]])
def test_a_runs_one_resolution_gives_the_config_hash_of_the_grid(overrides: list[str]) -> None:
    """engine.run resolves a cell's config once for its record and its hash: equal to what the grid and the status
    checks compute with ``config_hash``, and the recorded config is the resolved config itself, keys all kept."""
    cfg = compose(overrides)
    data, hashed = results.resolved_config_hash(cfg)
    assert hashed == config_hash(cfg) == config_hash(data)
    assert data == OmegaConf.to_container(cfg, resolve=True) and "paths" in data


def test_a_typed_method_config_is_checked_once_but_every_caller_gets_its_own_object() -> None:
    from promptbench.methods import check_method_config

    node = compose(["method=coop"]).method
    first, second = check_method_config(node), check_method_config(node)
    assert first == second and first is not second
    first.n_ctx = 99
    assert check_method_config(node).n_ctx != 99
    bad = compose(["method=coop", "method.n_ctx=oops"]).method
    for _ in range(2):  # a refused node is refused every time, never served from the memo
        with pytest.raises(Exception, match="n_ctx"):
            check_method_config(bad)
