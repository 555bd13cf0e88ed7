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
    python scripts/benchmark.py startup --before /path/to/old/checkout [--repeat 5] [--suite] [--only TEXT]
    python scripts/benchmark.py report          # (re)write docs/benchmarks.md from docs/bench_data/*.json
    # issue 25, one GPU run (scripts/gpu_benchmark.sh runs these with limits and share; --dry: the same on the CPU)
    python scripts/benchmark.py steps --device cuda --backbone biomedclip_arch [--methods coop,...|all] [--append]
    python scripts/benchmark.py plan [--grid "experiment=few_shot"]     # the grid's budgets per (method, dataset)
    python scripts/benchmark.py project --device cuda --backbone biomedclip_arch   # the grid's GPU-hours
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
``steps`` times one training step of each method through its real class (the cell's config, datamodule,
``prepare``, optimiser and autocast; the demo set's first batch repeated): wall ms per step, GPU-busy ms per step
(torch.profiler's GPU activities) and peak memory, plus the frozen tower's forward. ``project`` costs every cell of
a sweep (``plan``: its composed budgets) from those numbers, ``limits``' per-cell overhead and ``share``'s best
worker count.
The raw numbers live in ``docs/bench_data/`` (committed), so ``report`` rewrites the page anywhere
(``PB_BENCH_DATA`` / ``PB_BENCH_REPORT``: another data folder and page).
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
# PB_BENCH_DATA / PB_BENCH_REPORT: another data folder and page (scripts/gpu_benchmark.sh --dry: a temp folder)
OUT = Path(os.environ.get("PB_BENCH_DATA") or REPO / "docs" / "bench_data")
REPORT = Path(os.environ.get("PB_BENCH_REPORT") or REPO / "docs" / "benchmarks.md")
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


def limits_one(backbone_name: str, device_name: str, precision: str, dataset: str, threads: int | None,
               epochs: int | None = None, workers: int | None = None) -> dict:
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
               "logger=none", "trainer.enable_progress_bar=false", *([f"trainer.threads={threads}"] if threads else []),
               *([f"trainer.num_workers={workers}"] if workers is not None else [])]  # conf/trainer/gpu.yaml: 8
    row: dict = {"backbone": backbone_name, "device": device_name, "precision": precision}
    coop = ["method=coop", *([f"method.epochs={epochs}"] if epochs else [])]  # --epochs: a quick (dry) run
    with tempfile.TemporaryDirectory(prefix="pb_limits_") as tmp:
        common = [f"backbone={backbone_name}", f"dataset={dataset}", "shots=16", "seed=1", *trainer]
        # (a) the cells through the engine: zero-shot and CoOp, cold store, then CoOp again with a warm store
        run(compose([*common, "method=zeroshot", f"paths.output_dir={Path(tmp) / 'warmup'}"]))  # loads the backbone
        for label, extra in (("zeroshot", ["method=zeroshot"]), ("coop", coop), ("coop_warm", coop),
                             ("coop_nofeatures", [*coop, "features.enabled=false"])):
            if label != "coop_warm":
                memory_cache.clear()
            out = Path(tmp) / ("coop" if label == "coop_warm" else label)
            result = run(compose([*common, *extra, f"paths.output_dir={out}"]))
            row[f"{label}_cell_s"] = result["timing"]["wall_s"]
        row["ratio_coop_zeroshot"] = round(row["coop_cell_s"] / row["zeroshot_cell_s"], 2)
        # (b) a plain PyTorch loop doing the same work
        cfg = compose([*common, *coop, f"paths.output_dir={Path(tmp) / 'plain'}"])
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
        loaders = int(cfg.trainer.num_workers)  # the same image-loader workers as the cells
        views = encode_items(backbone, train_set, [(i, e) for e in range(epochs) for i in range(n_train)],
                             precision=precision, num_workers=loaders).to(device).view(epochs, n_train, -1)
        test_feats = encode_items(backbone, test_set, range(len(test_set)), precision=precision,
                                  num_workers=loaders).to(device)
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
        row["epochs"] = epochs
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
        row = limits_one(args.backbone, args.device, precision, args.dataset, args.threads, args.epochs,
                         args.workers)
        row["load"] = _load()
        print(json.dumps(row), flush=True)
        rows.append(row)
        name = f"limits_{args.device}_{args.backbone}"  # after every precision: a run cut short keeps its rows
        _save(name, {"meta": {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                              "threads": args.threads, "workers": args.workers}, "rows": rows})


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
        base = rows[0]["cells_per_min"] or None  # saved after every worker count: a run cut short keeps its rows
        for row in rows:
            row["gain"] = round(row["cells_per_min"] / base, 2) if base else None
        _save(f"share_{args.device}_{args.backbone}", {"meta": {"when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                      time.gmtime()),
                                                                "cpus": os.cpu_count(), "grid": grid}, "rows": rows})


# -- steps / plan / project: one GPU through the device tool (issue 25; scripts/gpu_benchmark.sh) -------------

STEP_METHODS = "coop,vpt_shallow,maple,biomed_dpt"
#: methods whose step was not timed cost as much as these (scaled to their batch / class count), marked "proxy"
PROXY = {False: "coop", True: "vpt_shallow"}  # needs_image_tower -> proxy
#: issue 25's targets (reported, never asserted)
TARGETS = {"coop_cell_s": 5.0, "busy_text_step": 0.5, "grid_gpu_hours": 3.0}
#: promptbench's runtime dependencies the nvidia-h200 image lacks (/work/.library/device/KINDS.md), as wheels
#: pinned by requirements-lock.txt; the last one has no wheel on PyPI and is built here (pure Python)
WHEELS = ["open-clip-torch", "ftfy", "wcwidth", "hydra-core", "omegaconf", "hydra-joblib-launcher"]
SDIST_WHEELS = ["antlr4-python3-runtime"]
PIP_PLATFORM = ("--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 "
                "--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "
                "--platform manylinux1_x86_64")
DEVICE_RUN = 'run(command="bash scripts/gpu_benchmark.sh", carry=[".whl"], timeout_s=540)'


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _read(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pins(names: list[str]) -> list[str]:
    lock = {line.split("==")[0].lower(): line.strip() for line in (REPO / "requirements-lock.txt").read_text()
            .splitlines() if "==" in line and not line.startswith("#")}
    return [lock.get(n.lower(), f"{n}==?") for n in names]


def _wall_ms(fn, n: int, rounds: int, sync) -> float:
    """Median over ``rounds`` of the wall time of ``n`` back-to-back calls, per call (launches overlap kernels)."""
    times = []
    for _ in range(max(1, rounds)):
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times) * 1000


def _busy_ms(fn, n: int, device) -> tuple[float | None, float | None, str | None]:
    """GPU-busy ms per call of ``fn`` under torch.profiler: the summed durations of the GPU activities (kernels,
    copies, memsets) Kineto recorded, / n; plus the profiler table's total self device time / n as a cross-check.
    (None, None, None) off CUDA; (None, None, error) when the profiler cannot run."""
    if device.type != "cuda":
        return None, None, None
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
        raw = prof.profiler.kineto_results.events()
        busy_us = sum(e.duration_ns() for e in raw if e.device_type() == DeviceType.CUDA) / 1000
        table_us = sum(float(getattr(e, "self_device_time_total", 0) or 0) for e in prof.key_averages())
        return busy_us / 1000 / n, table_us / 1000 / n, None
    except Exception as err:  # noqa: BLE001 - a profiler that cannot start leaves the wall times standing
        return None, None, f"{type(err).__name__}: {err}"[:200]


def _busy(row: dict, wall: float, fn, n: int, device) -> None:
    busy, table, err = _busy_ms(fn, n, device)
    row.update(busy_ms=None if busy is None else round(busy, 3),
               busy_frac=None if busy is None else round(busy / wall, 3))
    if table is not None:
        row["busy_table_ms"] = round(table, 3)  # the profiler table's self device time: should agree with busy_ms
    if err:
        row["profiler_error"] = err


def _step_cfg(method: str, backbone: str, device, precision: str, dataset: str, tmp: Path):
    from promptbench.config import compose

    return compose([f"method={method}", f"backbone={backbone}", f"dataset={dataset}", "shots=16", "seed=1",
                    "logger=none", "trainer.accelerator=" + ("gpu" if device.type == "cuda" else "cpu"),
                    f"trainer.precision={precision}", "trainer.num_workers=0", "trainer.enable_progress_bar=false",
                    "features.disk=false", f"paths.output_dir={tmp}"])


def _memory(device, row: dict) -> None:
    import torch

    if device.type == "cuda":
        row["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def forward_one(backbone_name: str, device_name: str, precision: str, dataset: str, batch: int, repeat: int,
                rounds: int, tmp: Path) -> dict:
    """The frozen image tower's forward at ``batch`` random images (what filling the feature store costs)."""
    import torch

    from promptbench.engine.run import backbone_for
    from promptbench.features import autocast_for

    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = _step_cfg("zeroshot", backbone_name, device, precision, dataset, tmp)
    torch.set_float32_matmul_precision("high" if cfg.trainer.get("tf32") else "highest")  # as engine.run
    backbone = backbone_for(cfg).to(device)
    size = int(cfg.backbone.get("image_size") or backbone.preprocessing.image_size)
    x = torch.randn(batch, 3, size, size, device=device)
    amp = autocast_for(precision, device)

    def fwd() -> None:
        with torch.no_grad(), amp:
            backbone.encode_image(x)

    fwd()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall = _wall_ms(fwd, repeat, rounds, sync)
    row = {"method": "encode_image", "precision": precision, "batch": batch, "classes": None, "tower": True,
           "input": list(x.shape), "wall_ms": round(wall, 3), "ms_per_image": round(wall / batch, 4), "status": "ok"}
    _memory(device, row)  # the timed passes' peak, before the profiled pass
    _busy(row, wall, fwd, repeat, device)
    return row


def steps_one(method_name: str, backbone_name: str, device_name: str, precision: str, dataset: str, warmup: int,
              repeat: int, rounds: int, tmp: Path) -> dict:
    """One training step of ``method_name`` through its real class, as the engine runs it: the cell's config,
    datamodule, ``prepare``, the method's own optimiser, ``training_mode`` + the precision's autocast around
    ``training_loss``, backward and the optimiser step; one real first batch of the 16-shot demo set (features for
    methods without the tower in their graph, images otherwise), repeated."""
    import torch

    from promptbench.engine.run import _budget, _build_datamodule, backbone_for
    from promptbench.features import autocast_for, wrap_datamodule
    from promptbench.methods import build_method, check_method_config

    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = _step_cfg(method_name, backbone_name, device, precision, dataset, tmp)
    torch.set_float32_matmul_precision("high" if cfg.trainer.get("tf32") else "highest")  # as engine.run
    typed = check_method_config(cfg.method)
    backbone = backbone_for(cfg).to(device)
    dm = _build_datamodule(cfg, backbone, tmp, typed)
    dm.setup("fit")
    torch.manual_seed(1)
    method = build_method(cfg.method, backbone, dm.classnames, cfg.dataset).to(device)
    row: dict = {"method": method_name, "precision": precision, "batch": int(typed.batch_size),
                 "classes": len(dm.classnames), "tower": bool(method.needs_image_tower)}
    if not method.trains:
        return {**row, "status": "does not train"}
    epochs, max_steps = _budget(method, dm, 16)
    data = wrap_datamodule(cfg, method, backbone, dm, 1)  # features of epoch 0's views only: the step is the same
    method.prepare(data)
    per_epoch = max(1, len(dm.train_dataloader()))
    opt = method.configure_optimization(cfg.method.optim, max_epochs=max(1, epochs),
                                        total_steps=max_steps or max(1, epochs) * per_epoch)
    if not opt:
        return {**row, "status": "no learnable parameters"}
    optimizer = opt["optimizer"]
    method.train()
    method.on_train_start()
    batch = next(iter(data.train_dataloader()))
    x, y = batch["image"].to(device), batch["label"].to(device)
    amp = autocast_for(precision, device)

    def step() -> None:
        with method.training_mode(), amp:
            loss = method.training_loss(x, y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(max(1, warmup)):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall = _wall_ms(step, repeat, rounds, sync)
    row.update(batch=int(x.shape[0]), input=list(x.shape), trainable=method.num_trainable(), wall_ms=round(wall, 3),
               status="ok")
    _memory(device, row)  # the timed steps' peak, before the profiled pass
    _busy(row, wall, step, repeat, device)
    return row


def steps(args: argparse.Namespace) -> None:
    """Per-step wall ms, GPU-busy ms and peak memory of each method x precision, plus the tower's forward."""
    import torch

    sys.path.insert(0, str(REPO))
    from promptbench.methods import load_all

    registry = load_all()
    listed = args.methods.split(",")  # "all": every other method that trains, after the listed ones
    methods = [m for m in listed if m != "all"]
    if "all" in listed:
        methods += [m for m in sorted(registry) if registry[m].trains and m not in methods]
    name = args.name or f"steps_{args.device}_{args.backbone}"
    old = _read(name) if args.append else None
    rows = old["rows"] if old else []
    done = {(r["method"], r["precision"]) for r in rows if r.get("status") == "ok"}
    cuda = torch.device(args.device).type == "cuda"
    meta = {"when": _now(), "cpus": os.cpu_count(), "device": torch.cuda.get_device_name(0) if cuda else
            platform.processor() or platform.machine(), "torch": torch.__version__, "backbone": args.backbone,
            "dataset": args.dataset, "warmup": args.warmup, "repeat": args.repeat, "rounds": args.rounds}
    precisions = args.precision.split(",")
    work = [("encode_image", p) for p in precisions] + [(m, p) for m in methods for p in precisions]
    with tempfile.TemporaryDirectory(prefix="pb_steps_") as tmp:
        for i, (method, precision) in enumerate(w for w in work if w not in done):
            t0 = time.perf_counter()
            try:
                if method == "encode_image":
                    row = forward_one(args.backbone, args.device, precision, args.dataset, args.forward_batch,
                                      args.repeat, args.rounds, Path(tmp) / f"f{i}")
                else:
                    row = steps_one(method, args.backbone, args.device, precision, args.dataset, args.warmup,
                                    args.repeat, args.rounds, Path(tmp) / f"s{i}")
            except Exception as err:  # noqa: BLE001 - one method failing leaves the others' rows
                row = {"method": method, "precision": precision, "status": f"failed: {type(err).__name__}: {err}"[:300]}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            if cuda:
                torch.cuda.empty_cache()
            rows = [r for r in rows if (r["method"], r["precision"]) != (method, precision)] + [row]
            print(json.dumps(row), flush=True)
            _save(name, {"meta": {**(old or {}).get("meta", {}), **meta}, "rows": rows})  # after every row


# -- the grid's plan: what each (method, dataset) of a sweep trains, from its composed config

def grid_plan(overrides: list[str]) -> dict:
    """Per (method, dataset) of the sweep ``overrides`` (e.g. ``experiment=few_shot``): its cells (shots, seed),
    the composed method's budget keys and the dataset's class count and split sizes (one composition each; the
    configs do not depend on shots or seed)."""
    sys.path.insert(0, str(REPO))
    from promptbench.config import compose
    from promptbench.methods import get_method
    from promptbench.sweep.grid import grid

    cells = grid(overrides)
    groups: dict[tuple[str, str], list[list[str]]] = {}
    for cell in cells:
        kv = dict(o.split("=", 1) for o in cell if "=" in o)
        groups.setdefault((kv["method"], kv["dataset"]), []).append(cell)
    entries = []
    for (method, dataset), group in groups.items():
        cfg = compose(group[0])
        m, cls = cfg.method, get_method(method)
        kvs = [dict(o.split("=", 1) for o in c if "=" in o) for c in group]
        sizes = cfg.dataset.get("split_sizes") or {}
        entries.append({
            "method": method, "dataset": dataset, "cells": [[int(k["shots"]), int(k["seed"])] for k in kvs],
            "epochs": int(m.get("epochs") or 0), "batch": int(m.get("batch_size") or 32),
            "drop_last": bool(m.get("drop_last", True)), "iters_per_shot": m.get("iters_per_shot"),
            "max_shots": m.get("max_shots"), "n_views": m.get("n_views"), "tta_steps": m.get("tta_steps"),
            "trains": bool(cls.trains), "tower": bool(cls.needs_image_tower),
            "grad_at_test": bool(cls.needs_grad_at_test),
            "classes": len(cfg.dataset.classnames), "test": int(sizes.get("test") or 0),
            "train": int(sizes.get("train") or 0), "precision": str(cfg.trainer.precision)})
    return {"meta": {"when": _now(), "overrides": list(overrides), "cells": len(cells)}, "entries": entries}


def plan(args: argparse.Namespace) -> None:
    data = grid_plan(args.grid.split())
    _save(f"grid_plan_{args.name}", data, write_report=False)  # runs beside the GPU parts: no report here
    print(f"grid plan {args.name}: {data['meta']['cells']} cells, {len(data['entries'])} (method, dataset) pairs")


# -- the projection: the grid's GPU-hours from measured step / forward / cell costs and workers

def _best_workers(share_data: dict | None) -> tuple[int, float, str]:
    rows = [r for r in (share_data or {}).get("rows", []) if r.get("exit") == 0 and r.get("cells")]
    if not rows:
        return 1, 1.0, "no share measurement: 1 worker"
    base = next((r for r in rows if r["workers"] == 1), rows[0])
    best = max(rows, key=lambda r: r["cells_per_min"])
    return best["workers"], best["cells_per_min"] / base["cells_per_min"], "measured (share)"


def project_grid(plan_data: dict, step_rows: dict[str, dict], ms_per_image: float, overhead_s: float,
                 gain: float) -> dict:
    """Seconds of device work per method over the plan's cells (see the report's projection section)."""
    def step_ms(e: dict, method: str, batch: int) -> tuple[float | None, str]:
        r, source = step_rows.get(method), "measured"
        if r is None:
            proxy = PROXY[e["tower"]]
            r, source = step_rows.get(proxy), f"proxy {proxy}"
        if r is None or not r.get("batch"):
            return None, "not measured"
        scale = batch / r["batch"] if e["tower"] else e["classes"] / r["classes"]
        return r["wall_ms"] * scale, source

    per: dict[str, dict] = {}
    shared_views: dict[tuple, int] = {}  # (dataset, K, seed) -> training views (feature-level methods share them)
    shared_eval: dict[tuple, int] = {}   # dataset -> test images; (dataset, K, seed) -> val images
    missing = set()
    for e in plan_data["entries"]:
        out = per.setdefault(e["method"], {"method": e["method"], "cells": 0, "steps": 0, "train_s": 0.0,
                                           "eval_s": 0.0, "source": None, "tower": e["tower"]})
        c = e["classes"]
        for k, seed in e["cells"]:
            out["cells"] += 1
            n_train = min(k * c, e["train"] or k * c)
            n_val = min(k, 4) * c if e["trains"] else 0
            if e["grad_at_test"]:  # test-time tuning: n_views forwards + tta steps (a text step) per test image
                tta, source = step_ms({**e, "tower": False}, PROXY[False], 1)
                if tta is None:
                    missing.add(e["method"])
                    continue
                views = int(e["n_views"] or 64)
                out["eval_s"] += e["test"] * (views * ms_per_image + int(e["tta_steps"] or 1) * tta) / 1000
                out["source"] = f"views + tta step as {PROXY[False]}" + (" (proxy)" if "proxy" in source else "")
                continue
            if e["trains"]:
                batch = min(e["batch"], n_train)
                if e["iters_per_shot"]:
                    n_steps = int(e["iters_per_shot"]) * min(k, int(e["max_shots"] or k))
                else:
                    per_epoch = n_train // e["batch"] if (e["drop_last"] and n_train >= e["batch"]) else -(
                        -n_train // e["batch"])
                    n_steps = e["epochs"] * max(1, per_epoch)
                ms, source = step_ms(e, e["method"], batch)
                if ms is None:
                    missing.add(e["method"])
                    continue
                out["steps"] += n_steps
                out["train_s"] += n_steps * ms / 1000
                out["source"] = source
            if e["tower"]:  # evaluation through the (prompted) tower: every test and val image, every cell
                out["eval_s"] += (e["test"] + n_val) * ms_per_image / 1000
            else:  # the feature store: views once per (dataset, K, seed), test once per dataset
                epochs = e["epochs"] if e["trains"] else 1
                key = (e["dataset"], k, seed)
                shared_views[key] = max(shared_views.get(key, 0), max(1, epochs) * n_train)
                shared_eval[key] = max(shared_eval.get(key, 0), n_val)
                shared_eval[(e["dataset"],)] = e["test"]
                out["source"] = out["source"] or "feature store"
    rows = sorted(per.values(), key=lambda r: -(r["train_s"] + r["eval_s"]))
    shared_s = (sum(shared_views.values()) + sum(shared_eval.values())) * ms_per_image / 1000
    cells = sum(r["cells"] for r in rows)
    work_s = sum(r["train_s"] + r["eval_s"] for r in rows) + shared_s
    for r in rows:
        r["overhead_s"] = r["cells"] * overhead_s
        r["gpu_h"] = round((r["train_s"] + r["eval_s"] + r["overhead_s"]) / 3600, 3)
        r["train_s"], r["eval_s"], r["overhead_s"] = (round(r[k], 1) for k in ("train_s", "eval_s", "overhead_s"))
    one_worker_h = (work_s + cells * overhead_s) / 3600
    return {"rows": rows, "shared_features_s": round(shared_s, 1), "cells": cells,
            "work_h": round(work_s / 3600, 3), "overhead_h": round(cells * overhead_s / 3600, 3),
            "one_worker_h": round(one_worker_h, 3), "projected_h": round(one_worker_h / gain, 3),
            "missing": sorted(missing)}


def project(args: argparse.Namespace) -> None:
    suffix = f"{args.device}_{args.backbone}"
    overrides = args.grid.split()
    plan_data = _read(f"grid_plan_{args.plan}")
    if not plan_data or plan_data["meta"]["overrides"] != overrides:
        plan_data = grid_plan(overrides)
        _save(f"grid_plan_{args.plan}", plan_data, write_report=False)
    steps_data, limits_data = _read(f"steps_{suffix}"), _read(f"limits_{suffix}")
    step_rows = {r["method"]: r for r in (steps_data or {}).get("rows", [])
                 if r.get("status") == "ok" and r["precision"] == args.precision}
    limit = next((r for r in (limits_data or {}).get("rows", []) if r["precision"] == args.precision), None)
    if "encode_image" in step_rows:
        ms_per_image, fwd_source = step_rows["encode_image"]["ms_per_image"], "steps encode_image"
    elif limit:
        ms_per_image, fwd_source = limit["ms_per_image_forward"], "limits"
    else:
        raise SystemExit(f"benchmark project: no forward timing for {suffix} {args.precision} (run steps or limits)")
    overhead_s = float(limit["zeroshot_cell_s"]) if limit else 0.0
    workers, gain, gain_source = _best_workers(_read(f"share_{suffix}"))
    result = project_grid(plan_data, step_rows, ms_per_image, overhead_s, gain)
    meta = {"when": _now(), "grid": overrides, "precision": args.precision, "ms_per_image": ms_per_image,
            "ms_per_image_source": fwd_source, "overhead_s": overhead_s,
            "overhead_source": "limits zeroshot_cell_s" if limit else "none (no limits run)",
            "workers": workers, "gain": round(gain, 2), "gain_source": gain_source,
            "steps_when": (steps_data or {}).get("meta", {}).get("when")}
    _save(f"projection_{suffix}", {"meta": meta, **result})
    print(f"projection {suffix}: {result['cells']} cells, {result['one_worker_h']:.2f} h on one worker, "
          f"{result['projected_h']:.2f} h with {workers} workers (gain {gain:.2f})")


# -- the report's GPU section

def _table(rows: list[dict], keys: list[str]) -> list[str]:
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows), ""]


def _targets(suffix: str) -> list[dict]:
    out = []
    limits_data, steps_data, proj = _read(f"limits_{suffix}"), _read(f"steps_{suffix}"), _read(f"projection_{suffix}")
    for r in (limits_data or {}).get("rows", []):
        value, epochs = r.get("coop_cell_s"), r.get("epochs", 100)
        met = "yes" if value is not None and value <= TARGETS["coop_cell_s"] else "no"
        out.append({"target": f"CoOp cell, 16 shots, {epochs} epochs, {r['precision']} (engine, cold store) <= "
                              f"{TARGETS['coop_cell_s']:g} s",
                    "measured": f"{value} s (warm store {r.get('coop_warm_cell_s')} s)",
                    "met": met if epochs == 100 else "– (not the 100-epoch cell)"})
    ok = [r for r in (steps_data or {}).get("rows", []) if r.get("status") == "ok"]
    by = {(r["method"], r["precision"]): r for r in ok}
    for method in dict.fromkeys(r["method"] for r in ok):
        bf, fp = by.get((method, "bf16-mixed")), by.get((method, "32-true"))
        if bf and fp:
            out.append({"target": f"{method}: bf16-mixed at least as fast as 32-true (wall ms/step)",
                        "measured": f"{bf['wall_ms']:.2f} vs {fp['wall_ms']:.2f} ms "
                                    f"({fp['wall_ms'] / bf['wall_ms']:.2f}x)",
                        "met": "yes" if bf["wall_ms"] <= fp["wall_ms"] else "no"})
    for precision in ("bf16-mixed", "32-true"):
        r = by.get((PROXY[False], precision))
        if r:
            frac = r.get("busy_frac")
            out.append({"target": f"GPU busy >= {TARGETS['busy_text_step']:.0%} of a text step (CoOp, {precision})",
                        "measured": "– (no CUDA profile)" if frac is None else f"{frac:.0%} ({r['busy_ms']} of "
                                                                               f"{r['wall_ms']} ms)",
                        "met": "–" if frac is None else ("yes" if frac >= TARGETS["busy_text_step"] else "no")})
    if proj:
        m = proj["meta"]
        out.append({"target": f"few-shot grid ({proj['cells']} cells) <= {TARGETS['grid_gpu_hours']:g} GPU-hours on "
                              f"one device, {m['workers']} workers",
                    "measured": f"{proj['projected_h']:.2f} h ({proj['one_worker_h']:.2f} h on one worker, gain "
                                f"{m['gain']})" + (f"; not projected: {', '.join(proj['missing'])}" if proj["missing"]
                                                   else ""),
                    "met": "yes" if proj["projected_h"] <= TARGETS["grid_gpu_hours"] and not proj["missing"] else "no"})
    return out


def gpu_sections() -> list[str]:
    wheels, built = " ".join(_pins(WHEELS)), " ".join(_pins(SDIST_WHEELS))
    lines = ["## GPU: one device run (issue 25)", "",
             "`scripts/gpu_benchmark.sh` runs every GPU measurement in one go (at most 8 minutes; each part has its "
             "own `timeout`): install the carried wheels into `/tmp/site`; `benchmark.py steps` (one training step "
             f"of {STEP_METHODS.replace(',', ', ')} through their method classes, bf16-mixed and 32-true, plus the "
             "tower's forward; then every other trainable method in bf16-mixed for the projection); `limits` (the "
             "CoOp cell vs plain loop vs physical limit, bf16-mixed then 32-true); `share` (a 16-cell demo grid with "
             "1, 2 and 8 joblib workers on the one GPU); `plan` + `project` (the few-shot grid's GPU-hours); "
             "`report`. `bash scripts/gpu_benchmark.sh --dry` runs the same pipeline on the CPU (medclip_tiny, 1-2 "
             "steps, a tiny grid) into a temporary folder. Issue 25's targets, each shown below with whether it was "
             f"met: the 16-shot 100-epoch CoOp cell <= {TARGETS['coop_cell_s']:g} s; bf16-mixed at least as fast "
             "as 32-true for every method; GPU busy >= "
             f"{TARGETS['busy_text_step']:.0%} of a text step; the projected few-shot grid <= "
             f"{TARGETS['grid_gpu_hours']:g} GPU-hours on one H200 with the measured best number of workers.", "",
             "Once, here (a machine with pip and the network), the wheels the nvidia-h200 image lacks "
             "(the device tool's KINDS.md: it has torch, torchvision, timm, transformers, lightning, torchmetrics, "
             "pandas, ... but not these), pinned by requirements-lock.txt, into `.whl/` (git-ignored; about "
             "2.7 MiB; "
             "torch is on the machine and could not travel anyway: it is far over the 64 MiB a call carries):", "",
             "    bash scripts/gpu_benchmark.sh --wheels     # runs these two commands:",
             f"    python3 -m pip download --no-deps {PIP_PLATFORM} -d .whl {wheels}",
             f"    python3 -m pip wheel --no-deps -w .whl {built}   # sdist only on PyPI: a pure-Python wheel",
             "", "Then one call of the device tool:", "", f"    {DEVICE_RUN}", "",
             "What comes back under `$OUT` (6 files): `gpu_benchmark.log` (versions, nvidia-smi, each part's exit code "
             "and seconds), `steps_cuda_biomedclip_arch.json`, `limits_cuda_biomedclip_arch.json`, "
             "`share_cuda_biomedclip_arch.json`, `projection_cuda_biomedclip_arch.json` and the regenerated "
             "`benchmarks.md`. Copy the JSON files into `docs/bench_data/` and run `python scripts/benchmark.py "
             "report` to get the tables below. The tool sends the checkout its session started in: `.whl/` must be "
             "in that checkout's root.", ""]
    suffixes = sorted({p.stem.split("_", 1)[1] for p in OUT.glob("steps_*.json")} |
                      {p.stem.split("_", 1)[1] for p in OUT.glob("projection_*.json")})
    if not any(s.startswith("cuda") for s in suffixes):
        lines += ["Not measured on a GPU yet.", ""]
    for suffix in suffixes:
        targets = _targets(suffix)
        if targets:
            lines += [f"### Targets ({suffix})", "", "Issue 25's targets, reported (not asserted).", ""]
            lines += _table(targets, ["target", "measured", "met"])
        steps_data = _read(f"steps_{suffix}")
        if steps_data:
            m = steps_data["meta"]
            lines += [f"### One training step per method ({suffix})", "",
                      f"{m['when']}, {m['device']}, torch {m['torch']}, data `{m['dataset']}` (16 shots; the "
                      f"method's own batch, first real batch repeated), {m['warmup']} warm-up steps, then the median "
                      f"over {m['rounds']} rounds of {m['repeat']} back-to-back steps. `wall_ms`: per step; "
                      "`busy_ms`: CUDA kernel time per step (torch.profiler, a separate pass); `busy_frac` = busy / "
                      "wall; `peak_mib`: max allocated during the timed steps (weights included); `encode_image`: "
                      "the frozen tower's forward at `batch` random images.", ""]
            lines += _table(steps_data["rows"], ["method", "precision", "batch", "classes", "tower", "wall_ms",
                                                 "busy_ms", "busy_frac", "peak_mib", "trainable", "status"])
        proj = _read(f"projection_{suffix}")
        if proj:
            m = proj["meta"]
            lines += [f"### Projected few-shot grid ({suffix})", "",
                      f"{m['when']}: `{' '.join(m['grid'])}`, {proj['cells']} cells at {m['precision']} (a GPU sweep "
                      "adds `trainer=gpu`, bf16-mixed). Per cell: training steps x the method's measured step "
                      "(scaled to the cell's batch for tower methods, to its class count for text methods; "
                      "`proxy` = a method not timed, costed as CoOp or VPT-shallow) + image-tower forwards x "
                      f"{m['ms_per_image']} ms ({m['ms_per_image_source']}): every test and val image per cell for "
                      "tower methods; for feature-store methods the training views once per (dataset, K, seed) and "
                      "the test set once per dataset (`shared features`); TPT: n_views forwards + its steps per test "
                      f"image + a fixed {m['overhead_s']} s per cell ({m['overhead_source']}). Then / the gain of "
                      f"the best worker count ({m['workers']} workers, {m['gain']}x, {m['gain_source']}). Not "
                      "modelled: decoding full-size images on the CPU (assumed hidden behind the loader workers), "
                      "backbone loading per worker.", ""]
            lines += _table(proj["rows"], ["method", "cells", "steps", "source", "train_s", "eval_s",
                                           "overhead_s", "gpu_h"])
            lines += [f"- shared features (feature store): {proj['shared_features_s']} s",
                      f"- device work {proj['work_h']} h + per-cell overhead {proj['overhead_h']} h = "
                      f"**{proj['one_worker_h']} h on one worker**, **{proj['projected_h']} h with {m['workers']} "
                      "workers**" + (f"; not projected (no step timing): {', '.join(proj['missing'])}"
                                     if proj["missing"] else ""), ""]
    return lines


def add_gpu_commands(sub) -> None:
    p = sub.add_parser("steps", help="one training step per method: wall ms, GPU-busy ms, peak memory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="medclip_tiny")
    p.add_argument("--dataset", default="demo_btmri")
    p.add_argument("--methods", default=STEP_METHODS, help="comma list; all = every (other) method that trains")
    p.add_argument("--precision", default="bf16-mixed,32-true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--forward-batch", type=int, default=256, help="batch of the encode_image row")
    p.add_argument("--append", action="store_true", help="keep the file's rows; skip (method, precision) done")
    p.add_argument("--name", default=None, help="data file (default steps_<device>_<backbone>)")
    p.set_defaults(func=steps)
    p = sub.add_parser("plan", help="the sweep's (method, dataset) budgets, for project")
    p.add_argument("--grid", default="experiment=few_shot", help="sweep overrides (space-separated)")
    p.add_argument("--name", default="few_shot")
    p.set_defaults(func=plan)
    p = sub.add_parser("project", help="the grid's GPU-hours from steps, limits and share")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbone", default="biomedclip_arch")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--grid", default="experiment=few_shot", help="sweep overrides (space-separated)")
    p.add_argument("--plan", default="few_shot", help="grid_plan_<name>.json (made if missing or for another grid)")
    p.set_defaults(func=project)


# -- report ------------------------------------------------------------------------------------------------


# -- startup: the fixed work every command pays, two trees alternating ---------------------------------------------
#: each in a fresh interpreter; ``{out}`` is a fresh empty folder per run (the table composes the demo grid of 486
#: cells and finds none; the zero-shot cell runs from a cold feature store)
STARTUP_COMMANDS = {"import promptbench.config": ["-c", "import promptbench.config"],
                    "promptbench --help": ["-m", "promptbench.cli", "--help"],
                    "promptbench list": ["-m", "promptbench.cli", "list"],
                    "promptbench completion bash": ["-m", "promptbench.cli", "completion", "bash"],
                    "promptbench table (demo grid, no results)": ["-m", "promptbench.cli", "table", "--experiment",
                                                                  "demo", "--no-plots", "paths.output_dir={out}"],
                    "promptbench train (one zero-shot cell)": ["-m", "promptbench.cli", "train", "method=zeroshot",
                                                               "dataset=demo_btmri", "backbone=medclip_tiny",
                                                               "shots=1", "seed=1", "paths.output_dir={out}"],
                    "promptbench table (72 finished results, figures by group)": [
                        "-m", "promptbench.cli", "table", "--results", "{results}", "--out", "{out}/tables",
                        "--expected", "none", "paths.output_dir={out}", "+table.figure.split_by=group"]}


def _finished_results(root: Path) -> None:
    """72 result.json (4 methods of 4 families x K 1, 16 x seeds 1-3 x 3 datasets): what the table's figures read."""
    methods, datasets = ["zeroshot", "coop", "vpt_shallow", "clip_lora"], ["btmri", "ctkidney", "kneexray"]
    for i, method in enumerate(methods):
        for dataset in datasets:
            for shots in (1, 16):
                for seed in (1, 2, 3):
                    cell = root / "few_shot" / dataset / "medclip_tiny" / method / f"shots_{shots}" / f"seed_{seed}"
                    cell.mkdir(parents=True, exist_ok=True)
                    identity = {"protocol": "few_shot", "dataset": dataset, "modality": "", "organ": "",
                                "backbone": "medclip_tiny", "method": method, "variant": "", "shots": shots,
                                "seed": seed}
                    (cell / "result.json").write_text(json.dumps({
                        "schema": 1, "identity": identity, "hashes": {"config": "h"}, "status": "ok", "error": None,
                        "metrics": {"test/acc": 0.4 + 0.1 * i + 0.01 * seed}, "eval_sets": {"test": ["a", "b"]}}))


def _timed(tree: Path, argv: list[str], timeout: int = 3600) -> tuple[float, int]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - start, done.returncode


def startup(args: argparse.Namespace) -> None:
    trees = {"before": Path(args.before).resolve(), "after": REPO}
    rows = []
    results = Path(tempfile.mkdtemp(prefix="pb_startup_results_"))
    _finished_results(results)
    commands = {n: a for n, a in STARTUP_COMMANDS.items() if not args.only or any(o in n for o in args.only)}
    for name, argv in commands.items():
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeat):  # alternating, so drifting load hits both sides alike
            for side, tree in trees.items():
                with tempfile.TemporaryDirectory() as out:
                    seconds, rc = _timed(tree, [a.format(out=out, results=results) for a in argv])
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
    if args.only and (OUT / "startup.json").is_file():  # re-measure some rows: the others keep their own trees
        old = json.loads((OUT / "startup.json").read_text())
        for row in rows:
            row.update({"trees": f"{meta['before']} / {meta['after']}", "when": meta["when"]})
        kept = [{"trees": f"{old['meta']['before']} / {old['meta']['after']}", **r} if "trees" not in r else r
                for r in old["rows"] if r["what"] not in {n["what"] for n in rows}]
        data = {"meta": old["meta"], "rows": kept + rows}
    _save("startup", data)


def _save(name: str, data: dict, write_report: bool = True) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / f".{name}.json.{os.getpid()}"  # whole files only: a report running beside it never reads half a file
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, OUT / f"{name}.json")
    if write_report:
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
                  f"{data['meta']['when']}, threads={data['meta']['threads']}, loader workers="
                  f"{data['meta'].get('workers') or 0}. CoOp 16 shots, 100 epochs (unless `epochs` says), batch 32; "
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
                                                                  "exit", "load", "trees", "when"].index)
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in data["rows"]]
        lines.append("")
    if (OUT / "linear_probe.json").is_file():
        lines += _linear_probe_section(OUT / "linear_probe.json")
    lines += gpu_sections()  # issue 25: the device run, step timings, grid projection, targets
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")


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
    p.add_argument("--epochs", type=int, default=None, help="CoOp epochs (default: its 100; fewer for a dry run)")
    p.add_argument("--workers", type=int, default=None, help="trainer.num_workers (image loaders; gpu trainer: 8)")
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
    p.add_argument("--only", action="append", default=[], help="only the commands whose name holds this text; "
                   "their rows replace the same rows of startup.json, the others are kept with their trees")
    p.set_defaults(func=startup)
    p = sub.add_parser("report")
    p.set_defaults(func=report)
    add_gpu_commands(sub)  # steps, plan, project (issue 25)
    args = parser.parse_args()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
