"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning by marginal-entropy minimisation over augmented views."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.registry import register
from promptbench.methods.text_common import augmented_views, confident_indices, marginal_entropy
from promptbench.prompts import TextPromptLearner


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

    trains = False
    needs_grad_at_test = True

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.prompt_learner = TextPromptLearner.from_config(backbone.text, self.classnames, cfg)
        self.register_buffer("ctx_init_state", self.prompt_learner.ctx.detach().clone(), persistent=False)
        name = str(cfg.get("tta_optimizer", "adamw")).lower()
        lr, wd = float(cfg.get("tta_lr", 5e-3)), float(cfg.get("tta_weight_decay", 0.01))
        if name == "adamw":
            self.optimizer = torch.optim.AdamW([self.prompt_learner.ctx], lr=lr, weight_decay=wd)
        elif name == "sgd":
            self.optimizer = torch.optim.SGD([self.prompt_learner.ctx], lr=lr, weight_decay=wd)
        else:
            raise ValueError(f"tpt.tta_optimizer must be adamw or sgd, got '{name}'")
        self._optim_init_state = copy.deepcopy(self.optimizer.state_dict())
        view_seed = cfg.get("view_seed")
        self.generator = torch.Generator().manual_seed(int(torch.initial_seed() if view_seed is None else view_seed))

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def reset(self) -> None:
        """Restore the initial context and the optimizer's initial (empty) state."""
        with torch.no_grad():
            self.prompt_learner.ctx.copy_(self.ctx_init_state)
        self.optimizer.load_state_dict(copy.deepcopy(self._optim_init_state))
        self.prompt_learner.ctx.grad = None

    def views(self, image: Tensor) -> Tensor:
        cfg = self.cfg
        return augmented_views(
            image.detach(), int(cfg.get("n_views", 64)), scale=tuple(cfg.get("crop_scale", (0.08, 1.0))),
            flip=bool(cfg.get("flip", True)), generator=self.generator,
        )

    def adapt_and_predict(self, image: Tensor, features: Tensor | None = None) -> Tensor:
        """Tune the context on one image's views and return the original view's logits (C,). ``features``: the
        views' image features when already encoded (``forward`` encodes a whole batch's views at once)."""
        if features is None:
            with torch.no_grad():
                features = self.backbone.encode_image(self.views(image))
        selected = None
        for _ in range(int(self.cfg.get("tta_steps", 1))):
            logits = self.logits(features, self.prompt_learner())
            if selected is None:
                selected = confident_indices(logits.detach(), float(self.cfg.get("selection_p", 0.1)))
            loss = marginal_entropy(logits[selected])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            return self.logits(features[:1], self.prompt_learner())[0]

    def forward(self, images: Tensor) -> Tensor:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("TPT tunes its prompt at test time; run it outside torch.inference_mode()")
        outputs = []
        with torch.no_grad():  # every image's views in one image-tower batch (views drawn in image order)
            views = torch.stack([self.views(image) for image in images])
            features = self.backbone.encode_image(views.flatten(0, 1)).unflatten(0, views.shape[:2])
        with torch.enable_grad():
            for image, image_features in zip(images, features):
                self.reset()
                try:
                    outputs.append(self.adapt_and_predict(image, image_features))
                finally:
                    self.reset()
        return torch.stack(outputs)
