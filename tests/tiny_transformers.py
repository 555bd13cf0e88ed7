"""Tiny transformers ``CLIPModel`` / ``SiglipModel`` folders written offline (random init + ``save_pretrained``).

``write_tiny_clip(folder)`` / ``write_tiny_siglip(folder)`` write what a hub export holds: ``config.json``,
``model.safetensors``, a fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``: a word-level vocabulary
with CLIP's BOS/EOS template, or SigLIP's EOS-only one) and ``preprocessor_config.json``. 32 px images, width 32,
two layers: the same scale as ``tiny_clip``. Random weights are drawn from a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = sorted(set(
    "glioma meningioma pituitary tumor normal brain a an the of in on with no photo picture image scan mri mr ct "
    "showing x . , dark bright round odd chest lung skin cell tissue abnormal medical histopathology".split()))
CONTEXT = {"clip": 32, "siglip": 16}


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "clip":  # BOS text EOS, padded with EOS (as OpenAI CLIP); EOS is the highest id
        specials = {"unk": "<|unk|>", "bos": "<|startoftext|>", "eos": "<|endoftext|>"}
        vocab = {w: i for i, w in enumerate([specials["unk"], *WORDS, specials["bos"], specials["eos"]])}
        template = f"{specials['bos']} $A {specials['eos']}"
        marks = [(specials["bos"], vocab[specials["bos"]]), (specials["eos"], vocab[specials["eos"]])]
        pad = specials["eos"]
    else:  # SentencePiece-like layout: <pad>=0, </s>=1, <unk>=2; text EOS, padded with </s>
        specials = {"unk": "<unk>", "eos": "</s>"}
        vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
        template = "$A </s>"
        marks = [("</s>", 1)]
        pad = "</s>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=marks)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=specials["unk"], eos_token=specials["eos"],
                                   bos_token=specials.get("bos"), pad_token=pad, model_max_length=CONTEXT[kind])
    return fast, vocab


def _tower(**extra) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, **extra}


def write_tiny_clip(folder: Path, *, weights: bool = True) -> Path:
    """A tiny ``CLIPModel`` folder (patch 8 at 32 px, projection 16)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    tokenizer, vocab = _tokenizer("clip")
    config = CLIPConfig(
        text_config=_tower(vocab_size=len(vocab), max_position_embeddings=CONTEXT["clip"],
                           bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                           pad_token_id=vocab["<|endoftext|>"]),
        vision_config=_tower(image_size=32, patch_size=8), projection_dim=16)
    _save(CLIPModel, config, folder, weights)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_tiny_siglip(folder: Path, *, weights: bool = True) -> Path:
    """A tiny ``SiglipModel`` folder (patch 8 at 32 px, MAP head, embedding width 32)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = Path(folder)
    tokenizer, vocab = _tokenizer("siglip")
    config = SiglipConfig(
        text_config=_tower(vocab_size=len(vocab), max_position_embeddings=CONTEXT["siglip"], pad_token_id=1,
                           eos_token_id=1, projection_size=32),
        vision_config=_tower(image_size=32, patch_size=8))
    _save(SiglipModel, config, folder, weights)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(folder)
    return folder


def _save(model_class, config, folder: Path, weights: bool) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_class(config)
    if weights:
        model.save_pretrained(folder)  # safetensors
    else:
        config.save_pretrained(folder)


TINY_TRANSFORMERS = {"tiny_hf_clip": write_tiny_clip, "tiny_hf_siglip": write_tiny_siglip}
