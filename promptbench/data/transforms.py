"""Image transforms: Dassl-style eval (resize short side + center crop) and a deterministic train view.

Dassl defaults used by CoOp/BiomedCoOp/Biomed-DPT (``shared/reference/biomed_dpt_biomedcoop.md`` §3.3):
train = RandomResizedCrop(224, scale=(0.08, 1)), bicubic, no flip; test = resize short side + center crop.

The train transform is a pure function of (image, seed, epoch, index): the crop box and flip are drawn from
a torch RNG seeded with sha256(seed, epoch, index) inside ``torch.random.fork_rng``, so the global RNG is
untouched and an augmented view can be cached under the key (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from promptbench.data.records import stable_seed

__all__ = ["build_eval_transform", "build_train_transform", "DeterministicTrainTransform", "view_seed"]

_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


def _mode(interpolation: str) -> InterpolationMode:
    try:
        return _INTERPOLATION[interpolation.lower()]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}") from None


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of the augmented view of record ``index`` at ``epoch`` under run ``seed``."""
    return stable_seed("train_view", int(seed), int(epoch), int(index))


def build_eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic"
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to ``image_size``, center-crop, ToTensor, Normalize."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=_mode(interpolation)),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


class DeterministicTrainTransform:
    """RandomResizedCrop (+ optional horizontal flip) whose randomness is keyed by (seed, epoch, index)."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        flip: bool = False,
        interpolation: str = "bicubic",
    ) -> None:
        self.size = [int(image_size), int(image_size)]
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip = bool(flip)
        self.interpolation = _mode(interpolation)
        self.normalize = T.Normalize(list(mean), list(std))

    def params(self, img: Image.Image, seed: int, epoch: int, index: int) -> tuple[int, int, int, int, bool]:
        """(top, left, height, width, flip) for this view; pure in its arguments and the image size."""
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that records a Python
            # stack trace on every call (~10 ms per view on CPU-only machines); the drawn values are the same
            torch.default_generator.manual_seed(view_seed(seed, epoch, index))
            top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
            flip = self.flip and bool(torch.rand(1).item() < 0.5)
        return top, left, h, w, flip

    def __call__(self, img: Image.Image, seed: int, epoch: int, index: int) -> torch.Tensor:
        top, left, h, w, flip = self.params(img, seed, epoch, index)
        out = F.resized_crop(img, top, left, h, w, self.size, interpolation=self.interpolation)
        if flip:
            out = F.hflip(out)
        return self.normalize(F.to_tensor(out))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size[0]}, scale={self.scale}, ratio={self.ratio}, "
            f"flip={self.flip}, interpolation={self.interpolation.value})"
        )


def build_train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scale: Sequence[float] = (0.08, 1.0),
    flip: bool = False,
    interpolation: str = "bicubic",
) -> DeterministicTrainTransform:
    """A callable ``(img, seed, epoch, index) -> tensor``; see :class:`DeterministicTrainTransform`."""
    return DeterministicTrainTransform(image_size, mean, std, scale=scale, flip=flip, interpolation=interpolation)
