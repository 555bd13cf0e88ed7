"""Convert PMC-CLIP's released weights into an open_clip folder for ``backbone=pmc_clip`` (docs/pmc_clip.md).

    python scripts/convert_pmc_clip.py --weights <folder with the three .pth files> \
        --bert <BiomedNLP-BiomedBERT-base-uncased-abstract folder> --out weights/pmc_clip
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from promptbench.backbones.pmc_clip import convert_pmc_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True,
                        help="folder with image_encoder(resnet50).pth, text_encoder.pth, text_projection_layer.pth")
    parser.add_argument("--bert", type=Path, required=True, help="PubMedBERT folder (config.json, vocab.txt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", type=int, default=8, help="attention-pool heads (PMC-CLIP: 8)")
    args = parser.parse_args()

    def load(name: str):
        return torch.load(args.weights / name, map_location="cpu", weights_only=True)

    out = convert_pmc_clip(load("image_encoder(resnet50).pth"), load("text_encoder.pth"),
                           load("text_projection_layer.pth"), args.bert, args.out, heads=args.heads)
    print(f"wrote {out}; run with backbone=pmc_clip (paths.weights_root={out.parent}) "
          f"or backbone.source=local-dir:{out}")


if __name__ == "__main__":
    main()
