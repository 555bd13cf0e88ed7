#!/usr/bin/env python
"""Build ``data/demo`` from the shared real-image samples (deterministic).

For each of BTMRI, CTKidney and KneeXray (BiomedCoOp layout, see ``shared/datasets/README.md``) every image
listed in ``split_<NAME>.json`` (train/val/test; the ``pretrain/`` pools are not copied) is downscaled so its
short side is ``--size`` px (LANCZOS, never upscaled), saved as JPEG quality 90 without metadata, keeping
grayscale images as mode "L". Split files are copied byte for byte. ``medmnist/pneumoniamnist.npz`` is copied
when it is at most ``--max-npz-mb`` MB.

    python scripts/vendor_demo_data.py --src ../shared/datasets --dst data/demo --size 112

Re-running gives byte-identical files for the same Pillow/libjpeg; each dataset folder is rebuilt from
scratch so stale images never linger.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

DATASETS = ("BTMRI", "CTKidney", "KneeXray")
NPZ = Path("medmnist") / "pneumoniamnist.npz"


def downscale(src: Path, dst: Path, size: int) -> None:
    """Short side -> ``size`` (no upscaling), JPEG q90, mode L kept, everything else RGB."""
    with Image.open(src) as img:
        img.load()
        mode = "L" if img.mode in ("L", "I;16", "I", "1") else "RGB"
        img = img.convert(mode)
        w, h = img.size
        scale = size / min(w, h)
        if scale < 1:
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        img.save(dst, format="JPEG", quality=90, optimize=False, progressive=False)


def vendor_dataset(src_root: Path, dst_root: Path, name: str, size: int) -> int:
    """Copy one BiomedCoOp-layout dataset; returns the number of images written."""
    split_file = src_root / name / f"split_{name}.json"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} not found; pass --src pointing at shared/datasets")
    out = dst_root / name
    if out.exists():
        shutil.rmtree(out)
    (out / name).mkdir(parents=True)
    shutil.copyfile(split_file, out / split_file.name)
    with open(split_file, encoding="utf-8") as fh:
        splits = json.load(fh)
    relpaths = sorted({entry[0] for split in ("train", "val", "test") for entry in splits[split]})
    for rel in relpaths:
        downscale(src_root / name / name / rel, out / name / rel, size)
    return len(relpaths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--dst", type=Path, default=Path("data/demo"))
    parser.add_argument("--size", type=int, default=112, help="short side in pixels")
    parser.add_argument("--max-npz-mb", type=float, default=3.0)
    args = parser.parse_args(argv)
    args.dst.mkdir(parents=True, exist_ok=True)
    for name in DATASETS:
        n = vendor_dataset(args.src, args.dst, name, args.size)
        print(f"{name}: {n} images -> {args.dst / name}")
    npz = args.src / NPZ
    if npz.is_file() and npz.stat().st_size <= args.max_npz_mb * 1e6:
        shutil.copyfile(npz, args.dst / NPZ.name)
        print(f"{NPZ.name}: copied ({npz.stat().st_size / 1e6:.1f} MB)")
    else:
        print(f"{NPZ.name}: skipped (missing or larger than {args.max_npz_mb} MB)")


if __name__ == "__main__":
    main()
