"""Load open_clip models by real name, hub id, local folder or checkpoint file — offline-safe.

Sources understood (``backbone.source``):

* a built-in open_clip name (``ViT-B-16``, ``ViT-B-16-quickgelu``) with ``backbone.pretrained`` = tag or file;
* ``hf-hub:org/repo`` (e.g. BiomedCLIP) — needs network or a filled HF cache;
* ``local-dir:/path`` or a plain folder path holding ``open_clip_config.json`` (+ weights, tokenizer files).
  Relative ``hf_model_name``/``hf_tokenizer_name`` entries are resolved against that folder, so a folder is
  self-contained (BiomedCLIP offline: put BiomedBERT's ``config.json`` and ``vocab.txt`` beside the weights
  and set both names to ``"."``).

Checkpoints load with ``weights_only=True`` unless the config explicitly opts out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from promptbench.filehash import file_hash
from promptbench.fileio import write_atomic
from promptbench.provenance import WEIGHT_NAMES, Unresolved, find_weights, hub_file, weights_file
from promptbench.rng import BUILD_SEED, isolated_rng

_WEIGHT_NAMES = WEIGHT_NAMES
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")


class BackboneLoadError(RuntimeError):
    """A backbone could not be built; the message says what to put where."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    preprocess: dict[str, Any]
    weights_path: Path | None
    weights_sha256: str | None = None  # of the file as it was loaded (set by load_open_clip)

    def __post_init__(self) -> None:
        if self.weights_path is not None and self.weights_sha256 is None:
            self.weights_sha256 = weights_hash(self.weights_path)  # right after loading: cached per file identity


def weights_hash(path: Path | None) -> str | None:
    """sha256 of a weights file (None for random init), hashed once per file identity (promptbench.filehash)."""
    return file_hash(path) if path is not None else None


def _resolve_local_cfg(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise BackboneLoadError(
            f"{cfg_path} not found: a local backbone folder needs open_clip_config.json "
            "(model_cfg + preprocess_cfg) beside its weights."
        )
    raw = json.loads(cfg_path.read_text())
    model_cfg = raw.get("model_cfg", raw)
    text_cfg = model_cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key)
        if name and (name.startswith(".") or (folder / name).exists()):
            text_cfg[key] = str((folder / name).resolve())
    return model_cfg, raw.get("preprocess_cfg", {})


def _register_cfg(model_cfg: dict[str, Any], folder: Path) -> str:
    """Register a resolved config with open_clip under a content-derived name and return that name."""
    blob = json.dumps(model_cfg, sort_keys=True)
    name = f"pb-{folder.name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"
    if name not in open_clip.list_models():
        tmp = Path(tempfile.gettempdir()) / "promptbench_model_cfgs"
        tmp.mkdir(exist_ok=True)
        write_atomic(tmp / f"{name}.json", blob)  # several workers register at once: never a torn file
        open_clip.add_model_config(tmp / f"{name}.json")
    return name


def _missing_weights_error(source: str, detail: str) -> BackboneLoadError:
    return BackboneLoadError(
        f"Weights for backbone '{source}' are not available offline ({detail}). Download the model folder "
        "(open_clip_config.json, open_clip_pytorch_model.bin, tokenizer files) on a machine with network, copy "
        "it here and set backbone.source=local-dir:/path/to/folder (or fill HF_HOME's hub cache)."
    )


@isolated_rng(BUILD_SEED)  # random init from a fixed seed; the caller's RNG streams are neither read nor advanced
def load_open_clip(
    source: str,
    pretrained: str | None = None,
    *,
    load_weights: bool = True,
    weights_only: bool = True,
    cache_dir: str | None = None,
) -> LoadedModel:
    """Build an open_clip model and its tokenizer from any supported source (see module docstring).

    The build runs on forked global RNGs seeded with :data:`~promptbench.rng.BUILD_SEED`: a random-init model is a
    function of its config, and building (or reusing a process-cached backbone) leaves the caller's state as is."""
    folder: Path | None = None
    if source.startswith("local-dir:"):
        folder = Path(source[len("local-dir:") :]).expanduser()
    elif not source.startswith("hf-hub:") and ("/" in source or source.startswith(".")):
        folder = Path(source).expanduser()

    if folder is not None:
        if not folder.is_dir():
            raise BackboneLoadError(
                f"Backbone folder {folder} does not exist. Point backbone.source at a folder holding "
                "open_clip_config.json and the weights (local-dir:/path)."
            )
        model_cfg, preprocess = _resolve_local_cfg(folder)
        name = _register_cfg(model_cfg, folder)
        weights = find_weights(folder) if load_weights else None
        if pretrained and load_weights:  # honoured when it is a weights file, refused otherwise (never ignored)
            if not Path(str(pretrained)).expanduser().is_file():
                raise BackboneLoadError(
                    f"backbone.pretrained={pretrained} is not a weights file; with a local-folder backbone "
                    f"({folder}) it must be a file path, or null to use the folder's own weights."
                )
            weights = Path(str(pretrained)).expanduser()
        if load_weights and weights is None:
            raise BackboneLoadError(
                f"No weights in {folder}: expected one of {', '.join(_WEIGHT_NAMES)}. "
                "Set backbone.load_weights=false for a random-init model."
            )
        model = open_clip.create_model(
            name,
            pretrained=str(weights) if weights else None,
            pretrained_text=False,
            weights_only=weights_only,
        )
        tok_cfg = model_cfg.get("text_cfg", {})
        if tok_cfg.get("hf_tokenizer_name"):
            tok_src = folder if any((folder / f).exists() for f in _TOKENIZER_FILES) else tok_cfg["hf_tokenizer_name"]
            tokenizer = open_clip.tokenizer.HFTokenizer(
                str(tok_src), context_length=tok_cfg.get("context_length", 77)
            )
        else:
            tokenizer = open_clip.get_tokenizer(name)
        return LoadedModel(model, tokenizer, preprocess, weights)

    if source.startswith("hf-hub:"):
        try:
            model, preprocess_fn = open_clip.create_model_from_pretrained(source, cache_dir=cache_dir)
            tokenizer = open_clip.get_tokenizer(source, cache_dir=cache_dir)
        except Exception as err:  # offline / missing cache
            raise _missing_weights_error(source, type(err).__name__) from err
        del preprocess_fn
        # the snapshot file open_clip just loaded (safetensors first): its hash and revision go in every result
        hub_weights = hub_file(source[len("hf-hub:"):], cache_dir=cache_dir)
        return LoadedModel(model, tokenizer, dict(model.visual.preprocess_cfg), hub_weights)

    if source not in open_clip.list_models():
        raise BackboneLoadError(
            f"Unknown open_clip model '{source}'. Use a built-in name (open_clip.list_models()), "
            "hf-hub:org/repo or local-dir:/path."
        )
    weights: Path | None = None
    if pretrained and load_weights and Path(pretrained).expanduser().is_file():
        weights = Path(pretrained).expanduser()
    elif pretrained and load_weights and open_clip.get_pretrained_cfg(source, pretrained) == {}:
        if "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise BackboneLoadError(
                f"Weights file {pretrained} not found: download it (see conf/backbone/*.yaml for the source), put it "
                f"there or set backbone.pretrained=/path/to/file."
            )
        raise BackboneLoadError(
            f"backbone.pretrained='{pretrained}' is neither a file nor a known tag of {source}. "
            f"Known tags: {open_clip.list_pretrained_tags_by_model(source)}."
        )
    try:
        model = open_clip.create_model(
            source,
            pretrained=(str(weights) if weights else pretrained) if load_weights else None,
            weights_only=weights_only,
            cache_dir=cache_dir,
        )
    except RuntimeError as err:
        if "TorchScript" in str(err):
            raise BackboneLoadError(
                f"{pretrained} is a TorchScript archive (the original OpenAI .pt). It needs "
                "backbone.weights_only=false, which executes pickled code: only do this for files you trust."
            ) from err
        raise BackboneLoadError(
            f"Weights '{pretrained}' of {source} are not available offline ({str(err).splitlines()[0][:100]}). "
            f"Download open_clip_pytorch_model.bin for that tag on a machine with network and set "
            f"backbone.pretrained=/path/to/open_clip_pytorch_model.bin (or fill HF_HOME's hub cache)."
        ) from err
    if weights is None and pretrained and load_weights:  # an open_clip tag: the cached file it was loaded from
        with contextlib.suppress(Unresolved, OSError):
            weights = weights_file({"source": source, "pretrained": pretrained, "cache_dir": cache_dir})
    return LoadedModel(model, open_clip.get_tokenizer(source), dict(model.visual.preprocess_cfg), weights)
