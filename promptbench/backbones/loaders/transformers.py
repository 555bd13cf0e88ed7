"""transformers folders: a ``CLIPModel`` / ``SiglipModel`` written by ``save_pretrained`` (+ its tokenizer and
processor files), as many medical CLIPs ship on the hub (PubMedCLIP variants, MedSigLIP, UniMed-CLIP exports).

Recognised by what the folder holds: a ``config.json`` whose ``model_type`` is ``clip`` or ``siglip`` and no
``open_clip_config.json`` (PMC-CLIP / BiomedCLIP folders hold both, with a BERT ``config.json``: those are open_clip
folders). Loading is offline (``local_files_only``), in float32, from safetensors (or a ``pytorch_model.bin`` read
with ``weights_only=True``: no pickled code runs unless ``backbone.weights_only=false``); with
``backbone.load_weights=false`` the model is random-init from ``config.json`` alone. Preprocessing comes from
``preprocessor_config.json`` (or ``processor_config.json``'s ``image_processor``) with CLIP / SigLIP defaults.

Offline route: ``huggingface-cli download <repo> --local-dir <folder>`` on a machine with network, then
``backbone.source=local-dir:<folder>`` on the compute node. transformers is imported only inside ``load``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptbench.backbones.sources import FOLDER_FORMATS, BackboneLoadError, FolderFormat, LoadedModel
from promptbench.backbones.weights import Unresolved, cfg_get, find_weights

CONFIG_FILE = "config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
#: ``config.json`` ``model_type`` → transformers model class
MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
#: weights looked for, in this order (sharded checkpoints: their index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: any one of these is a tokenizer (fast ``tokenizer.json``, CLIP BPE ``vocab.json``, SentencePiece, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
#: PIL resample codes of transformers image processors → promptbench interpolation names
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_DEFAULT_NORM = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                 "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_type(folder: Path) -> str | None:
    """``model_type`` of the folder's ``config.json`` (None when absent or unreadable)."""
    data = _read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
    return str(data.get("model_type")) if data and data.get("model_type") else None


def preprocess_cfg(folder: Path, kind: str, image_size: int) -> dict[str, Any]:
    """``{image_size, mean, std, interpolation}`` from the folder's image-processor config, else the defaults."""
    raw: dict[str, Any] = {}
    for name in PROCESSOR_FILES:
        data = _read_json(folder / name) if (folder / name).is_file() else None
        if data:
            raw = data.get("image_processor", data) if isinstance(data.get("image_processor"), dict) else data
            break
    size: Any = raw.get("crop_size") if raw.get("do_center_crop", True) and raw.get("crop_size") else raw.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or size.get("width")
    mean, std = _DEFAULT_NORM.get(kind, _DEFAULT_NORM["clip"])
    return {
        "image_size": int(size or image_size),
        "mean": tuple(float(v) for v in raw.get("image_mean") or mean),
        "std": tuple(float(v) for v in raw.get("image_std") or std),
        "interpolation": _RESAMPLE.get(raw.get("resample"), "bicubic"),
    }


@FOLDER_FORMATS.register("transformers")
class TransformersFolder(FolderFormat):
    """A ``save_pretrained`` folder of a transformers ``CLIPModel`` or ``SiglipModel``."""

    describe = (f"{CONFIG_FILE} with model_type {' or '.join(MODEL_CLASSES)} (transformers save_pretrained), "
                f"{WEIGHT_FILES[0]} and tokenizer files")

    def recognises(self, folder: Path) -> bool:
        return not (folder / OPEN_CLIP_CONFIG).is_file() and model_type(folder) in MODEL_CLASSES

    def weights_file(self, folder: Path, cfg: Any) -> Path | None:
        found = find_weights(folder, WEIGHT_FILES)
        if found is None:
            raise Unresolved(f"no weights in {folder}")
        return found  # sharded: the index file

    def check(self, folder: Path, cfg: Any) -> str | None:
        problems = []
        if cfg_get(cfg, "pretrained"):
            problems.append(f"backbone.pretrained={cfg_get(cfg, 'pretrained')} is not used with a transformers folder "
                            f"({folder}): put the weights in the folder and set it to null")
        if bool(cfg_get(cfg, "load_weights", True)) and find_weights(folder, WEIGHT_FILES) is None:
            problems.append(f"no weights in {folder}: expected {' or '.join(WEIGHT_FILES)}")
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            problems.append(f"no tokenizer in {folder}: expected one of {', '.join(TOKENIZER_FILES)} "
                            "(with tokenizer_config.json)")
        return "; ".join(problems) or None

    def load(self, folder: Path, cfg: Any) -> LoadedModel:
        import torch
        import transformers

        from promptbench.backbones.adapters.transformers import HFDualEncoder, HFTokenizer

        problem = self.check(folder, cfg)
        if problem:
            hint = " Set backbone.load_weights=false for a random-init model." if "no weights" in problem else ""
            raise BackboneLoadError(problem + "." + hint)
        kind = str(model_type(folder))
        model_class = getattr(transformers, MODEL_CLASSES[kind])
        weights = find_weights(folder, WEIGHT_FILES) if bool(cfg_get(cfg, "load_weights", True)) else None
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # no per-tensor progress bar in every run's log
        try:
            if weights is not None:
                model, info = model_class.from_pretrained(
                    folder, local_files_only=True, dtype=torch.float32, output_loading_info=True,
                    use_safetensors=weights.name.startswith("model.safetensors"),
                    weights_only=bool(cfg_get(cfg, "weights_only", True)))
                missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
                if missing:
                    raise BackboneLoadError(f"{weights} lacks {len(missing)} weights of {MODEL_CLASSES[kind]} "
                                            f"(e.g. {', '.join(sorted(missing)[:3])}); it is not a {kind} checkpoint")
            else:
                config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
                model = model_class(config)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except BackboneLoadError:
            raise
        except Exception as err:  # corrupt or foreign files: one line naming the folder
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise BackboneLoadError(f"cannot load the transformers folder {folder}: {type(err).__name__}: {first}") \
                from err
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        model = model.float().eval()
        text_cfg = model.config.text_config
        limit = getattr(tokenizer, "model_max_length", None)
        context = min(int(limit), text_cfg.max_position_embeddings) if isinstance(limit, int) and limit > 0 \
            else text_cfg.max_position_embeddings
        preprocess = preprocess_cfg(folder, kind, int(model.config.vision_config.image_size))
        return LoadedModel(HFDualEncoder(model), HFTokenizer(tokenizer, context), preprocess, weights)
