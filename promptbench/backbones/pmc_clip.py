"""PMC-CLIP's released weights → an open_clip folder (``backbone.source=local-dir:<folder>``).

PMC-CLIP (Lin et al., MICCAI 2023) ships three files (HF dataset ``axiong/pmc_oa``): ``image_encoder(resnet50).pth``
(a CLIP ``ModifiedResNet`` state dict), ``text_encoder.pth`` (a PubMedBERT ``BertModel`` state dict, pooler
included) and ``text_projection_layer.pth`` (a (768, 768) matrix applied as ``pooler_output @ P``); the logit scale
is the constant 4.4292. In open_clip terms that is a ``ModifiedResNet`` visual tower plus an ``HFTextEncoder`` with
``cls_pooler`` (BERT's pooler output) and a bias-free linear projection whose weight is ``Pᵀ``.
:func:`convert_pmc_clip` writes ``open_clip_config.json``, ``open_clip_pytorch_model.bin`` and the BERT
config/tokenizer files into one folder (see docs/pmc_clip.md).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

PMC_LOGIT_SCALE = 4.4292
BERT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def _strip(state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def open_clip_config(image: Mapping[str, Tensor], projection: Tensor, *, heads: int = 8,
                     context_length: int = 77) -> dict:
    """The model config implied by the released tensors' shapes (heads are not in the weights: PMC-CLIP uses 8)."""
    width = int(image["conv1.weight"].shape[0]) * 2  # the stem's first conv has width // 2 channels
    layers = [1 + max(int(m.group(1)) for k in image if (m := re.match(rf"layer{i}\.(\d+)\.", k)))
              for i in range(1, 5)]
    spatial = int(round(math.sqrt(image["attnpool.positional_embedding"].shape[0] - 1)))
    image_size = spatial * 32
    return {
        "model_cfg": {
            "embed_dim": int(projection.shape[1]),
            "vision_cfg": {"layers": layers, "width": width, "head_width": width * 32 // heads,
                           "image_size": image_size},
            "text_cfg": {"hf_model_name": ".", "hf_tokenizer_name": ".", "hf_proj_type": "linear",
                         "hf_pooler_type": "cls_pooler", "context_length": context_length},
        },
        "preprocess_cfg": {"image_size": image_size, "interpolation": "bicubic", "resize_mode": "shortest"},
        "_comment": "PMC-CLIP converted by promptbench.backbones.pmc_clip.convert_pmc_clip",
    }


def convert_pmc_clip(image_encoder: Mapping[str, Tensor], text_encoder: Mapping[str, Tensor], projection: Tensor,
                     bert_dir: Path, out: Path, *, heads: int = 8, context_length: int = 77) -> Path:
    """Write the open_clip folder; returns it. ``bert_dir``: the PubMedBERT folder (config.json, vocab.txt, …)."""
    image = _strip(image_encoder, ("module.", "visual."))
    text = {k: v for k, v in _strip(text_encoder, ("module.", "bert.")).items() if not k.endswith("position_ids")}
    if projection.dim() != 2:
        raise ValueError(f"text projection must be a matrix, got shape {tuple(projection.shape)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [f for f in BERT_FILES[:2] if not (Path(bert_dir) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{bert_dir} lacks {missing}: pass the BiomedBERT-base-uncased-abstract folder")
    for name in BERT_FILES:
        if (Path(bert_dir) / name).is_file():
            shutil.copyfile(Path(bert_dir) / name, out / name)
    state = {f"visual.{k}": v for k, v in image.items()}
    state.update({f"text.transformer.{k}": v for k, v in text.items()})
    state["text.proj.weight"] = projection.t().contiguous()
    state["logit_scale"] = torch.tensor(PMC_LOGIT_SCALE)
    (out / "open_clip_config.json").write_text(
        json.dumps(open_clip_config(image, projection, heads=heads, context_length=context_length), indent=2))
    torch.save(state, out / "open_clip_pytorch_model.bin")
    return out
