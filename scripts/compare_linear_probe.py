#!/usr/bin/env python
"""The linear probe's fitter before (torch.optim.LBFGS) and after (SciPy L-BFGS-B) on the demo's 27 cells.

    git clone /work/main /tmp/lp_before              # a checkout with the old fitter (any commit before the change)
    python scripts/compare_linear_probe.py --before /tmp/lp_before [--datasets ...] [--shots ...] [--seeds ...]
    python scripts/benchmark.py report              # docs/benchmarks.md, section "Linear probe: old vs new fitter"

Per cell (``experiment=demo method=linear_probe dataset=D shots=K seed=S``, backbone medclip_tiny) it does:

1. **End to end, back to back**: ``promptbench train`` of the cell as a fresh process in the ``--before`` checkout
   (its own code) and in this tree (who goes first alternates from cell to cell), each into a fresh output folder
   (cold feature store); it reads test accuracy, ``timing.wall_s`` / ``train_s`` and (this tree) ``fit_info`` from
   each ``result.json``.
2. **Same features, both fitters**: the cell runs once more in this process with hooks that keep the train and
   validation features the probe's ``prepare`` receives and the test features. On exactly those features it runs
   the OLD search (``search_c`` and ``fit_logistic_regression`` as they are in the ``--before`` checkout, read from
   its file and executed unchanged; only ``torch.optim.LBFGS`` is swapped for a subclass that records each fit's
   iterations, evaluations and time) and the NEW one (this tree's ``search_c``), and records the chosen C, validation
   and test accuracy, the fits that stopped at the iteration cap, summed fit time, each search's largest final
   gradient, and the largest |logit difference| of the two final probes on the test set. Each search runs
   ``--repeat`` times, old and new alternating: the answers must repeat exactly (``deterministic``), the fit times
   are each side's fastest. The in-process test accuracy of each side must equal its end-to-end ``result.json``
   accuracy (``checks``): the features are those of the cells.
3. **What explains a difference**: both fitters' validation accuracy at every C either search fitted
   (``path_val_acc_differs``: where the searches can part), each final fit's distance to the optimum at its C
   (``vs_tight``: objective gap, test logits, test accuracy of a gtol 1e-10 refit), and two more runs of this tree's
   search: ``new_cold`` (no warm starts: one cold fit per C, like one sklearn ``LogisticRegression`` per C) and
   ``tight`` (cold, gtol 1e-10: the protocol's exact answer up to ties), and ``new_tol_1e-6`` (warm, gtol 1e-6,
   max_iter 10000: what a tighter tolerance than sklearn's would choose). ``explanation`` says it in one sentence.

Writes ``docs/bench_data/linear_probe.json`` (after every cell) and rewrites docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from benchmark import ENV, OUT, _git_sha, _load, report  # noqa: E402
from torch import Tensor  # noqa: E402

DATASETS = ("demo_btmri", "demo_ctkidney", "demo_kneexray")  # conf/experiment/demo.yaml
CELL = ["experiment=demo", "method=linear_probe", "backbone=medclip_tiny", "logger=none"]


# -- 1. end to end: promptbench train in each tree ----------------------------------------------------------------
def train_cell(tree: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(tree)}
    env.pop("PROMPTBENCH_CACHE", None)
    cmd = [sys.executable, "-m", "promptbench.cli", "train", *overrides, f"paths.output_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    found = list(out.rglob("result.json"))
    if proc.returncode != 0 or not found:
        raise SystemExit(f"{tree}: {' '.join(overrides)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    result = json.loads(found[0].read_text())
    return {"acc": result["metrics"]["test/acc"], "wall_s": result["timing"]["wall_s"],
            "train_s": result["timing"]["train_s"], "process_s": round(process_s, 2),
            "fit_info": result.get("fit_info")}


# -- 2. the old fitter, as it is in the --before checkout ---------------------------------------------------------
class CountingLBFGS(torch.optim.LBFGS):
    """torch.optim.LBFGS unchanged, recording per ``step`` call (one per old fit) iterations, evaluations, time."""

    log: list[dict[str, Any]] = []

    def step(self, closure):  # type: ignore[override]
        t0 = time.perf_counter()
        loss = super().step(closure)
        state = self.state[self._params[0]]
        group = self.param_groups[0]
        self.log.append({"n_iter": int(state["n_iter"]), "evals": int(state["func_evals"]),
                         "capped": int(state["n_iter"]) >= group["max_iter"] or int(state["func_evals"]) >= group[
                             "max_eval"], "seconds": time.perf_counter() - t0})
        return loss


def load_old(before: Path) -> tuple[dict[str, Any], str]:
    """The ``--before`` checkout's ``fit_logistic_regression`` and ``search_c``, their source text executed as is in
    a namespace with the module's imports (``torch.optim.LBFGS`` is patched only while the old search runs)."""
    from promptbench.methods.visual_common import accuracy

    text = (before / "promptbench" / "methods" / "linear_probe.py").read_text()
    tree = ast.parse(text)
    wanted = {"fit_logistic_regression", "search_c", "COARSE_C"}
    parts = [ast.get_source_segment(text, node) for node in tree.body
             if (isinstance(node, ast.FunctionDef) and node.name in wanted)
             or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in wanted for t in node.targets))]
    source = "\n\n".join(p for p in parts if p)
    if "torch.optim.LBFGS" not in source:
        raise SystemExit(f"{before}: its linear_probe.py has no torch.optim.LBFGS fitter (not a pre-change checkout)")
    namespace: dict[str, Any] = {"__name__": "old_linear_probe", "torch": torch, "F": F, "math": math,
                                 "Sequence": Sequence, "Tensor": Tensor, "accuracy": accuracy}
    exec(compile("from __future__ import annotations\n" + source, "old_linear_probe", "exec"), namespace)
    return namespace, source


def old_search(old: dict[str, Any], train, val, num_classes: int, cfg
               ) -> tuple[float, Tensor, Tensor, list[dict[str, Any]]]:
    """The old ``search_c`` on these features; per fit (in order): its C, iterations, evaluations, cap, seconds."""
    CountingLBFGS.log = []
    cs: list[float] = []
    fit = old["fit_logistic_regression"]

    def recording_fit(features, labels, num_classes, c, **kwargs):  # the old search calls it by its global name
        w, b = fit(features, labels, num_classes, c, **kwargs)
        cs.append((float(c), w, b))
        return w, b

    saved, torch.optim.LBFGS = torch.optim.LBFGS, CountingLBFGS
    old["fit_logistic_regression"] = recording_fit
    try:
        c, w, b = old["search_c"](train, val, num_classes, steps=int(cfg.search_steps), grid=tuple(cfg.c_grid),
                                  max_iter=int(cfg.max_iter))
    finally:
        torch.optim.LBFGS = saved
        old["fit_logistic_regression"] = fit
    if len(cs) != len(CountingLBFGS.log):
        raise SystemExit("old search: fits and optimiser steps do not pair up")
    return c, w, b, [{"c": c_i, "head": (w_i, b_i), **entry} for (c_i, w_i, b_i), entry in zip(cs, CountingLBFGS.log)]


# -- 2. the cell's features, captured in this process --------------------------------------------------------------
def capture_features(overrides: list[str], out: Path) -> dict[str, Any]:
    """Run the cell through the engine (this tree) and keep the features its probe was fitted on."""
    from promptbench.config import compose
    from promptbench.engine.run import run
    from promptbench.methods import linear_probe as lp
    from promptbench.methods.visual_common import extract_features

    kept: dict[str, Any] = {}
    prepare, search = lp.LinearProbe.prepare, lp.search_c

    def keeping_prepare(self, datamodule):
        kept["method"], kept["datamodule"] = self, datamodule
        return prepare(self, datamodule)

    def keeping_search(train, val, *args, **kwargs):
        kept["train"], kept["val"] = train, val
        return search(train, val, *args, **kwargs)

    lp.LinearProbe.prepare, lp.search_c = keeping_prepare, keeping_search
    try:
        result = run(compose([*overrides, f"paths.output_dir={out}"]))
    finally:
        lp.LinearProbe.prepare, lp.search_c = prepare, search
    method, dm = kept["method"], kept["datamodule"]
    (loader,) = dm.test_dataloader()
    with torch.no_grad():
        kept["test"] = extract_features(method.backbone, loader)
        # the engine's own test logits for the fitted head: forward = F.normalize(features) @ Wᵀ + b
        kept["head"] = (method.head.weight.detach().clone(), method.head.bias.detach().clone())
    kept["acc"] = result["metrics"]["test/acc"]
    kept["config"] = method.config
    return kept


def grad_max(x: Tensor, y: Tensor, num_classes: int, c: float, w: Tensor, b: Tensor) -> float:
    """Max-norm of the objective's gradient at ``(w, b)`` (float64, the analytic gradient of the new code)."""
    from promptbench.methods.linear_probe import _loss_grad

    theta = np.concatenate([w.double().cpu().numpy().T, b.double().cpu().numpy()[None]]).ravel()
    _, g = _loss_grad(theta, x.double().cpu().numpy(), y.cpu().numpy(), num_classes, 1.0 / (c * len(y)))
    return float(np.abs(g).max())


def compare_cell(kept: dict[str, Any], old: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Both searches on the kept features, ``repeat`` times alternating (old, new, old, ...): answers from the first
    run (every repeat must give the same), fit times the fastest repeat of each side."""
    from promptbench.methods.linear_probe import _as_numpy, _as_torch, lbfgs_fit, search_c
    from promptbench.methods.visual_common import accuracy

    cfg = kept["config"]
    train, val, test = kept["train"], kept["val"], kept["test"]
    k = int(kept["head"][0].shape[0])
    torch.set_num_threads(1)  # trainer.threads=1, as the cells
    olds, news = [], []
    for _ in range(repeat):
        olds.append(old_search(old, train, val, k, cfg))
        trace: list = []
        t0 = time.perf_counter()
        c_new, w_new, b_new = search_c(train, val, k, steps=int(cfg.search_steps), grid=tuple(cfg.c_grid),
                                       max_iter=int(cfg.max_iter), trace=trace)
        news.append((c_new, w_new, b_new, trace, time.perf_counter() - t0))
    c_old, w_old, b_old, log = olds[0]
    c_new, w_new, b_new, trace, _ = news[0]
    deterministic = all(o[0] == c_old and torch.equal(o[1], w_old) and torch.equal(o[2], b_old) for o in olds) and all(
        n[0] == c_new and torch.equal(n[1], w_new) and torch.equal(n[2], b_new) for n in news)

    def val_acc(w: Tensor, b: Tensor) -> float:
        return accuracy(val[0] @ w.t() + b, val[1])

    # validation accuracy of both fitters at every C either search fitted (each side's own search fit when it made
    # one; else a fresh fit: the old fitter's is what its search would have made, the new one's a cold fit): where
    # they differ the searches can part
    old_at = {f["c"]: f["head"] for f in log}
    new_at = {f.c: f for f in trace}
    path = []
    for c in sorted(set(old_at) | set(new_at)):
        head_old = old_at.get(c) or old["fit_logistic_regression"](*train, k, c, max_iter=int(cfg.max_iter))
        nf = new_at.get(c) or lbfgs_fit(*_as_numpy(*train), k, c, max_iter=int(cfg.max_iter))
        head_new = _as_torch(nf, train[0])
        path.append({"c": c, "in_old_search": c in old_at, "in_new_search": c in new_at,
                     "old_val_acc": val_acc(*head_old), "new_val_acc": val_acc(*head_new),
                     "old_capped": any(f["capped"] for f in log if f["c"] == c), "new_capped": nf.capped,
                     "max_abs_val_logit_diff": float((val[0] @ head_old[0].t() + head_old[1]
                                                      - val[0] @ head_new[0].t() - head_new[1]).abs().max())})

    def variant(**kwargs) -> dict[str, Any]:
        """This tree's search with other settings: ``warm_start=False`` (one cold fit per C, as one sklearn
        LogisticRegression per C), or far tighter tolerance (the protocol's exact answer, up to ties)."""
        fits: list = []
        t0 = time.perf_counter()
        c, w, b = search_c(train, val, k, steps=int(cfg.search_steps), grid=tuple(cfg.c_grid), trace=fits, **kwargs)
        return {"c": c, "val_acc": val_acc(w, b), "test_acc": accuracy(test[0] @ w.t() + b, test[1]),
                "capped_fits": sum(f.capped for f in fits), "max_grad": max(f.grad_max for f in fits),
                "search_s": round(time.perf_counter() - t0, 4), **kwargs}

    logits_old, logits_new = test[0] @ w_old.t() + b_old, test[0] @ w_new.t() + b_new

    def tight(c: float, w: Tensor, b: Tensor) -> dict[str, Any]:
        """The optimum at ``c`` to far tighter tolerance (gtol 1e-10, from the given solution): how far the given
        fit's objective and test logits are from it, and its test accuracy."""
        x, y = _as_numpy(*train)
        ref = lbfgs_fit(x, y, k, c, max_iter=100_000, tol=1e-10, init=(w.double().numpy(), b.double().numpy()))
        w_ref, b_ref = _as_torch(ref, train[0])
        logits_ref = test[0] @ w_ref.t() + b_ref
        return {"objective_gap": objective(c, w, b) - objective(c, w_ref, b_ref),
                "max_abs_test_logit_diff": float((test[0] @ w.t() + b - logits_ref).abs().max()),
                "tight_test_acc": accuracy(logits_ref, test[1]), "tight_val_acc": val_acc(w_ref, b_ref),
                "tight_grad_max": ref.grad_max, "tight_iterations": ref.n_iter}

    def objective(c: float, w: Tensor, b: Tensor) -> float:
        from promptbench.methods.linear_probe import _loss_grad

        theta = np.concatenate([w.double().numpy().T, b.double().numpy()[None]]).ravel()
        return _loss_grad(theta, *_as_numpy(*train), k, 1.0 / (c * len(train[1])))[0]

    return {
        "n": {"train": len(train[1]), "val": len(val[1]), "test": len(test[1]), "classes": k,
              "dim": int(train[0].shape[1])},
        "old": {"c": c_old, "val_acc": val_acc(w_old, b_old), "test_acc": accuracy(logits_old, test[1]),
                "fits": len(log), "capped_fits": sum(f["capped"] for f in log),
                "iterations": sum(f["n_iter"] for f in log), "max_iterations": max(f["n_iter"] for f in log),
                "fit_s": round(min(sum(f["seconds"] for f in o[3]) for o in olds), 4),
                "final_grad_max": grad_max(*train, k, c_old, w_old, b_old),
                "capped_c": [f["c"] for f in log if f["capped"]], "vs_tight": tight(c_old, w_old, b_old)},
        "new": {"c": c_new, "val_acc": val_acc(w_new, b_new), "test_acc": accuracy(logits_new, test[1]),
                "fits": len(trace), "capped_fits": sum(f.capped for f in trace),
                "iterations": sum(f.n_iter for f in trace), "max_iterations": max(f.n_iter for f in trace),
                "fit_s": round(min(sum(f.seconds for f in n[3]) for n in news), 4),
                "search_s": round(min(n[4] for n in news), 4),
                "final_grad_max": grad_max(*train, k, c_new, w_new, b_new),
                "capped_c": [f.c for f in trace if f.capped], "vs_tight": tight(c_new, w_new, b_new)},
        "new_cold": variant(warm_start=False, max_iter=int(cfg.max_iter)),
        "tight": variant(warm_start=False, tol=1e-10, max_iter=100_000),
        "new_tol_1e-6": variant(tol=1e-6, max_iter=10_000),  # warm starts, 100x tighter than sklearn's tol
        "max_abs_logit_diff": float((logits_old.double() - logits_new.double()).abs().max()),
        "path_val_acc_differs": [p for p in path if p["old_val_acc"] != p["new_val_acc"]],
        "path_cs": len(path),
        "path_max_abs_val_logit_diff": max(p["max_abs_val_logit_diff"] for p in path),
        "repeats": repeat, "deterministic": deterministic,
        "engine_head_is_new": bool(torch.equal(kept["head"][0], w_new) and torch.equal(kept["head"][1], b_new)),
    }


def _c(value: float) -> str:
    return f"{value:.4g}"


def explain(row: dict[str, Any]) -> str:
    """One sentence per cell: what differs between the old and the new fitter, and why (from the row's numbers)."""
    o, n, t = row["old"], row["new"], row["tight"]
    caps = [f"{side}: {r['capped_fits']} of {r['fits']} fits stopped at max_iter (C = "
            f"{', '.join(_c(c) for c in sorted(set(r['capped_c'])))})" for side, r in (("old", o), ("new", n))
            if r["capped_fits"]]
    cap_text = "; ".join(caps) or "no fit of either search stopped at max_iter"
    if o["c"] != n["c"]:
        diffs = row["path_val_acc_differs"]
        where = ", ".join(f"C = {_c(p['c'])} ({p['old_val_acc']:.3g} vs {p['new_val_acc']:.3g})" for p in diffs)
        capped = [p["c"] for p in diffs if p["old_capped"] or p["new_capped"]]
        how = (f"fits stopped at max_iter at C = {', '.join(_c(c) for c in capped)}, the others meet gtol 1e-4"
               if capped else "both meet gtol 1e-4")
        text = (f"C {_c(o['c'])} → {_c(n['c'])}: the fitters' validation accuracies ({row['n']['val']} images) "
                f"differ at {where or 'no C (?)'}: {how} at different points of a flat objective (max |Δ val logit| "
                f"over the searched C {row['path_max_abs_val_logit_diff']:.2g}); {cap_text}.")
    elif o["test_acc"] != n["test_acc"]:
        images = round(abs(o["test_acc"] - n["test_acc"]) * row["n"]["test"])

        def final(side: str, r: dict[str, Any]) -> str:
            return (f"{side} stopped at max_iter (gradient {r['final_grad_max']:.1e})" if r["final_grad_max"] > 1e-4
                    else f"{side} met gtol 1e-4")

        text = (f"same C; test accuracy differs by {images} of {row['n']['test']} images: the final fits are different "
                f"points ({final('old', o)}, {final('new', n)}; max |Δ test logit| {row['max_abs_logit_diff']:.2g}; "
                f"objective above the tight optimum by {o['vs_tight']['objective_gap']:.1e} old, "
                f"{n['vs_tight']['objective_gap']:.1e} new); {cap_text}.")
    else:
        text = f"identical C and test accuracy (max |Δ test logit| {row['max_abs_logit_diff']:.2g}); {cap_text}."
    agree = [side for side in ("old", "new") if row[side]["c"] == t["c"]]
    return text + (f" Tight search (gtol 1e-10): C {_c(t['c'])}, test acc {t['test_acc']:.3f} (C as "
                   f"{' and '.join(agree) if agree else 'neither'}).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, default=Path("/tmp/lp_before"), help="checkout with the old fitter")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--repeat", type=int, default=3, help="searches per side on the kept features (fit time: "
                        "the fastest)")
    parser.add_argument("--name", default="linear_probe", help="docs/bench_data/<name>.json")
    parser.add_argument("--reexplain", action="store_true", help="only rewrite the explanations of the stored rows "
                        "(docs/bench_data/<name>.json) and the report; runs nothing")
    args = parser.parse_args()
    if args.reexplain:
        path = OUT / f"{args.name}.json"
        data = json.loads(path.read_text())
        for row in data["rows"]:
            row["explanation"] = explain(row)
        path.write_text(json.dumps(data, indent=1))
        report(None)
        return 0
    before = args.before.resolve()
    old, _ = load_old(before)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpus": os.cpu_count(), "before": f"{before} ({_git_sha(before)})", "after": _git_sha(REPO),
            "settings": CELL, "python": platform.python_version()}
    rows: list[dict[str, Any]] = []
    cells = [(d, int(k), int(s)) for d in args.datasets.split(",") for k in args.shots.split(",")
             for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="pb_lp_") as tmp:
        for i, (dataset, shots, seed) in enumerate(cells, 1):
            overrides = [*CELL, f"dataset={dataset}", f"shots={shots}", f"seed={seed}"]
            row: dict[str, Any] = {"dataset": dataset, "shots": shots, "seed": seed, "load_before": _load()}
            for side in (("old", "new") if i % 2 else ("new", "old")):  # back to back, alternating who goes first
                row[f"e2e_{side}"] = train_cell(before if side == "old" else REPO, overrides, Path(tmp) / f"{side}_{i}")
            kept = capture_features(overrides, Path(tmp) / f"capture_{i}")
            row.update(compare_cell(kept, old, args.repeat))
            row["checks"] = {"old_e2e_acc_equals_same_features": abs(row["e2e_old"]["acc"] - row["old"]["test_acc"])
                             < 1e-6,
                             "new_e2e_acc_equals_same_features": abs(row["e2e_new"]["acc"] - row["new"]["test_acc"])
                             < 1e-6,
                             "new_e2e_c_equals_same_features": row["e2e_new"]["fit_info"]["c"] == row["new"]["c"]}
            row["explanation"] = explain(row)
            rows.append(row)
            print(f"[{i}/{len(cells)}] {dataset} K={shots} seed={seed}: C {row['old']['c']:.4g} -> "
                  f"{row['new']['c']:.4g}, test acc {row['old']['test_acc']:.4f} -> {row['new']['test_acc']:.4f}, "
                  f"fit s {row['old']['fit_s']:.3f} -> {row['new']['fit_s']:.3f}, capped {row['old']['capped_fits']} "
                  f"-> {row['new']['capped_fits']}, checks {row['checks']}", flush=True)
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    report(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
