"""Shared fixtures: tiny random-init backbones of every tower family and real images."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from promptbench.backbones import MODEL_CONFIG_DIR, build_backbone  # noqa: E402
from tests.tiny_transformers import TINY_TRANSFORMERS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
SHARED = REPO.parent / "shared" / "datasets"
BTMRI_CLASSES = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]

#: every tiny test backbone: the ``conf/backbone/tiny_*.yaml`` configs (folders in ``backbones/model_configs``) and
#: the transformers ``CLIPModel`` / ``SiglipModel`` folders of ``tests/tiny_transformers.py`` (written on first use)
CONF_TINY_BACKBONES = sorted(p.stem for p in (REPO / "conf" / "backbone").glob("tiny_*.yaml"))
TINY_BACKBONES = CONF_TINY_BACKBONES + sorted(TINY_TRANSFORMERS)
_HF_ROOT: list[Path] = []


def tiny_transformers_folder(name: str) -> Path:
    """The tiny transformers folder ``name``, written once per session into a temporary directory."""
    if not _HF_ROOT:
        _HF_ROOT.append(Path(tempfile.mkdtemp(prefix="pb-tiny-transformers-")))
        atexit.register(shutil.rmtree, _HF_ROOT[0], True)
    folder = _HF_ROOT[0] / name
    if not (folder / "tokenizer_config.json").is_file():
        TINY_TRANSFORMERS[name](folder)
    return folder


def tiny_backbone_cfg(name: str):
    if name in TINY_TRANSFORMERS:  # a save_pretrained folder with its (seeded random) weights
        return OmegaConf.create({"name": name, "source": f"local-dir:{tiny_transformers_folder(name)}",
                                 "load_weights": True})
    return OmegaConf.create({"name": name, "source": f"local-dir:{MODEL_CONFIG_DIR / name}", "load_weights": False})


def backbone_overrides(name: str) -> list[str]:
    """Hydra overrides selecting tiny backbone ``name`` (transformers folders through ``backbone=hf_folder``)."""
    if name in TINY_TRANSFORMERS:
        folder = tiny_transformers_folder(name)
        return ["backbone=hf_folder", f"backbone.name={name}", f"backbone.source=local-dir:{folder}"]
    return [f"backbone={name}"]


def has_image_tokens(name: str) -> bool:
    """Whether a tiny backbone's image tower is a token transformer, read from its files (nothing is built):
    an open_clip ``vision_cfg.layers`` list is a ``ModifiedResNet`` (CNN), as open_clip decides."""
    config = MODEL_CONFIG_DIR / name / "open_clip_config.json"
    if name in TINY_TRANSFORMERS or not config.is_file():
        return True
    return not isinstance(json.loads(config.read_text())["model_cfg"]["vision_cfg"].get("layers"), (list, tuple))


#: token-tower families of the ``tiny_backbone`` fixture: the ``conf/backbone/tiny_*`` ones run by default, the
#: transformers ones under ``-m slow`` (the contract matrix and ``test_backbones_transformers`` cover them by default)
TOWER_FAMILIES = [name if name in CONF_TINY_BACKBONES else pytest.param(name, marks=pytest.mark.slow)
                  for name in TINY_BACKBONES if has_image_tokens(name)]


@pytest.fixture(scope="session", params=TOWER_FAMILIES)
def tiny_backbone(request):
    """A tiny random-init backbone, once per token-tower family (native open_clip / timm + HF BERT / transformers
    CLIP / SigLIP)."""
    torch.manual_seed(0)
    return build_backbone(tiny_backbone_cfg(request.param))


@pytest.fixture(scope="session")
def btmri_dataset_cfg():
    return OmegaConf.create({
        "name": "btmri", "modality": "MRI", "organ": "brain", "classnames": BTMRI_CLASSES,
        "template": "a brain MRI showing {}.",
        "templates": ["a brain MRI showing {}.", "an MRI scan of {}.", "{}"],
        "descriptions": None,
    })


def _btmri_root() -> Path | None:
    for root in (DEMO / "BTMRI", SHARED / "BTMRI"):
        if (root / "split_BTMRI.json").is_file():
            return root
    return None


@pytest.fixture(scope="session")
def real_batch():
    """32 real BTMRI training images (8 per class) at 32 px, CLIP-normalised, with labels."""
    from PIL import Image
    from torchvision import transforms as T

    root = _btmri_root()
    if root is None:
        pytest.skip("no BTMRI images: neither data/demo/BTMRI nor ../shared/datasets/BTMRI exists")
    split = json.loads((root / "split_BTMRI.json").read_text())["train"]
    picked, counts = [], {}
    for rel, label, _ in split:
        if counts.get(label, 0) < 8:
            counts[label] = counts.get(label, 0) + 1
            picked.append((rel, label))
    tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                    T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    images = torch.stack([tf(Image.open(root / "BTMRI" / rel).convert("RGB")) for rel, _ in picked])
    return images, torch.tensor([label for _, label in picked])


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models run faster on one thread, and the CI box is shared (modules opt in through ``pytestmark``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Samples(Dataset):
    """In-memory (image, label) pairs as the data modules' batches (``index`` counted from ``offset``)."""

    def __init__(self, images, labels, offset=0):
        self.images, self.labels, self.offset = images, labels, offset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "index": i + self.offset}
