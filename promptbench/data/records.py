"""Split records, the in-memory dataset description, and stable hashing helpers."""

from __future__ import annotations

import logging
import posixpath
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from promptbench.core.hashing import canonical_json as canonical_json  # re-exported for the data layer
from promptbench.core.hashing import stable_hash as stable_hash
from promptbench.core.hashing import stable_seed as stable_seed

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: PIL modes converted to RGB (anything else is refused in one line); see :func:`to_rgb`
ACCEPTED_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa", "CMYK", "YCbCr", "I;16", "I;16L", "I;16B",
                  "I;16N", "I", "F")


class ImageError(ValueError):
    """An image that cannot be read or converted (the message names the file)."""


#: how >8-bit images become 8-bit (``dataset.intensity``): see :func:`scale_to_uint8`
INTENSITY_MODES = ("dtype", "range")


def scale_to_uint8(array: np.ndarray, intensity: str = "dtype") -> np.ndarray:
    """Map a >8-bit image onto 0..255 linearly (NaN/inf count as the lowest finite value).

    ``dtype`` (default): integer data as 16-bit (0..65535 → 0..255, so a 16-bit copy of an 8-bit image, value
    × 257, gives the 8-bit image back exactly), float data in [0, 1] as fractions; data outside those ranges fall
    back to ``range``. ``range``: the image's own [min, max] → 0..255 (a constant image: 0), for data that use
    only part of the container, e.g. 12-bit scans in 16-bit files, which ``dtype`` shows 16 times too dark.
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"dataset.intensity={intensity!r} is not one of {INTENSITY_MODES}")
    is_float = np.issubdtype(np.asarray(array).dtype, np.floating)
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        array = np.where(finite, array, float(array[finite].min()) if finite.any() else 0.0)
    lo, hi = float(array.min()), float(array.max())
    if intensity == "dtype":
        top = 1.0 if is_float else 65535.0
        if lo >= 0 and hi <= top:
            return np.round(array * (255.0 / top)).astype(np.uint8)
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def array_to_rgb(array: np.ndarray, where: str = "array", intensity: str = "dtype") -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as an RGB image: uint8 as is, anything else scaled by
    :func:`scale_to_uint8`; 4 channels are composited over black."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"{where}: image array of shape {array.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if array.dtype != np.uint8:
        if array.dtype == np.bool_:
            array = array.astype(np.uint8) * 255
        else:
            array = scale_to_uint8(array, intensity)
    if array.ndim == 3 and array.shape[-1] == 4:
        return _over_black(Image.fromarray(np.ascontiguousarray(array), "RGBA"))
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _over_black(img: Image.Image) -> Image.Image:
    """An image with alpha composited over a black background (the background of scans), as RGB."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image, where: str = "image", intensity: str = "dtype") -> Image.Image:
    """Convert any accepted PIL mode to RGB without losing the picture.

    * 8-bit ``L``/``RGB``/``CMYK``/``YCbCr``/``1``: PIL's conversion (grey replicated to 3 channels).
    * 16-bit ``I;16*``, 32-bit ``I``, float ``F``: scaled linearly to 0..255 by :func:`scale_to_uint8` with
      ``intensity`` (``dataset.intensity``; PIL's ``convert("RGB")`` clips them to 0/255, binarising the scan).
    * alpha (``RGBA``, ``LA``, ``PA``, palette with transparency): composited over black.
    * palette ``P``: expanded through the palette.
    Other modes raise :class:`ImageError` naming ``where``.
    """
    mode = img.mode
    if mode not in ACCEPTED_MODES:
        raise ImageError(f"{where}: image mode {mode!r} is not supported (accepted: {', '.join(ACCEPTED_MODES)})")
    if mode in ("RGB",):
        return img.copy() if img.readonly else img
    if mode.startswith("I") or mode == "F":
        return array_to_rgb(np.asarray(img), where, intensity)
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        return _over_black(img.convert("RGBA")) if has_alpha else img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return _over_black(img)
    return img.convert("RGB")


def escapes_root(key: str) -> bool:
    """True when a split entry's relative path would leave the image root: absolute (``/x``, ``C:/x``,
    ``\\\\server``) or climbing out with ``..``. Checked lexically, so a symlinked dataset folder or image root
    still works."""
    posix = key.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(key).drive:
        return True
    norm = posixpath.normpath(posix)
    return norm == ".." or norm.startswith("../")


_BOMB_WARNED: set[str] = set()


def open_image(path: Path) -> Image.Image:
    """``Image.open(path)`` whose decompression-bomb guard names the file: PIL's ``DecompressionBombError``
    (over 2x ``Image.MAX_IMAGE_PIXELS``) becomes an :class:`ImageError`, its ``DecompressionBombWarning`` a
    warning logged once per file (the image is still read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: refused by PIL's decompression-bomb guard ({err}); downscale the image or raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS") from None
    except Image.DecompressionBombWarning as err:
        if str(path) not in _BOMB_WARNED:
            _BOMB_WARNED.add(str(path))
            log.warning("%s: %s (PIL.Image.MAX_IMAGE_PIXELS=%s)", path, err, Image.MAX_IMAGE_PIXELS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)


def upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied (``ImageOps.exif_transpose``); an image
    without an orientation tag (or with the default, 1) is returned as is, pixels untouched."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) in (1, None):
        return img
    return ImageOps.exif_transpose(img)


@dataclass(frozen=True)
class Record:
    """One labelled image: ``key`` is a path relative to the image root, or ``"<split>/<idx>"`` for npz."""

    key: str
    label: int


def records_to_lists(records: Sequence[Record]) -> list[list[Any]]:
    """``[[key, label], ...]`` in the given order (JSON-friendly)."""
    return [[r.key, int(r.label)] for r in records]


def compute_split_hash(train: Sequence[Record], val: Sequence[Record], test: Sequence[Record]) -> str:
    """sha256 (16 hex) of the canonical JSON of the three split lists, in file order."""
    return stable_hash({s: records_to_lists(r) for s, r in zip(SPLITS, (train, val, test))})


@dataclass
class DatasetSplits:
    """The train/val/test record lists of one dataset plus how to load their images.

    ``image_root`` is the folder keys are relative to (``None`` for npz data, which is read from
    ``npz_path`` and cached in memory on first use).
    """

    train: list[Record]
    val: list[Record]
    test: list[Record]
    classnames: list[str]
    image_root: Path | None
    split_hash: str
    name: str = ""
    npz_path: Path | None = None
    source: Path | None = None  # the split file (biomedcoop), dataset folder or npz file: named in messages
    intensity: str = "dtype"  # how >8-bit images become 8-bit (dataset.intensity; see scale_to_uint8)
    format: str = ""  # the dataset.format it was read with (promptbench.data.formats; "" when built by hand)
    #: details only the format's own hooks read (e.g. the listing line of each record, for pre-flight messages)
    format_info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def split(self, name: str) -> list[Record]:
        """The record list of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def load_image(self, key: str) -> Image.Image:
        """Load the image of ``key`` as an RGB PIL image (grayscale is replicated to 3 channels), upright (EXIF
        orientation applied); every reading error is an :class:`ImageError` naming the file."""
        if self.npz_path is not None:
            split, _, idx = key.partition("/")
            array = self._npz_images(split)[int(idx)]
            return array_to_rgb(array, f"{self.npz_path} {split}_images[{idx}]", self.intensity)
        if self.image_root is None:
            raise RuntimeError("DatasetSplits has neither image_root nor npz_path")
        if escapes_root(key):
            raise ImageError(f"{self.name or 'dataset'}: image key {key!r} is outside the image folder "
                             f"{self.image_root} (absolute, or escaping with '..')")
        path = self.image_root / key
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name or 'dataset'} image not found at {path} (listed in the split file); "
                "the dataset folder is incomplete: re-extract it or fix paths.data_root / dataset.root."
            )
        try:
            with open_image(path) as img:
                img.load()
                return to_rgb(upright(img), str(path), self.intensity)
        except ImageError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated / corrupt files (PIL's plugins raise OSError,
            # ValueError, SyntaxError, struct.error, ...): one line naming the file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ImageError(f"{path}: cannot read image ({reason})") from err

    def _npz_images(self, split: str) -> np.ndarray:
        if split not in self._arrays:
            assert self.npz_path is not None
            with np.load(self.npz_path) as data:
                for s in SPLITS:
                    if f"{s}_images" in data.files:
                        self._arrays[s] = data[f"{s}_images"]
        if split not in self._arrays:
            raise KeyError(f"{self.npz_path} has no '{split}_images' array")
        return self._arrays[split]
