"""Backbone sources: how ``backbone.source`` becomes a model, registered per kind so a new family is a new file.

``backbone.source`` is resolved to a kind and a location (:func:`resolve`):

* ``<prefix>:<location>`` for every registered prefix (``hf-hub:org/repo``, ``local-dir:/path``, ...);
* a path (contains ``/`` or starts with ``.``) is ``local-dir``;
* anything else is a model name of the ``open_clip`` kind (``ViT-B-16``).

A ``local-dir`` folder is recognised by what it holds: each registered :class:`FolderFormat` says whether a folder
is its kind (``open_clip_config.json`` for open_clip, a transformers ``config.json``, ...). Each source and folder
format owns the check of what it needs on disk (:func:`check`, asked by the sweep's inputs check without building
anything) and where its weights file is (:func:`weights_file`, for provenance): nobody else knows its file names.

Sources and folder formats live in the modules of :mod:`promptbench.backbones.loaders` (imported on first lookup;
they import their heavy libraries only inside ``load``) or in a distribution's ``promptbench.backbone_sources``
entry points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from promptbench.backbones.weights import Unresolved, cfg_get, weights_hash, weights_record
from promptbench.core.registry import Registry

if TYPE_CHECKING:
    from torch import nn


class BackboneLoadError(RuntimeError):
    """A backbone could not be built; the message says what to put where."""


@dataclass
class LoadedModel:
    """What a source hands the :class:`~promptbench.backbones.backbone.Backbone`.

    ``model`` exposes ``visual`` (the image tower module), ``text`` (the text tower module, or the model itself
    when its text tower is flattened onto it, as open_clip's ``CLIP``) and ``logit_scale``; the tower adapters
    registered for those modules' classes (:mod:`promptbench.backbones.towers`) do the rest."""

    model: nn.Module
    tokenizer: Any
    preprocess: dict[str, Any]
    weights_path: Path | None
    weights_sha256: str | None = None  # of the file as it was loaded

    def __post_init__(self) -> None:
        if self.weights_path is not None and self.weights_sha256 is None:
            self.weights_sha256 = weights_hash(self.weights_path)  # right after loading: cached per file identity


class BackboneSource:
    """One kind of ``backbone.source``; subclasses are registered in :data:`SOURCES` under their prefix."""

    def load(self, location: str, cfg: Any) -> LoadedModel:
        """Build the model (random init when ``cfg.load_weights`` is false)."""
        raise NotImplementedError

    def check(self, location: str, cfg: Any) -> str | None:
        """One-line problem with what this source needs on disk, or None (cheap: nothing is built)."""
        return None

    def weights_file(self, location: str, cfg: Any) -> Path | None:
        """The weights file ``load`` would read (None: random init); raises
        :class:`~promptbench.backbones.weights.Unresolved` when that cannot be known without loading."""
        return None


class FolderFormat:
    """One kind of local backbone folder; subclasses are registered in :data:`FOLDER_FORMATS`."""

    #: what a folder of this kind holds, for the error when no format recognises a folder
    describe: ClassVar[str] = ""

    def recognises(self, folder: Path) -> bool:
        raise NotImplementedError

    def load(self, folder: Path, cfg: Any) -> LoadedModel:
        raise NotImplementedError

    def check(self, folder: Path, cfg: Any) -> str | None:
        return None

    def weights_file(self, folder: Path, cfg: Any) -> Path | None:
        return None


SOURCES: Registry[type[BackboneSource]] = Registry("backbone source", package="promptbench.backbones.loaders",
                                             entry_point_group="promptbench.backbone_sources")
FOLDER_FORMATS: Registry[type[FolderFormat]] = Registry(
    "backbone folder format", package="promptbench.backbones.loaders", entry_point_group="promptbench.backbone_folders")
#: the kind of a source without a registered prefix: a model name of open_clip's registry
NAMED_KIND = "open_clip"


def resolve(source: str) -> tuple[str, str]:
    """``(kind, location)`` of a ``backbone.source`` string (see the module docstring)."""
    prefix, sep, rest = source.partition(":")
    if sep and len(prefix) > 1 and prefix in SOURCES.names():  # a one-letter prefix is a Windows drive
        return prefix, rest
    if "/" in source or os.sep in source or source.startswith((".", "~")):
        return "local-dir", source
    return NAMED_KIND, source


def _source(cfg: Any) -> tuple[BackboneSource, str]:
    kind, location = resolve(str(cfg_get(cfg, "source") or cfg_get(cfg, "name", "")))
    return SOURCES.get(kind)(), location


def load(cfg: Any) -> LoadedModel:
    """Load the model a ``conf/backbone/*.yaml`` node describes.

    The build runs on forked global RNGs seeded with :data:`~promptbench.core.rng.BUILD_SEED`: a random-init model
    is a function of its config, and building leaves the caller's random state as it was."""
    from promptbench.core.rng import BUILD_SEED, isolated_rng  # heavy: torch (this module serves light status checks)

    source, location = _source(cfg)
    with isolated_rng(BUILD_SEED):  # random init from a fixed seed; the caller's streams are neither read nor advanced
        return source.load(location, cfg)


def check(cfg: Any) -> str | None:
    """One-line problem with a backbone's files (weights, config, tokenizer), or None; nothing is built."""
    source, location = _source(cfg)
    return source.check(location, cfg)


def weights_file(cfg: Any) -> Path | None:
    """The weights file a backbone config loads (None for random init), found as its source finds it."""
    if not bool(cfg_get(cfg, "load_weights", True)):
        return None
    source, location = _source(cfg)
    return source.weights_file(location, cfg)


def current_weights(cfg: Any) -> dict[str, Any]:
    """``{"weights": sha256, "weights_revision": hub snapshot}`` of what ``cfg`` would load now (the provenance a
    result records and status checks compare); ``{}`` when that cannot be known without loading."""
    try:
        return weights_record(weights_file(cfg))
    except (Unresolved, OSError, ImportError, ValueError):
        return {}


@SOURCES.register("local-dir")
class LocalDirSource(BackboneSource):
    """A folder on disk, of whichever registered :class:`FolderFormat` recognises it."""

    def folder_format(self, location: str) -> tuple[Path, FolderFormat]:
        folder = Path(location).expanduser()
        if not folder.is_dir():
            raise BackboneLoadError(
                f"Backbone folder {folder} does not exist. Point backbone.source=local-dir:/path at a model folder ("
                + "; ".join(f"{n}: {f.describe}" for n, f in FOLDER_FORMATS.items()) + ")."
            )
        for _, fmt_class in FOLDER_FORMATS.items():
            fmt = fmt_class()
            if fmt.recognises(folder):
                return folder, fmt
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise BackboneLoadError(
            f"No backbone format recognises {folder} (holds: {', '.join(found) or 'nothing'}); expected "
            + "; or ".join(f"{f.describe} ({n})" for n, f in FOLDER_FORMATS.items()) + "."
        )

    def load(self, location: str, cfg: Any) -> LoadedModel:
        folder, fmt = self.folder_format(location)
        return fmt.load(folder, cfg)

    def check(self, location: str, cfg: Any) -> str | None:
        try:
            folder, fmt = self.folder_format(location)
        except BackboneLoadError as err:
            return str(err)
        return fmt.check(folder, cfg)

    def weights_file(self, location: str, cfg: Any) -> Path | None:
        try:
            folder, fmt = self.folder_format(location)
        except BackboneLoadError as err:
            raise Unresolved(str(err)) from err
        return fmt.weights_file(folder, cfg)

