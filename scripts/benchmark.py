#!/usr/bin/env python
"""Cell wall times before/after, framework overhead and physical limit: writes docs/benchmarks.md.

    # per-method cells, this tree vs another checkout (e.g. main before the feature store), back to back
    python scripts/benchmark.py cells --before /work/main --methods all
    # CoOp (16 shots, 100 epochs) against a plain PyTorch loop and the physical limit, on this machine
    python scripts/benchmark.py limits
    # the same on a GPU at BiomedCLIP size (run where CUDA is available; about 5 minutes on an H200)
    python scripts/benchmark.py limits --device cuda --backbone biomedclip_arch --precision bf16-mixed,32-true
    # the whole CPU demo into a fresh folder, for this tree or another checkout (appends one row)
    python scripts/benchmark.py demo [--tree /path/to/checkout] [--hide psutil] [--out outputs]
    # several cells at once on one device through joblib workers (cells per minute, 1 vs N workers)
    python scripts/benchmark.py share [--device cuda --backbone biomedclip_arch --jobs 1,2,4,8]
    # start-up work (import promptbench.config, promptbench --help) and optionally the test suite, two trees
    python scripts/benchmark.py startup --before /path/to/old/checkout [--repeat 5] [--suite]
    python scripts/benchmark.py report          # (re)write docs/benchmarks.md from docs/bench_data/*.json
    # the linear probe's old vs new fitter on the demo's cells: scripts/compare_linear_probe.py (linear_probe.json)

``cells`` runs every cell as its own ``promptbench train`` process (``trainer.threads=1``, fresh output folder,
so a cold feature store) alternating before/after per method, and reads ``timing.wall_s`` (the cell itself:
data, method, fit, test; not process start) from each ``result.json``. ``limits`` times, in one process:
(a) the cell through ``engine.run.run``; (b) a plain PyTorch loop doing the same work (encode the test set and
every epoch's training views in batches, then the SGD text steps with the same schedule); (c) the physical
limit = image-tower forwards needed x the measured per-image forward cost at batch 256 + text steps x the
measured step cost. Ratios (a)/(b) and (a)/(c) are the framework overhead and the distance to the limit.
``demo`` runs ``promptbench demo`` of a tree (its own code, this environment) into a fresh folder and records the
wall time, the demo's own minutes and cell count; ``--hide psutil`` makes ``import psutil`` fail for that run, as
in an environment without it (how the tree was installed before psutil became a dependency).
The raw numbers live in ``docs/bench_data/`` (committed), so ``report`` rewrites the page anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "bench_data"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
DEMO_SCALE = ["method.epochs=8", "method.batch_size=16"]  # conf/experiment/demo.yaml


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# -- cells: promptbench train, before vs after -------------------------------------------------------------


def _cell(tree: Path, overrides: list[str], out: Path) -> dict:
    env = {**os.environ, **ENV, "PYTHONPATH": str(tree)}
    env.pop("PROMPTBENCH_CACHE", None)
    cmd = [sys.executable, "-m", "promptbench.cli", "train", *overrides, "logger=none", "trainer.threads=1",
           "trainer.enable_progress_bar=false", f"paths.output_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    results = list(out.rglob("result.json"))
    if proc.returncode != 0 or not results:
        return {"status": "failed", "error": (proc.stderr.strip().splitlines() or ["?"])[-1], "process_s": process_s}
    result = json.loads(results[0].read_text())
    return {"status": result["status"], "wall_s": result["timing"]["wall_s"], "process_s": round(process_s, 2),
            "acc": result["metrics"].get("test/acc")}


def cells(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from promptbench.methods import load_all

    methods = sorted(load_all()) if args.methods == "all" else args.methods.split(",")
    base = [f"dataset={args.dataset}", f"shots={args.shots}", "seed=1", f"backbone={args.backbone}"]
    runs = [(m, [*base, f"method={m}", *([] if args.full_epochs else DEMO_SCALE)]) for m in methods]
    if args.ratio:
        runs += [("coop@100ep", [*base, "method=coop"]), ("zeroshot@ratio", [*base, "method=zeroshot"])]
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpus": os.cpu_count(),
            "before": f"{args.before} ({_git_sha(Path(args.before))})" if args.before else None,
            "settings": base + ([] if args.full_epochs else DEMO_SCALE)}
    old = OUT / f"{args.name}.json"
    rows = json.loads(old.read_text())["rows"] if args.append and old.is_file() else []
    with tempfile.TemporaryDirectory(prefix="pb_bench_") as tmp:
        for i, (label, overrides) in enumerate(runs, 1):
            row = {"cell": label, "load_before": _load()}
            if args.before:
                row["before"] = _cell(Path(args.before), overrides, Path(tmp) / f"before_{i}")
            row["after"] = _cell(REPO, overrides, Path(tmp) / f"after_{i}")
            rows = [r for r in rows if r["cell"] != label] + [row]
            print(f"[{i}/{len(runs)}] {json.dumps(row)}", flush=True)
            _save(args.name, {"meta": meta, "rows": rows})  # after every pair: a long run can be stopped


# -- demo: the whole CPU demo, wall time -------------------------------------------------------------------


def _git_sha(tree: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True,
                           text=True).stdout.strip()
    return (done.stdout.strip() or "?") + ("+changes" if dirty else "")


def demo(args: argparse.Namespace) -> None:
    tree = Path(args.tree or REPO).resolve()
    with tempfile.TemporaryDirectory(prefix="pb_demo_") as tmp:
        paths = [str(tree)]
        for name in args.hide:  # a module that refuses to import stands in for "not installed"
            (Path(tmp) / f"{name}.py").write_text(f"raise ImportError('{name} hidden by scripts/benchmark.py')\n")
            paths.insert(0, tmp)
        env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(paths),
               "PROMPTBENCH_HASH_CACHE": str(Path(tmp) / "filehash.json")}  # a fresh machine: no file hashed yet
        env.pop("PROMPTBENCH_CACHE", None)
        out = Path(args.out).resolve() if args.out else Path(tmp) / "out"
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"benchmark demo: --out {out} is not empty (the demo must start from nothing)")
        row = {"tree": _git_sha(tree), "hidden": ",".join(args.hide) or None, "load_before": _load(),
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "promptbench.cli", "demo", f"paths.output_dir={out}"], cwd=tree,
                              env=env, capture_output=True, text=True)
        row["wall_min"] = round((time.perf_counter() - t0) / 60, 2)
        timing = out / "tables" / "demo" / "timing.json"
        info = json.loads(timing.read_text()) if timing.is_file() else {}
        row.update(exit=proc.returncode, demo_min=info.get("minutes"), cells=info.get("cells"),
                   done=len(list((out / "results").rglob("result.json"))) if (out / "results").is_dir() else 0)
    old = OUT / "demo.json"
    rows = json.loads(old.read_text())["rows"] if old.is_file() else []
    print(json.dumps(row), flush=True)
    _save("demo", {"rows": [*rows, row]})


# -- limits: the framework vs a plain loop vs the physical limit ---------------------------------------------


def _median_time(fn, repeat: int, sync) -> float:
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def limits_one(backbone_name: str, device_name: str, precision: str, dataset: str, threads: int | None) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from promptbench.backbones import build_backbone
    from promptbench.config import compose
    from promptbench.engine.run import _build_datamodule, run
    from promptbench.features import autocast_for, encode_items, memory_cache
    from promptbench.methods import build_method
    from promptbench.methods.optim import build_optimizer, build_scheduler

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    trainer = ["trainer.accelerator=" + ("gpu" if device.type == "cuda" else "cpu"), f"trainer.precision={precision}",
               "logger=none", "trainer.enable_progress_bar=false", *([f"trainer.threads={threads}"] if threads else [])]
    row: dict = {"backbone": backbone_name, "device": device_name, "precision": precision}
    with tempfile.TemporaryDirectory(prefix="pb_limits_") as tmp:
        common = [f"backbone={backbone_name}", f"dataset={dataset}", "shots=16", "seed=1", *trainer]
        # (a) the cells through the engine: zero-shot and CoOp, cold store, then CoOp again with a warm store
        run(compose([*common, "method=zeroshot", f"paths.output_dir={Path(tmp) / 'warmup'}"]))  # loads the backbone
        for label, extra in (("zeroshot", ["method=zeroshot"]), ("coop", ["method=coop"]),
                             ("coop_warm", ["method=coop"]), ("coop_nofeatures", ["method=coop",
                                                                                   "features.enabled=false"])):
            if label != "coop_warm":
                memory_cache.clear()
            out = Path(tmp) / ("coop" if label == "coop_warm" else label)
            result = run(compose([*common, *extra, f"paths.output_dir={out}"]))
            row[f"{label}_cell_s"] = result["timing"]["wall_s"]
        row["ratio_coop_zeroshot"] = round(row["coop_cell_s"] / row["zeroshot_cell_s"], 2)
        # (b) a plain PyTorch loop doing the same work
        cfg = compose([*common, "method=coop", f"paths.output_dir={Path(tmp) / 'plain'}"])
        torch.manual_seed(1)
        backbone = build_backbone(cfg.backbone).to(device)
        dm = _build_datamodule(cfg, backbone, Path(tmp) / "plain")
        dm.setup("fit")
        method = build_method(cfg.method, backbone, dm.classnames, cfg.dataset).to(device)
        epochs, batch = int(cfg.method.epochs), int(cfg.method.batch_size)
        train_set, test_set = dm.state.train_set, dm.state.test_sets["test"]
        val_set = dm.state.val_set
        n_train = len(train_set)
        amp = autocast_for(precision, device)
        t0 = time.perf_counter()
        views = encode_items(backbone, train_set, [(i, e) for e in range(epochs) for i in range(n_train)],
                             precision=precision).to(device).view(epochs, n_train, -1)
        test_feats = encode_items(backbone, test_set, range(len(test_set)), precision=precision).to(device)
        labels = torch.tensor([r.label for r in train_set.records], device=device)
        params = list(method.learnable_parameters())
        opt = build_optimizer(params, cfg.method.optim)
        sched = build_scheduler(opt, cfg.method.optim, epochs)
        steps = 0
        for e in range(epochs):
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(e)).to(device)
            for s in range(0, n_train - batch + 1 if n_train >= batch else 1, batch):
                idx = order[s:s + batch]
                with amp:
                    loss = F.cross_entropy(method.logits(views[e, idx], method.prompt_learner()), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            sched.step()
        with torch.no_grad(), amp:
            method.logits(test_feats, method.prompt_learner()).argmax(-1)
        sync()
        row["plain_loop_s"] = round(time.perf_counter() - t0, 2)
        row["steps"] = steps
        # (c) the physical limit: forwards x cost per forward + steps x cost per step
        x = torch.stack([train_set[(i % n_train, 0)]["image"] for i in range(256)]).to(device)
        with torch.no_grad(), amp:
            backbone.encode_image(x)
            per_image = _median_time(lambda: backbone.encode_image(x), 5, sync) / len(x)
        f = views[0, :batch]

        def step() -> None:
            with amp:
                loss = F.cross_entropy(method.logits(f, method.prompt_learner()), labels[:batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        per_step = _median_time(step, 20, sync)
        forwards = epochs * n_train + len(test_set) + len(val_set)
        row.update({"image_forwards": forwards, "ms_per_image_forward": round(per_image * 1000, 3),
                    "ms_per_text_step": round(per_step * 1000, 2),
                    "limit_s": round(forwards * per_image + steps * per_step, 2)})
        row["overhead_vs_plain"] = round(row["coop_cell_s"] / row["plain_loop_s"], 2)
        row["ratio_to_limit"] = round(row["coop_cell_s"] / row["limit_s"], 2)
        row["warm_ratio_to_limit"] = round(row["coop_warm_cell_s"] / row["limit_s"], 2)
    return row


def limits(args: argparse.Namespace) -> None:
    rows = []
    for precision in args.precision.split(","):
        row = limits_one(args.backbone, args.device, precision, args.dataset, args.threads)
        row["load"] = _load()
        print(json.dumps(row), flush=True)
        rows.append(row)
    name = f"limits_{args.device}_{args.backbone}"
    _save(name, {"meta": {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                          "threads": args.threads}, "rows": rows})


# -- share: several cells at once on one device (joblib workers) --------------------------------------------


def share(args: argparse.Namespace) -> None:
    """The same small grid as a sweep with 1, 2, ... joblib workers sharing the device (one GPU, or the CPU)."""
    grid = [f"method={args.methods}", f"dataset={args.dataset}", f"shots={args.shots}", f"seed={args.seeds}",
            f"backbone={args.backbone}", *DEMO_SCALE]
    device = ["trainer=gpu"] if args.device == "cuda" else []
    rows = []
    for jobs in (int(j) for j in args.jobs.split(",")):
        with tempfile.TemporaryDirectory(prefix="pb_share_") as tmp:
            env = {**os.environ, **ENV, "PROMPTBENCH_CACHE": str(Path(tmp) / "cache")}
            cmd = [sys.executable, "-m", "promptbench.cli", "sweep", "experiment=demo", *grid, *device,
                   f"hydra.launcher.n_jobs={jobs}", f"trainer.threads={args.threads}", f"paths.output_dir={tmp}"]
            load = _load()
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            done = sum(json.loads(f.read_text()).get("status") == "ok" for f in Path(tmp).rglob("result.json"))
        rows.append({"device": args.device, "backbone": args.backbone, "workers": jobs, "threads": args.threads,
                     "cells": done, "exit": proc.returncode, "wall_s": round(wall, 1),
                     "cells_per_min": round(60 * done / wall, 1), "load": load})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["cells_per_min"] or None
    for row in rows:
        row["gain"] = round(row["cells_per_min"] / base, 2) if base else None
    _save(f"share_{args.device}_{args.backbone}", {"meta": {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                            "cpus": os.cpu_count(), "grid": grid}, "rows": rows})


# -- report ------------------------------------------------------------------------------------------------


# -- startup: the fixed work every command pays, two trees alternating ---------------------------------------------
STARTUP_COMMANDS = {"import promptbench.config": ["-c", "import promptbench.config"],
                    "promptbench --help": ["-m", "promptbench.cli", "--help"]}


def _timed(tree: Path, argv: list[str], timeout: int = 3600) -> tuple[float, int]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - start, done.returncode


def startup(args: argparse.Namespace) -> None:
    trees = {"before": Path(args.before).resolve(), "after": REPO}
    rows = []
    for name, argv in STARTUP_COMMANDS.items():
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeat):  # alternating, so drifting load hits both sides alike
            for side, tree in trees.items():
                seconds, rc = _timed(tree, argv)
                if rc != 0:
                    raise SystemExit(f"benchmark startup: {name} failed in {tree} (exit {rc})")
                times[side].append(seconds)
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        rows.append({"what": name, "before_s": round(b, 3), "after_s": round(a, 3), "after/before": round(a / b, 3),
                     "runs": args.repeat, "load": _load()})
    if args.suite:
        for side, tree in trees.items():
            seconds, rc = _timed(tree, ["-m", "pytest", "-q"])
            rows.append({"what": f"test suite ({side})", side + "_s": round(seconds, 1), "exit": rc, "load": _load()})
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "before": _git_sha(trees["before"]), "after": _git_sha(REPO), "python": platform.python_version()}
    data = {"meta": meta, "rows": rows}
    _save("startup", data)


def _save(name: str, data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=1))
    report(None)


def _fmt(value) -> str:
    return "–" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def _linear_probe_section(path: Path) -> list[str]:
    """docs/bench_data/linear_probe.json (scripts/compare_linear_probe.py): the old and new fitter per cell."""
    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["rows"]
    if not rows:
        return []
    n = len(rows)

    def total(side: str, key: str) -> float:
        return sum(r[side][key] for r in rows)

    same_c = sum(r["old"]["c"] == r["new"]["c"] for r in rows)
    same_acc = sum(r["old"]["test_acc"] == r["new"]["test_acc"] for r in rows)
    tight = {side: sum(r[side]["c"] == r["tight"]["c"] for r in rows) for side in ("old", "new", "new_cold",
                                                                                 "new_tol_1e-6")}
    ratios = sorted(r["e2e_old"]["wall_s"] / r["e2e_new"]["wall_s"] for r in rows)
    wall = {side: sum(r[f"e2e_{side}"]["wall_s"] for r in rows) for side in ("old", "new")}
    train = {side: sum(r[f"e2e_{side}"]["train_s"] for r in rows) for side in ("old", "new")}
    checks = sum(all(r["checks"].values()) for r in rows)
    lines = [f"## Linear probe: old fitter (torch L-BFGS) vs new (SciPy L-BFGS-B) ({path.name})", "",
             f"{meta['when']}, {meta['cpus']} CPUs; before = `{meta['before']}`, after = `{meta['after']}`. "
             "`python scripts/compare_linear_probe.py`: the demo's linear-probe cells (`experiment=demo`, "
             "medclip_tiny), each (1) as `promptbench train` in both trees back to back (wall/train s, end to end) "
             "and (2) both searches on the very same features (C, accuracies, capped fits, fit seconds: the fastest "
             f"of {rows[0]['repeats']} alternating repeats). Tight = this tree's search with one cold fit per C at "
             "gtol 1e-10: the protocol's answer without the tolerance's slack. Load average before each cell is "
             "shown.", "",
             f"- identical chosen C: **{same_c}/{n}**; identical test accuracy: **{same_acc}/{n}**; chosen C equal to "
             f"the tight search's: old {tight['old']}/{n}, new {tight['new']}/{n}, new without warm starts "
             f"{tight['new_cold']}/{n}, new at gtol 1e-6 {tight['new_tol_1e-6']}/{n} (searches: "
             f"{sum(r['new_tol_1e-6']['search_s'] for r in rows):.1f} s in all; tight "
             f"{sum(r['tight']['search_s'] for r in rows):.1f} s)",
             f"- fits stopped at max_iter: old {int(total('old', 'capped_fits'))} of {int(total('old', 'fits'))}, "
             f"new {int(total('new', 'capped_fits'))} of {int(total('new', 'fits'))}; the tight search's own fits "
             f"stopped at their cap (100000 iterations) in {sum(r['tight']['capped_fits'] > 0 for r in rows)} cells "
             f"(largest gradient left {max(r['tight']['max_grad'] for r in rows):.1e})",
             f"- summed fit time: old {total('old', 'fit_s'):.2f} s, new {total('new', 'fit_s'):.2f} s "
             f"(**{total('old', 'fit_s') / max(total('new', 'fit_s'), 1e-9):.0f}x**); summed cell wall_s: old "
             f"{wall['old']:.1f}, new {wall['new']:.1f} ({wall['old'] / wall['new']:.2f}x; per cell old/new: median "
             f"{ratios[n // 2]:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}); train_s (features + fits): "
             f"old {train['old']:.1f}, new {train['new']:.1f} ({train['old'] / max(train['new'], 1e-9):.1f}x)",
             f"- end-to-end test accuracy equals the same-features one on both sides (and the new C the recorded "
             f"`fit_info.c`): {checks}/{n} cells", "",
             "| dataset | K | seed | C old | C new | C tight | val acc old | new | test acc old | new | tight | "
             "capped old | new | fit s old | new | max abs Δlogit | wall s old | new | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, w = r["old"], r["new"]
        lines.append(f"| {r['dataset']} | {r['shots']} | {r['seed']} | {o['c']:.4g} | {w['c']:.4g} | "
                     f"{r['tight']['c']:.4g} | {o['val_acc']:.3f} | {w['val_acc']:.3f} | {o['test_acc']:.3f} | "
                     f"{w['test_acc']:.3f} | {r['tight']['test_acc']:.3f} | {o['capped_fits']}/{o['fits']} | "
                     f"{w['capped_fits']}/{w['fits']} | {o['fit_s']:.3f} | {w['fit_s']:.3f} | "
                     f"{r['max_abs_logit_diff']:.2g} | {r['e2e_old']['wall_s']:.2f} | {r['e2e_new']['wall_s']:.2f} | "
                     f"{r['load_before']} |")
    lines += ["", "Every cell whose C or test accuracy differs:", ""]
    lines += [f"- {r['dataset']} K={r['shots']} seed={r['seed']}: {r['explanation']}" for r in rows
              if r["old"]["c"] != r["new"]["c"] or r["old"]["test_acc"] != r["new"]["test_acc"]]
    return [*lines, ""]


def report(_: argparse.Namespace | None) -> None:
    lines = ["# Benchmarks", "", "Written by `scripts/benchmark.py` (see its docstring); numbers, not timed tests.",
             "Every table says when and under what load it was measured: on a shared machine only rows measured",
             "back to back are comparable.", ""]
    demo_file = OUT / "demo.json"
    if demo_file.is_file():
        rows = json.loads(demo_file.read_text())["rows"]
        lines += ["## The CPU demo, start to finish", "",
                  "`python scripts/benchmark.py demo [--tree <checkout>] [--hide psutil]`: `promptbench demo` (every "
                  "method x 3 demo datasets x K 1/4/16 x seeds 1-3, 2 joblib workers) into a fresh folder, one tree's "
                  "own code in this environment; `hidden psutil`: run as if psutil were not installed (before it was a "
                  "dependency). Rows measured one after the other are comparable; the load average before each run is "
                  "shown.", "",
                  "| tree | hidden | cells | wall min | demo's own min | exit | load before | when |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['tree']} | {r['hidden'] or '–'} | {r['cells']} | {_fmt(r['wall_min'])} | "
                  f"{_fmt(r['demo_min'])} | {r['exit']} | {r['load_before']} | {r['when']} |" for r in rows]
        lines.append("")
    for cells_file in sorted(OUT.glob("cells*.json")):
        data = json.loads(cells_file.read_text())
        meta = data["meta"]
        lines += [f"## Cell wall time per method, before and after (CPU; {cells_file.name})", "",
                  f"{meta['when']}, {meta['cpus']} CPUs, `trainer.threads=1`, one process per cell, fresh output "
                  f"folder (cold feature store); settings `{' '.join(meta['settings'])}`; before = `{meta['before']}`. "
                  "`wall_s` is the cell's own time from `result.json` (data, method, fit, test), `process` adds "
                  "interpreter start and imports. Load average (1/5/15 min) before each pair is shown.", "",
                  "| cell | before wall_s | after wall_s | speed-up | before process_s | after process_s | "
                  "acc before | acc after | load |", "|---|---|---|---|---|---|---|---|---|"]
        for row in data["rows"]:
            b, a = row.get("before") or {}, row["after"]
            speed = (b.get("wall_s") / a["wall_s"]) if b.get("wall_s") and a.get("wall_s") else None
            lines.append(f"| {row['cell']} | {_fmt(b.get('wall_s'))} | {_fmt(a.get('wall_s'))} | {_fmt(speed)} | "
                         f"{_fmt(b.get('process_s'))} | {_fmt(a.get('process_s'))} | {_fmt(b.get('acc'))} | "
                         f"{_fmt(a.get('acc'))} | {row['load_before']} |")
        lines.append("")
        pair = {r["cell"]: r for r in data["rows"]}
        if "coop@100ep" in pair and "zeroshot@ratio" in pair:
            for side in ("before", "after"):
                c, z = pair["coop@100ep"].get(side) or {}, pair["zeroshot@ratio"].get(side) or {}
                if c.get("wall_s") and z.get("wall_s"):
                    lines.append(f"- CoOp (16 shots, 100 epochs) / zero-shot cell wall time on {meta['settings'][0]}, "
                                 f"{side}: {c['wall_s']:.2f} / {z['wall_s']:.2f} = **{c['wall_s'] / z['wall_s']:.1f}**")
        lines.append("")
    for path in sorted(OUT.glob("limits_*.json")):
        data = json.loads(path.read_text())
        lines += [f"## CoOp cell vs plain loop vs physical limit ({path.stem[7:]})", "",
                  f"{data['meta']['when']}, threads={data['meta']['threads']}. CoOp 16 shots, 100 epochs, batch 32; "
                  "`coop` cold store, `coop_warm` a second cell with the store filled, `coop_nofeatures` "
                  "`features.enabled=false` (images through the tower every step).", ""]
        keys = [k for k in data["rows"][0] if k not in ("load", "when")] + ["load", "when"]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in data["rows"]]
        lines.append("")
    for path in sorted(OUT.glob("share_*.json")):
        data = json.loads(path.read_text())
        lines += [f"## Several cells at once on one device ({path.stem[6:]})", "",
                  f"{data['meta']['when']}, {data['meta']['cpus']} CPUs. `python scripts/benchmark.py share`: the grid "
                  f"`{' '.join(data['meta']['grid'])}` as one `promptbench sweep` (fresh folder and feature store each "
                  "time) with 1, 2, ... joblib workers on one device; gain = cells per minute over one worker.", ""]
        keys = [k for k in data["rows"][0] if k != "load"] + ["load"]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in data["rows"]]
        lines.append("")
    start_file = OUT / "startup.json"
    if start_file.is_file():
        data = json.loads(start_file.read_text())
        meta = data["meta"]
        lines += ["## Start-up and suite, before and after", "",
                  f"{meta['when']}, {meta['cpus']} CPUs, Python {meta['python']}; before = `{meta['before']}`, after = "
                  f"`{meta['after']}`. `python scripts/benchmark.py startup --before <checkout> [--suite]`: each "
                  "command in a fresh interpreter, the two trees alternating, median of the runs; the suite is the "
                  "README's test command run once per tree, one after the other.", ""]
        keys = sorted({k for r in data["rows"] for k in r}, key=["what", "before_s", "after_s", "after/before", "runs",
                                                                  "exit", "load"].index)
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in data["rows"]]
        lines.append("")
    if (OUT / "linear_probe.json").is_file():
        lines += _linear_probe_section(OUT / "linear_probe.json")
    gpu = [p for p in OUT.glob("limits_cuda_*.json")]
    if not gpu:
        lines += ["## GPU", "", "Not measured yet (no GPU was available). On a CUDA machine run:", "",
                  "    python scripts/benchmark.py limits --device cuda --backbone biomedclip_arch "
                  "--precision bf16-mixed,32-true", "",
                  "It appends the same table for the GPU (cells through the engine, plain loop, limit) to this file. "
                  "Several cells sharing the one GPU (the joblib launcher's workers, `trainer=gpu`):", "",
                  "    python scripts/benchmark.py share --device cuda --backbone biomedclip_arch --jobs 1,2,4,8", ""]
    (REPO / "docs" / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {REPO / 'docs' / 'benchmarks.md'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cells")
    p.add_argument("--before", default=None, help="another checkout to time first (its own code)")
    p.add_argument("--methods", default="all")
    p.add_argument("--dataset", default="demo_btmri")
    p.add_argument("--backbone", default="medclip_tiny")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--full-epochs", action="store_true", help="methods' own epochs instead of the demo's 8")
    p.add_argument("--append", action="store_true", help="keep rows of an earlier run (outputs/bench/cells.json)")
    p.add_argument("--no-ratio", dest="ratio", action="store_false", help="skip the CoOp@100 / zero-shot pair")
    p.add_argument("--name", default="cells", help="data file docs/bench_data/<name>.json (one section each)")
    p.set_defaults(func=cells)
    p = sub.add_parser("limits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="medclip_tiny")
    p.add_argument("--dataset", default="demo_btmri")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=limits)
    p = sub.add_parser("share")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (adds trainer=gpu; the workers share one GPU)")
    p.add_argument("--backbone", default="medclip_tiny")
    p.add_argument("--methods", default="zeroshot,coop,cocoop,vpt_shallow")
    p.add_argument("--dataset", default="demo_btmri,demo_ctkidney")
    p.add_argument("--shots", default="1,16")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--jobs", default="1,2", help="worker counts to compare (the first is the baseline)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.set_defaults(func=share)
    p = sub.add_parser("demo")
    p.add_argument("--tree", default=None, help="checkout whose code runs the demo (default: this one)")
    p.add_argument("--out", default=None, help="keep the demo's outputs in this empty folder (e.g. outputs/ for "
                   "`make readme`); default: a temporary folder")
    p.add_argument("--hide", action="append", default=[], help="module to make unimportable (e.g. psutil)")
    p.set_defaults(func=demo)
    p = sub.add_parser("startup")
    p.add_argument("--before", required=True, help="the other checkout (its own code, this environment)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--suite", action="store_true", help="also the test suite once per tree (minutes)")
    p.set_defaults(func=startup)
    p = sub.add_parser("report")
    p.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
