#!/usr/bin/env python
"""Size of every registered method's saved state (``state.safetensors``, docs/state.md) on one backbone.

Each method is built on the backbone with the dataset's classes and its state written with
``promptbench.engine.state.save_state`` (the file a trained cell writes); the file is measured, not estimated.
File sizes depend only on tensor shapes, so nothing is trained. The training-free caches whose shapes come from
the support set (Tip-Adapter, Tip-Adapter-F: ``K·C`` keys) get a cache of ``--shots`` shots per class of the
right shape.

    python scripts/state_sizes.py                       # medclip_tiny, demo_btmri (4 classes), 16 shots
    python scripts/state_sizes.py --backbone biomedclip_arch --no-doc --json /tmp/s.json  # ViT-B/16-sized, random init

Writes docs/bench_data/state_sizes.json (``--json``) and (unless --no-doc) the table between
``<!-- pb:state_sizes -->`` markers in docs/state.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- pb:state_sizes -->)(.*?)(<!-- /pb:state_sizes -->)", re.S)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def measure(backbone_name: str, dataset: str, shots: int) -> dict:
    import torch

    from promptbench.backbones import build_backbone
    from promptbench.config import compose
    from promptbench.engine.state import save_state
    from promptbench.methods import build_method, load_all

    rows = []
    backbone = None
    for name in sorted(load_all()):
        cfg = compose([f"backbone={backbone_name}", f"method={name}", f"dataset={dataset}", f"shots={shots}"])
        if backbone is None:
            backbone = build_backbone(cfg.backbone)
        classnames = list(cfg.dataset.classnames)
        torch.manual_seed(0)
        try:
            method = build_method(cfg.method, backbone, classnames, cfg.dataset)
        except ValueError as err:  # e.g. needs image-tower tokens on a CNN tower
            rows.append({"method": name, "error": str(err)})
            continue
        if hasattr(method, "set_cache"):  # Tip-Adapter(-F): a K-shot cache of the shape prepare builds
            dim = method.cache_keys.shape[1]
            labels = torch.arange(len(classnames)).repeat_interleave(shots)
            method.set_cache(torch.nn.functional.normalize(torch.randn(len(labels), dim), dim=-1), labels)
        with tempfile.TemporaryDirectory() as tmp:
            block = save_state(tmp, method, backbone, classnames)
        rows.append({"method": name, "bytes": block["bytes"] if block else 0,
                     "tensors": block["tensors"] if block else 0, "numel": block["numel"] if block else 0,
                     "trainable_params": method.num_trainable()})
    return {"backbone": backbone_name, "dataset": dataset, "classes": len(classnames), "shots": shots,
            "embed_dim": int(backbone.embed_dim), "torch": torch.__version__, "methods": rows}


def table(data: dict) -> str:
    lines = [f"Measured on `{data['backbone']}` (embedding width {data['embed_dim']}), {data['classes']} classes "
             f"(`{data['dataset']}`), caches of {data['shots']} shots per class "
             "(`python scripts/state_sizes.py`):", "",
             "| method | state.safetensors | tensors | values | trainable params |", "|---|---:|---:|---:|---:|"]
    for row in data["methods"]:
        if "error" in row:
            lines.append(f"| {row['method']} | not buildable | | | |")
        elif not row["bytes"]:
            lines.append(f"| {row['method']} | none (no state) | 0 | 0 | {row['trainable_params']:,} |")
        else:
            lines.append(f"| {row['method']} | {_size(row['bytes'])} | {row['tensors']} | {row['numel']:,} | "
                         f"{row['trainable_params']:,} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="medclip_tiny")
    parser.add_argument("--dataset", default="demo_btmri")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--json", default=str(REPO / "docs" / "bench_data" / "state_sizes.json"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "state.md"))
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the table in --doc")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = measure(args.backbone, args.dataset, args.shots)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    text = table(data)
    print(text)
    if not args.no_doc:
        doc = Path(args.doc)
        body = doc.read_text()
        if not MARKER.search(body):
            print(f"{doc}: no <!-- pb:state_sizes --> block", file=sys.stderr)
            return 1
        doc.write_text(MARKER.sub(lambda m: f"{m.group(1)}\n{text}\n{m.group(3)}", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
