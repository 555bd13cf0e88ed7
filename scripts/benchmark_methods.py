#!/usr/bin/env python
"""Speed and memory of every method on one backbone: a table, not a timed assert.

For each method (each in a fresh subprocess, so peak memory is its own): build it on real demo images,
run ``prepare``, time training steps (forward + backward + SGD step) and evaluation forwards, and record
trainable parameters, peak process RSS and (on GPU) peak allocated CUDA memory.

    python scripts/benchmark_methods.py --backbone medclip_tiny --methods coop,vpt_deep
    python scripts/benchmark_methods.py --backbone biomedclip_arch --device cuda --amp bf16   # ViT-B/16 size

Writes outputs/bench/methods_<backbone>_<device>.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace) -> dict:
    import torch

    from promptbench.backbones import build_backbone
    from promptbench.config import compose
    from promptbench.data import PromptDataModule
    from promptbench.methods import build_method

    torch.manual_seed(0)
    cfg = compose([f"backbone={args.backbone}", f"method={args.method}", f"dataset={args.dataset}", "shots=16"])
    device = torch.device(args.device)
    backbone = build_backbone(cfg.backbone)
    pp = backbone.preprocessing
    dm = PromptDataModule(cfg.dataset, protocol="few_shot", shots=16, seed=1, batch_size=args.batch_size,
                          eval_batch_size=args.eval_batch_size, num_workers=0, image_size=pp.image_size,
                          mean=pp.mean, std=pp.std)
    dm.setup("fit")
    method = build_method(cfg.method, backbone, dm.classnames, cfg.dataset).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    method.prepare(dm)
    prepare_s = time.perf_counter() - t0
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    batch = next(iter(dm.train_dataloader()))
    images, labels = batch["image"].to(device), batch["label"].to(device)
    step_ms = None
    if method.trains and list(method.learnable_parameters()):
        method.train()
        opt = torch.optim.SGD(method.learnable_parameters(), lr=1e-3, momentum=0.9)
        times = []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(**amp):
                loss = method.training_loss(images, labels)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        step_ms = 1000 * sorted(times)[len(times) // 2]
    method.eval()
    eval_batch = next(iter(dm.test_dataloader()[0]))["image"].to(device)
    grad = torch.enable_grad() if method.needs_grad_at_test else torch.no_grad()
    times = []
    with grad:
        for i in range(args.warmup + args.steps):
            t = time.perf_counter()
            with torch.autocast(**amp):
                method(eval_batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    eval_s = sorted(times)[len(times) // 2]
    return {
        "method": args.method,
        "trainable_params": method.num_trainable(),
        "prepare_s": round(prepare_s, 3),
        "train_step_ms": round(step_ms, 1) if step_ms is not None else None,
        "train_images_per_s": round(images.shape[0] / (step_ms / 1000), 1) if step_ms else None,
        "eval_images_per_s": round(eval_batch.shape[0] / eval_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="medclip_tiny")
    parser.add_argument("--dataset", default="demo_btmri")
    parser.add_argument("--methods", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench"))
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: measure one method, print JSON
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.method:
        print("RESULT " + json.dumps(measure(args)))
        return 0
    from promptbench.methods import load_all

    methods = sorted(load_all()) if args.methods == "all" else args.methods.split(",")
    rows = []
    for i, name in enumerate(methods, 1):
        cmd = [sys.executable, __file__, "--method", name, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"[{i}/{len(methods)}] {name}: FAILED {err}", file=sys.stderr)
            continue
        rows.append(json.loads(line[7:]))
        print(f"[{i}/{len(methods)}] {name}: {rows[-1]}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"methods_{args.backbone}_{args.device}{'_bf16' if args.amp == 'bf16' else ''}"
    if not rows:
        return 1
    with open(f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("–" if r[k] is None else str(r[k]) for k in header) + " |" for r in rows]
    note = (f"\nbackbone={args.backbone} device={args.device} amp={args.amp} batch={args.batch_size} "
            f"eval_batch={args.eval_batch_size}; medians over {args.steps} steps after {args.warmup} warm-up.\n")
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n" + note)
    print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
