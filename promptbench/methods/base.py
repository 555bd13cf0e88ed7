"""The method interface every prompt learner implements, and the shared zero-shot classifier maths."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MethodConfig, typed_config
from promptbench.methods.registry import FAMILIES as FAMILIES  # re-exported: defined torch-free for the table builder
from promptbench.prompts.text import clean_classname


@dataclass(frozen=True)
class TrainingBudget:
    """How long a method trains: ``epochs`` passes over the few-shot set, or exactly ``steps`` optimiser steps."""

    epochs: int
    steps: int | None = None


class Method(nn.Module):
    """A classifier over a frozen backbone. Subclasses add learnable parts and a loss.

    Life cycle, driven by the Lightning module:
    ``__init__`` → ``prepare(datamodule)`` (optional closed-form fits, caches) → if ``trains``:
    ``on_train_start()``, then per epoch the training steps (``training_loss``) and ``on_train_epoch_end(epoch)``,
    then ``on_train_end()`` → evaluation via ``forward`` (``set_classnames`` between eval sets).

    ``cfg`` is the method's composed config node (``conf/method/<name>.yaml``); methods read its typed form
    ``self.config``, an instance of ``config_class`` (:func:`~promptbench.methods.config.typed_config`).
    ``dataset`` is the dataset node (templates, modality, descriptions).
    """

    method_name: ClassVar[str] = "method"
    #: the method's keys: types, defaults and help (docs/method_keys.md is generated from it)
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    config: MethodConfig
    #: whether gradient training runs at all (zero-shot and closed-form methods set False)
    trains: ClassVar[bool] = True
    #: whether evaluation needs gradients (test-time tuning)
    needs_grad_at_test: ClassVar[bool] = False
    #: whether the method's graph needs the image tower (visual prompts, test-time views). False: it only uses
    #: the frozen output of ``backbone.encode_image``, always through :meth:`encode_image`, so the engine may
    #: pass cached image features (B, E) instead of images (B, 3, H, W) to ``forward`` / ``training_loss`` /
    #: ``prepare``'s loaders (``promptbench.features``). Training epochs are then tensor loops over features.
    needs_image_tower: ClassVar[bool] = True
    #: whether the method needs the image tower's tokens/blocks (visual prompts, in-block weight deltas);
    #: such methods refuse backbones whose image tower has none (CNN towers), naming backbone and reason
    needs_image_tokens: ClassVar[bool] = False
    #: the method changes the backbone in place (weights, modules, hooks kept across calls): the engine then gives
    #: it a private deep copy, never the process-wide cached instance other cells share
    modifies_backbone: ClassVar[bool] = False
    #: whether a sweep's short demo preset may leave the method out (declared, not a hand-kept list)
    demo_excluded: ClassVar[bool] = False
    #: the method's group in figures (``figure.split_by=group``) and docs: a key of :data:`FAMILIES`
    family: ClassVar[str] = "other"
    #: freshly built (before prepare/training), the logits equal zero-shot CLIP with the dataset's single
    #: template (zero-delta weight methods, zero-shot-initialised heads); the contract suite checks it
    equals_zero_shot_at_init: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.config = typed_config(cfg, type(self).config_class, strict=False)  # runs check strictly
        self.dataset_cfg = dataset
        self.classnames = [clean_classname(c) for c in classnames]
        backbone.requires_grad_(False)
        if self.needs_image_tokens and not getattr(backbone.visual, "has_tokens", True):
            raise ValueError(f"method '{self.method_name}' needs image-tower tokens, but backbone "
                             f"'{backbone.info.name}' has a {type(backbone.visual).__name__} image tower without them; "
                             "use a ViT backbone or a text-prompt / feature-level method")

    # -- interface ---------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Class logits (B, C) for the current class list."""
        raise NotImplementedError

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"loss": scalar, "logits": (B, C), ...named loss terms}``. Default: cross-entropy."""
        logits = self(images)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Re-target the classifier to another class list (base → novel evaluation)."""
        self.classnames = [clean_classname(c) for c in classnames]

    def prepare(self, datamodule: Any) -> None:
        """Hook run once before training, with the datamodule set up (few-shot data available)."""

    def fit_info(self) -> dict[str, Any]:
        """What the method chose or did while fitting (e.g. a searched hyper-parameter), JSON scalars; recorded in
        ``result.json`` → ``fit_info`` (null when empty). Default: nothing."""
        return {}

    # -- training lifecycle hooks (called by the Lightning module, and by the contract suite) ---------------
    def on_train_start(self) -> None:
        """Once before the first training epoch (after ``prepare`` and ``configure_optimization``)."""

    def on_train_epoch_end(self, epoch: int) -> None:
        """After the training steps of epoch ``epoch`` (0-based), e.g. aggregating prompts across epochs."""

    def on_train_end(self) -> None:
        """Once after the last training epoch, before evaluation."""

    def train_mode_modules(self) -> list[nn.Module]:
        """Submodules that run in train mode (dropout active) inside training steps; all else stays as is.

        Default: the submodule paths listed in ``config.train_mode`` (e.g. ``[backbone]``, ``[backbone.model.text]``;
        empty = none). BiomedCoOp and Biomed-DPT list ``backbone`` under ``fidelity=reference``: their reference
        trainers register the whole CLIP with Dassl, whose ``.train()`` turns on BiomedCLIP's BERT dropout."""
        names = self.config.train_mode
        out = []
        for name in [names] if isinstance(names, str) else list(names or []):
            try:
                out.append(self.get_submodule(str(name)))
            except AttributeError:
                raise ValueError(f"method.train_mode: '{name}' is not a submodule of {type(self).__name__}") from None
        return out

    @contextmanager
    def training_mode(self) -> Iterator[None]:
        """Put :meth:`train_mode_modules` in train mode for one training step; eval mode again afterwards
        (each submodule gets its previous mode back; the shared backbone always leaves in eval mode)."""
        modules = self.train_mode_modules()
        before = [(m, m.training) for module in modules for m in module.modules()]
        for m, _ in before:  # flags set directly: Backbone.train() deliberately refuses to leave eval mode
            m.training = True
        try:
            yield
        finally:
            for m, mode in before:
                m.training = mode
            self.backbone.eval()

    # -- optimisation (the engine asks; methods override) -------------------------------------------
    def training_budget(self, *, steps_per_epoch: int, shots: int) -> TrainingBudget:
        """Default: ``config.epochs`` epochs. Iteration-budgeted methods return ``steps`` (e.g. 500 x K)."""
        return TrainingBudget(epochs=int(self.config.epochs or 0))

    def configure_optimization(self, optim_cfg: Any, *, max_epochs: int, total_steps: int) -> dict[str, Any] | None:
        """Optimizer + LR schedule in Lightning's dict form. Default: the shared ``methods.optim`` builders
        (per-epoch schedule). Methods with their own recipe (AdamW per-step cosine to a floor, ...) override."""
        from promptbench.methods.optim import build_optimizer, build_scheduler, scheduler_interval

        params = list(self.learnable_parameters())
        if not params:
            return None
        optimizer = build_optimizer(params, optim_cfg)
        interval = scheduler_interval(optim_cfg)
        steps = max(1, total_steps // max(1, max_epochs)) if interval == "step" else 1
        scheduler = build_scheduler(optimizer, optim_cfg, max_epochs, steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # -- shared helpers ----------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        """Frozen image features (B, E) of images (B, 3, H, W); a 2-D input already is features, returned as is."""
        return frozen_image_features(self.backbone, images)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        self.backbone.eval()
        return self

    def learnable_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.learnable_parameters())

    # -- saved state (promptbench.engine.state writes it beside result.json) ---------------------------------
    def _shared_prefixes(self) -> list[str]:
        """Module paths under which the frozen backbone (or one of its submodules) is reachable from the method:
        ``backbone`` and aliases such as a prompt learner's ``tower``."""
        shared = {id(m) for m in self.backbone.modules()}
        return [name for name, m in self.named_modules(remove_duplicate=False) if name and id(m) in shared]

    def trainable_state(self) -> dict[str, Tensor]:
        """The method's own state: everything that is not the frozen shared backbone (context vectors, visual
        prompts, adapters, weight deltas, closed-form heads and caches), as detached CPU tensors.

        Default: the persistent entries of ``state_dict()`` minus every key under a path where the backbone (or one
        of its submodules) is reachable, and minus any tensor sharing memory with the backbone's. Non-persistent
        buffers are recomputed when the method is built (text features of the class names, SVD factors) and are
        not saved. Methods with non-tensor fitted values (Tip-Adapter's searched α, β) add them as tensors."""
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in self._own_state().items()}

    def _own_state(self, keep_vars: bool = False) -> dict[str, Tensor]:
        """The entries of ``state_dict(keep_vars=...)`` that are not the shared backbone's (see
        :meth:`trainable_state`), live: not copied."""
        prefixes = tuple(p + "." for p in self._shared_prefixes())
        frozen = {(t.data_ptr(), t.shape) for t in self.backbone.state_dict().values() if t.numel()}
        return {key: value for key, value in self.state_dict(keep_vars=keep_vars).items()
                if not (key.startswith(prefixes) or (value.numel() and (value.data_ptr(), value.shape) in frozen))}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        """Install a state from :meth:`trainable_state` (strict: a missing or unexpected key, or a key whose shape
        differs, raises a one-line ``ValueError`` naming it). Values are copied into the live tensors."""
        live = self._own_state(keep_vars=True)  # the live parameters and buffers behind trainable_state's keys
        missing = sorted(set(live) - set(state))
        unexpected = sorted(set(state) - set(live))
        if missing or unexpected:
            what = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
            raise ValueError(f"state for method '{self.method_name}': {what} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected of {len(live)} expected)")
        for key, target in live.items():
            value = state[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"state for method '{self.method_name}': key '{key}' has shape "
                                 f"{tuple(value.shape)}, the method expects {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(value.to(device=target.device, dtype=target.dtype))

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``exp(logit_scale) · norm(img) @ norm(txt)ᵀ``; text may be (C, E) or per image (B, C, E)."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        scale = self.backbone.logit_scale.exp()
        if txt.dim() == 3:
            return scale * torch.einsum("be,bce->bc", img, txt)
        return scale * img @ txt.t()

    def templates(self) -> list[str]:
        """``[config.template]`` when the method sets one (e.g. "a photo of a {}." for the reference baselines),
        else the dataset's single template."""
        single = self.config.template or self.dataset_cfg.get("template") or "a photo of a {}."
        return [single]

    @torch.no_grad()
    def encode_prompts(self, texts: Sequence[str]) -> Tensor:
        """Frozen text features of literal prompts (N, E)."""
        tower = self.backbone.text
        ids = tower.tokenize(list(texts)).to(self.backbone.logit_scale.device)
        return tower.encode(ids)

    @torch.no_grad()
    def class_text_features(self, templates: Sequence[str], classnames: Sequence[str] | None = None) -> Tensor:
        """Template-ensembled class embeddings (C, E): mean of normalised features, re-normalised (CLIP)."""
        names = [clean_classname(c) for c in (classnames or self.classnames)]
        per_template = [F.normalize(self.encode_prompts([t.format(n) for n in names]), dim=-1) for t in templates]
        return F.normalize(torch.stack(per_template).mean(0), dim=-1)


def frozen_image_features(backbone: Backbone, images: Tensor) -> Tensor:
    """``backbone.encode_image(images)``, or ``images`` itself when it is already a (B, E) feature batch."""
    return images if images.dim() == 2 else backbone.encode_image(images)
