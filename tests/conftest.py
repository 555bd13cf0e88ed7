"""Shared fixtures: tiny random-init backbones of both tower families and real images."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from promptbench.backbones import MODEL_CONFIG_DIR, build_backbone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
SHARED = REPO.parent / "shared" / "datasets"
TOWER_FAMILIES = ["tiny_clip", "tiny_biomedclip"]
BTMRI_CLASSES = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]


def tiny_backbone_cfg(name: str):
    return OmegaConf.create({"name": name, "source": f"local-dir:{MODEL_CONFIG_DIR / name}", "load_weights": False})


@pytest.fixture(scope="session", params=TOWER_FAMILIES)
def tiny_backbone(request):
    """A tiny random-init backbone, once per tower family (native open_clip / timm + HF BERT)."""
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
