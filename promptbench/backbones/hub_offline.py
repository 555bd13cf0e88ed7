"""What an ``hf-hub:`` open_clip model needs in the Hugging Face cache to load offline, and the download commands.

An open_clip hub repo with a Hugging Face text tower (BiomedCLIP) names that tower by hub id in its
``open_clip_config.json`` (``text_cfg.hf_model_name`` / ``hf_tokenizer_name``, e.g.
``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``). Even without its weights, open_clip reads that repo's
``config.json`` (and the tokenizer's ``vocab.txt``), so offline both repos must be cached::

    hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
    hf download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract config.json vocab.txt

(``huggingface-cli download ...`` with huggingface_hub < 1.0). See docs/install.md, "Hub weights offline".
"""

from __future__ import annotations

import json
from pathlib import Path

from promptbench.backbones.weights import hub_file

#: files of a text tower's hub repo that open_clip reads when building it without its weights
TEXT_TOWER_FILES = ("config.json", "vocab.txt")


def _text_tower_command(repo: str) -> str:
    return f"hf download {repo} {' '.join(TEXT_TOWER_FILES)}"


def text_tower_repos(location: str, cache_dir: str | None = None) -> list[str]:
    """Hub ids of the text tower and tokenizer that a cached ``open_clip_config.json`` of ``location`` names."""
    path = hub_file(location, ("open_clip_config.json",), cache_dir)
    if path is None:
        return []
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    text = (raw.get("model_cfg", raw) or {}).get("text_cfg") or {}
    names = [text.get("hf_model_name"), text.get("hf_tokenizer_name")]
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n.count("/") == 1
                              and not n.startswith((".", "/", "~"))))


def download_commands(location: str, cache_dir: str | None = None) -> list[str]:
    """``hf download`` commands that fill the cache for ``hf-hub:<location>`` (the repo, then its text tower's
    files when the cached config names one)."""
    extra = [_text_tower_command(repo) for repo in text_tower_repos(location, cache_dir)]
    return [f"hf download {location}", *extra]


def missing_text_tower(location: str, cache_dir: str | None = None) -> str | None:
    """One line when ``location`` is cached but the text tower its config names is not (else None)."""
    missing = [repo for repo in text_tower_repos(location, cache_dir)
               if hub_file(repo, TEXT_TOWER_FILES[:1], cache_dir) is None]
    if not missing:
        return None
    commands = "; ".join(_text_tower_command(repo) for repo in missing)
    return (f"hf-hub:{location} is cached, but the text tower its open_clip_config.json names is not "
            f"({', '.join(missing)}) and HF_HUB_OFFLINE=1: run `{commands}` where there is network "
            f"(docs/install.md, 'Hub weights offline')")


def folder_text_tower(folder: Path) -> bool:
    """Whether ``folder/config.json`` is a single transformers model config (a text tower's, e.g. BiomedBERT's
    put beside a ``--local-dir`` download), not a two-tower CLIP config some hub repos also ship."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "model_type" in raw and not {"text_config", "vision_config"} & set(raw)
