"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning by marginal-entropy minimisation over augmented views."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.config import display_name, option
from promptbench.methods.registry import register
from promptbench.methods.text_common import (
    TextPromptConfig,
    augmented_views,
    confident_indices,
    marginal_entropy,
    text_prompt_learner,
)


@dataclass
class TPTConfig(TextPromptConfig):
    """TPT (Shu et al., NeurIPS 2022), official defaults (azshue/TPT@63ecbace tpt_classification.py,
    scripts/test_tpt.sh): ctx "a photo of a", 64 views (original + 63 random-resized-crop/flip views), keep the
    10% lowest-entropy views, one AdamW step at lr 5e-3 per test sample, then reset. No training."""
    trains: bool = option(False, "no gradient training (method.epochs=0 accepted)")

    display_name: str | None = display_name("TPT")
    epochs: int = option(0, "unused (TPT does not train)")
    n_views: int = option(64, "views per test image, including the original")
    selection_p: float = option(0.1, "confidence selection: fraction of lowest-entropy views kept")
    tta_steps: int = option(1, "test-time optimiser steps per image")
    tta_optimizer: str = option("adamw", "test-time optimiser: adamw | sgd")
    tta_lr: float = option(0.005, "test-time learning rate")
    tta_weight_decay: float = option(0.01, "test-time weight decay (torch AdamW default, as TPT builds "
                                           "AdamW(params, lr))")
    crop_scale: list[float] = option([0.08, 1.0], "RandomResizedCrop scale of the views")
    flip: bool = option(True, "random horizontal flip of the views")
    view_seed: int | None = option(None, "RNG seed of the augmented views; null = the run seed (so seeds differ)")


@register("tpt")
class TPT(Method):
    """Per test image (``azshue/TPT`` tpt_classification.py; methods_openclip.md §3.5):

    1. ``n_views`` views: the original plus random-resized-crop + flip views generated here, with torch ops,
       from the already-normalised test tensor (TPT crops the raw image; see docs/methods_text.md);
    2. keep the ``selection_p`` fraction of views with the lowest entropy (chosen at the first step);
    3. ``tta_steps`` AdamW steps (lr ``tta_lr``) on the context minimising the marginal entropy;
    4. predict on the original view; then restore the context and the optimizer state.

    Nothing is trained beforehand (``trains = False``); evaluation needs gradients (``needs_grad_at_test``).
    """

    family = "text"
    trains = False
    needs_grad_at_test = True
    config_class = TPTConfig
    config: TPTConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.prompt_learner = text_prompt_learner(backbone.text, self.classnames, self.config)
        self.register_buffer("ctx_init_state", self.prompt_learner.ctx.detach().clone(), persistent=False)
        self.optimizer = self._optimizer([self.prompt_learner.ctx])
        self._optim_init_state = copy.deepcopy(self.optimizer.state_dict())
        view_seed = self.config.view_seed
        self.generator = torch.Generator().manual_seed(int(torch.initial_seed() if view_seed is None else view_seed))

    def _optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        cfg = self.config
        name = str(cfg.tta_optimizer).lower()
        lr, wd = float(cfg.tta_lr), float(cfg.tta_weight_decay)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd)
        raise ValueError(f"tpt.tta_optimizer must be adamw or sgd, got '{name}'")

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def reset(self) -> None:
        """Restore the initial context and the optimizer's initial (empty) state."""
        with torch.no_grad():
            self.prompt_learner.ctx.copy_(self.ctx_init_state)
        self.optimizer.load_state_dict(copy.deepcopy(self._optim_init_state))
        self.prompt_learner.ctx.grad = None

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        super().load_trainable_state(state)
        with torch.no_grad():  # each image's tuning starts from the loaded context
            self.ctx_init_state.copy_(self.prompt_learner.ctx)

    def views(self, image: Tensor) -> Tensor:
        cfg = self.config
        return augmented_views(
            image.detach(), int(cfg.n_views), scale=tuple(cfg.crop_scale), flip=bool(cfg.flip),
            generator=self.generator,
        )

    def adapt_and_predict(self, image: Tensor, features: Tensor | None = None) -> Tensor:
        """Tune the context on one image's views and return the original view's logits (C,). ``features``: the
        views' image features when already encoded (``forward`` encodes a whole batch's views at once)."""
        if features is None:
            with torch.no_grad():
                features = self.backbone.encode_image(self.views(image))
        selected = None
        for _ in range(int(self.config.tta_steps)):
            logits = self.logits(features, self.prompt_learner())
            if selected is None:
                selected = confident_indices(logits.detach(), float(self.config.selection_p))
            loss = marginal_entropy(logits[selected])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            return self.logits(features[:1], self.prompt_learner())[0]

    def forward(self, images: Tensor) -> Tensor:
        """Each image adapted on its own, all at once: every image gets its own copy of the initial context in one
        (B, ...) tensor, and the summed per-image losses give each copy exactly its own image's gradient; AdamW is
        elementwise, so one optimizer over the batch takes each image's own steps: the logits are bitwise equal to
        the one-image loop, :meth:`adapt_and_predict` (tests/test_features.py). The text tower then runs once per
        step for up to ``ADAPT_CHUNK`` images instead of once per image."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("TPT tunes its prompt at test time; run it outside torch.inference_mode()")
        with torch.no_grad():  # every image's views in one image-tower batch (views drawn in image order)
            views = torch.stack([self.views(image) for image in images])
            features = self.backbone.encode_image(views.flatten(0, 1)).unflatten(0, views.shape[:2])
        with torch.enable_grad():
            return torch.cat([self._adapt_batch(chunk) for chunk in features.split(self.ADAPT_CHUNK)])

    #: images adapted together (bounds the text-tower batch to ADAPT_CHUNK x classes prompts)
    ADAPT_CHUNK = 32

    def _adapt_batch(self, features: Tensor) -> Tensor:
        """(B, V, E) view features -> (B, C) logits of the original views, each image tuned on its own views."""
        cfg = self.config
        init = self.ctx_init_state
        ctx = init.expand(features.shape[0], *init.shape).clone().requires_grad_(True)
        optimizer = self._optimizer([ctx])  # fresh, as after reset(): every image starts from the same state
        selected = None
        for _ in range(int(cfg.tta_steps)):
            text = self.prompt_learner.encode_context(self.prompt_learner.per_class(ctx))
            # per image, the same (V, C) product as the one-image loop: the confident views are picked from
            # near-equal entropies, so the logits are computed exactly as there, not by one batched product
            logits = [self.logits(views, classes) for views, classes in zip(features, text)]
            if selected is None:
                selected = [confident_indices(view_logits.detach(), float(cfg.selection_p))
                            for view_logits in logits]
            loss = sum(marginal_entropy(view_logits[keep]) for view_logits, keep in zip(logits, selected))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            text = self.prompt_learner.encode_context(self.prompt_learner.per_class(ctx))
            return torch.stack([self.logits(views[:1], classes)[0] for views, classes in zip(features, text)])
