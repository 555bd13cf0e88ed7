"""open_clip models by built-in name, ``hf-hub:`` id or local folder (``open_clip_config.json``) — offline-safe.

* a built-in open_clip name (``ViT-B-16``, ``ViT-B-16-quickgelu``) with ``backbone.pretrained`` = tag or file;
* ``hf-hub:org/repo`` (e.g. BiomedCLIP): needs network, or the repo (and the text tower its config names) in the
  HF cache (``hf download`` on a login node, ``HF_HUB_OFFLINE=1`` on the compute node; :mod:`..hub_offline`);
* a local folder holding ``open_clip_config.json`` (+ weights, tokenizer files). Relative
  ``hf_model_name``/``hf_tokenizer_name`` entries are resolved against that folder, so a folder is self-contained
  (BiomedCLIP offline: ``hf download ... --local-dir`` of the repo, plus BiomedBERT's ``config.json`` into the same
  folder; a hub-id ``hf_model_name`` is then read from the folder's ``config.json``, no edit needed).

Checkpoints load with ``weights_only=True`` unless the config explicitly opts out. open_clip itself is imported
only when a model is built or a pretrained tag is looked up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from promptbench.backbones.hub_offline import download_commands, folder_text_tower, missing_text_tower
from promptbench.backbones.sources import (
    FOLDER_FORMATS,
    SOURCES,
    BackboneLoadError,
    BackboneSource,
    FolderFormat,
    LoadedModel,
)
from promptbench.backbones.weights import (
    HUB_WEIGHT_NAMES,
    WEIGHT_NAMES,
    Unresolved,
    cfg_get,
    find_weights,
    hub_file,
)
from promptbench.core.fileio import write_atomic

CONFIG_FILE = "open_clip_config.json"
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def _load_flags(cfg: Any) -> tuple[bool, bool, str | None]:
    return (bool(cfg_get(cfg, "load_weights", True)), bool(cfg_get(cfg, "weights_only", True)),
            cfg_get(cfg, "cache_dir"))


def _resolve_local_cfg(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = json.loads((folder / CONFIG_FILE).read_text())
    model_cfg = raw.get("model_cfg", raw)
    text_cfg = model_cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key)
        if name and (name.startswith(".") or (folder / name).exists()):
            text_cfg[key] = str((folder / name).resolve())
        elif name and key == "hf_model_name" and folder_text_tower(folder):  # the tower's config.json beside it
            text_cfg[key] = str(folder.resolve())
    return model_cfg, raw.get("preprocess_cfg", {})


def _register_cfg(model_cfg: dict[str, Any], folder: Path) -> str:
    """Register a resolved config with open_clip under a content-derived name and return that name."""
    import open_clip

    blob = json.dumps(model_cfg, sort_keys=True)
    name = f"pb-{folder.name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"
    if name not in open_clip.list_models():
        tmp = Path(tempfile.gettempdir()) / "promptbench_model_cfgs"
        tmp.mkdir(exist_ok=True)
        write_atomic(tmp / f"{name}.json", blob)  # several workers register at once: never a torn file
        open_clip.add_model_config(tmp / f"{name}.json")
    return name


@FOLDER_FORMATS.register("open_clip")
class OpenClipFolder(FolderFormat):
    """A folder written for ``open_clip.create_model``: ``open_clip_config.json`` (model_cfg + preprocess_cfg)."""

    describe = f"{CONFIG_FILE} (model_cfg + preprocess_cfg) and one of {', '.join(WEIGHT_NAMES)}"

    def recognises(self, folder: Path) -> bool:
        return (folder / CONFIG_FILE).is_file()

    def weights_file(self, folder: Path, cfg: Any) -> Path | None:
        pretrained = cfg_get(cfg, "pretrained")
        if pretrained:
            return Path(str(pretrained)).expanduser()
        found = find_weights(folder)
        if found is None:
            raise Unresolved(f"no weights in {folder}")
        return found

    def check(self, folder: Path, cfg: Any) -> str | None:
        if bool(cfg_get(cfg, "load_weights", True)) and not cfg_get(cfg, "pretrained") and find_weights(folder) is None:
            return f"no weights in {folder}: expected one of {', '.join(WEIGHT_NAMES)}"
        return None

    def load(self, folder: Path, cfg: Any) -> LoadedModel:
        import open_clip

        load_weights, weights_only, _ = _load_flags(cfg)
        pretrained = cfg_get(cfg, "pretrained")
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
                f"No weights in {folder}: expected one of {', '.join(WEIGHT_NAMES)}. "
                "Set backbone.load_weights=false for a random-init model."
            )
        model = open_clip.create_model(name, pretrained=str(weights) if weights else None, pretrained_text=False,
                                       weights_only=weights_only)
        tok_cfg = model_cfg.get("text_cfg", {})
        if tok_cfg.get("hf_tokenizer_name"):
            tok_src = folder if any((folder / f).exists() for f in _TOKENIZER_FILES) else tok_cfg["hf_tokenizer_name"]
            tokenizer = open_clip.tokenizer.HFTokenizer(str(tok_src), context_length=tok_cfg.get("context_length", 77))
        else:
            tokenizer = open_clip.get_tokenizer(name)
        return LoadedModel(model, tokenizer, preprocess, weights)


def _missing_weights_error(source: str, detail: str) -> BackboneLoadError:
    commands = "; ".join(download_commands(source.removeprefix("hf-hub:")))
    return BackboneLoadError(
        f"Weights for backbone '{source}' are not available offline ({detail}). On a machine with network run "
        f"`{commands}` (fills HF_HOME's hub cache; copy it here), or "
        "download the model folder (open_clip_config.json, open_clip_pytorch_model.bin, tokenizer files) and set "
        "backbone.source=local-dir:/path/to/folder."
    )


@SOURCES.register("hf-hub")
class HubSource(BackboneSource):
    """``hf-hub:org/repo``: an open_clip model repository, from the network or the local HF cache."""

    def load(self, location: str, cfg: Any) -> LoadedModel:
        import open_clip

        _, _, cache_dir = _load_flags(cfg)
        source = f"hf-hub:{location}"
        try:
            model, preprocess_fn = open_clip.create_model_from_pretrained(source, cache_dir=cache_dir)
            tokenizer = open_clip.get_tokenizer(source, cache_dir=cache_dir)
        except Exception as err:  # offline / missing cache
            raise _missing_weights_error(source, type(err).__name__) from err
        del preprocess_fn
        # the snapshot file open_clip just loaded (safetensors first): its hash and revision go in every result
        hub_weights = hub_file(location, cache_dir=cache_dir)
        return LoadedModel(model, tokenizer, dict(model.visual.preprocess_cfg), hub_weights)

    def check(self, location: str, cfg: Any) -> str | None:
        if not bool(cfg_get(cfg, "load_weights", True)) or not _offline():
            return None
        if hub_file(location, (CONFIG_FILE,), cfg_get(cfg, "cache_dir")) is None:
            return (f"hf-hub:{location} is not in the Hugging Face cache and HF_HUB_OFFLINE=1: run "
                    f"`hf download {location}` where there is network, or set "
                    f"backbone.source=local-dir:/path/to/folder")
        return missing_text_tower(location, cfg_get(cfg, "cache_dir"))  # BiomedCLIP: its BiomedBERT config too

    def weights_file(self, location: str, cfg: Any) -> Path | None:
        found = hub_file(location, cache_dir=cfg_get(cfg, "cache_dir"))
        if found is None:
            raise Unresolved(f"hf-hub:{location} is not in the HF cache")
        return found


def _split_hub(hub: str) -> tuple[str, str]:
    parts = hub.strip("/").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _tag_file(source: str, tag: str, cache_dir: str | None) -> Path:
    """The cached file of an open_clip pretrained tag (``ViT-B-16`` + ``openai``)."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(source, tag) or {}
    hub = str(pcfg.get("hf_hub") or "")
    if hub:
        repo_id, name = _split_hub(hub)
        found = hub_file(repo_id, (name,) if name else HUB_WEIGHT_NAMES, cache_dir)
        if found is not None:
            return found
    url = str(pcfg.get("url") or "")
    if url:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if candidate.is_file():
            return candidate
    raise Unresolved(f"{source}/{tag} is not in the local caches")


@SOURCES.register("open_clip")
class NamedSource(BackboneSource):
    """A model of open_clip's own registry (``ViT-B-16``) with ``backbone.pretrained`` = a tag or a weights file."""

    def check(self, location: str, cfg: Any) -> str | None:
        pretrained = cfg_get(cfg, "pretrained")
        if bool(cfg_get(cfg, "load_weights", True)) and pretrained and _is_file_like(str(pretrained)):
            if not Path(str(pretrained)).expanduser().is_file():
                return f"weights file {pretrained} not found (backbone.pretrained)"
        return None

    def weights_file(self, location: str, cfg: Any) -> Path | None:
        pretrained = cfg_get(cfg, "pretrained")
        if pretrained and Path(str(pretrained)).expanduser().is_file():
            return Path(str(pretrained)).expanduser()
        if pretrained:
            return _tag_file(location, str(pretrained), cfg_get(cfg, "cache_dir"))
        return None

    def load(self, location: str, cfg: Any) -> LoadedModel:
        import open_clip

        source = location
        load_weights, weights_only, cache_dir = _load_flags(cfg)
        pretrained = cfg_get(cfg, "pretrained")
        if source not in open_clip.list_models():
            raise BackboneLoadError(
                f"Unknown open_clip model '{source}'. Use a built-in name (open_clip.list_models()), "
                "hf-hub:org/repo or local-dir:/path."
            )
        weights: Path | None = None
        if pretrained and load_weights and Path(pretrained).expanduser().is_file():
            weights = Path(pretrained).expanduser()
        elif pretrained and load_weights and open_clip.get_pretrained_cfg(source, pretrained) == {}:
            if _is_file_like(pretrained):
                raise BackboneLoadError(
                    f"Weights file {pretrained} not found: download it (see conf/backbone/*.yaml for the source), put "
                    f"it there or set backbone.pretrained=/path/to/file."
                )
            raise BackboneLoadError(
                f"backbone.pretrained='{pretrained}' is neither a file nor a known tag of {source}. "
                f"Known tags: {open_clip.list_pretrained_tags_by_model(source)}."
            )
        try:
            model = open_clip.create_model(
                source, pretrained=(str(weights) if weights else pretrained) if load_weights else None,
                weights_only=weights_only, cache_dir=cache_dir,
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
                weights = self.weights_file(location, cfg)
        return LoadedModel(model, open_clip.get_tokenizer(source), dict(model.visual.preprocess_cfg), weights)


def _is_file_like(pretrained: str) -> bool:
    return "/" in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES)


def load_open_clip(source: str, pretrained: str | None = None, *, load_weights: bool = True,
                   weights_only: bool = True, cache_dir: str | None = None) -> LoadedModel:
    """Load ``source`` as :func:`promptbench.backbones.sources.load` does for a config with these keys."""
    from promptbench.backbones.sources import load

    return load({"source": source, "pretrained": pretrained, "load_weights": load_weights,
                 "weights_only": weights_only, "cache_dir": cache_dir})
