"""Tip-Adapter and Tip-Adapter-F (Zhang, Zhang, Fang, Gao, Li, Dai, Qiao, Li; ECCV 2022, arXiv 2111.03930).

Training-free cache model built from the few-shot training set:

    keys K (N_cache, E) = L2-normalised image features (averaged over ``augment_epoch`` augmented passes),
    values V (N_cache, C) = one-hot labels,
    logits(f) = exp(logit_scale)·f·Tᵀ + α·exp(−β·(1 − f·Kᵀ))·V

with (β, α) chosen by grid search on the few-shot validation set: ``search_step`` values each from 0.1 up to
``search_scale`` (BiomedCoOp: 200 × 200 up to 50), first best in (β outer, α inner) order.
Tip-Adapter-F additionally fine-tunes the keys (``N_cache·E = K·C·E`` parameters) with CE, training with
(``init_beta``, ``init_alpha``); after the keys change, (β, α) are searched again on the cached validation
features the next time the model is evaluated. Classes absent from training get no cache column (zero-shot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MainBaselineConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier, extract_features


def tip_cache_logits(features: Tensor, keys: Tensor, values: Tensor, alpha: float, beta: float) -> Tensor:
    """α·exp(−β·(1 − f·Kᵀ))·V — Tip-Adapter's cache logits (features and keys L2-normalised by the caller)."""
    affinity = features @ keys.t()
    return alpha * torch.exp(-beta * (1.0 - affinity)) @ values


def search_alpha_beta(
    clip_logits: Tensor, affinity: Tensor, values: Tensor, labels: Tensor,
    scale: Sequence[float] = (50.0, 50.0), steps: Sequence[int] = (200, 200),
) -> tuple[float, float]:
    """Grid search of Tip-Adapter's (β, α) on validation data; returns ``(beta, alpha)``.

    Grids: ``i·(scale − 0.1)/steps + 0.1`` for i < steps (β first, α second), as the released code."""
    betas = [i * (float(scale[0]) - 0.1) / int(steps[0]) + 0.1 for i in range(int(steps[0]))]
    alphas = torch.tensor([i * (float(scale[1]) - 0.1) / int(steps[1]) + 0.1 for i in range(int(steps[1]))],
                          device=clip_logits.device, dtype=clip_logits.dtype)
    accs = []
    for beta in betas:
        cache = torch.exp(-beta * (1.0 - affinity)) @ values  # (N, C)
        preds = (clip_logits.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)).argmax(-1)
        accs.append((preds == labels.unsqueeze(0)).float().mean(-1))
    flat = torch.stack(accs).flatten()
    best = int(torch.argmax(flat))  # first maximum in (beta, alpha) row-major order
    return betas[best // len(alphas)], float(alphas[best % len(alphas)])


@dataclass
class TipAdapterConfig(MainBaselineConfig):
    """Tip-Adapter (Zhang et al., ECCV 2022, arXiv 2111.03930), training-free cache model, settings of BiomedCoOp
    configs/trainers/TiP_Adapter/few_shot.yaml: 1 augmentation pass for the cache, init alpha = beta = 1, (beta,
    alpha) grid search on the few-shot validation set with 200 x 200 values in [0.1, 50). (gaopengcuhk/Tip-Adapter
    configs: 10 augmentation passes, per-dataset search ranges.)"""
    trains: bool = option(False, "no gradient training (method.epochs=0 accepted)")

    display_name: str | None = display_name("Tip-Adapter")
    augment_epoch: int = option(1, "augmented passes over the support set for the cache")
    init_alpha: float = option(1.0, "residual ratio alpha before (and without) the search")
    init_beta: float = option(1.0, "sharpness beta before (and without) the search")
    search: bool = option(True, "grid-search (beta, alpha) on the validation shots")
    search_scale: list[float] = option([50.0, 50.0], "[beta, alpha] upper ends of the search")
    search_step: list[int] = option([200, 200], "[beta, alpha] grid sizes")
    epochs: int = option(0, "unused (training-free)")
    batch_size: int = option(256, "feature-extraction batch size")


@dataclass
class TipAdapterFOptim(OptimConfig):
    """BiomedCoOp Tip-Adapter-F: AdamW lr 1e-3 (torch default weight decay 0.01), eps 1e-4, cosine without warm-up
    stepped per iteration (CosineAnnealingLR(T_max = epochs x iterations per epoch))."""

    name: str = option("adamw", "optimizer", choices=("sgd", "adamw", "adam"))
    lr: float = option(0.001, "learning rate")
    weight_decay: float = option(0.01, "weight decay")
    eps: float = option(1.0e-4, "AdamW eps (code: AdamW(eps=1e-4))")
    warmup_epochs: int = option(0, "constant warm-up units at warmup_lr")
    interval: str = option("step", "the unit the schedule advances by", choices=("epoch", "step"))


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F (Zhang et al., ECCV 2022): Tip-Adapter with the cache keys fine-tuned (K*C*E parameters):
    20 epochs, batch 256, training with init alpha = beta = 1; (beta, alpha) searched on the validation shots after
    fine-tuning. Deviation: the code also grid-searches the initial alpha over 0..9 (not done here)."""
    trains: bool = option(True, "trains its cache keys by gradient")

    display_name: str | None = display_name("Tip-Adapter-F")
    epochs: int = option(20, "training epochs")
    optim: TipAdapterFOptim = option(TipAdapterFOptim(), "optimiser and LR schedule")


@register("tip_adapter")
class TipAdapter(FrozenTextClassifier):
    """Training-free Tip-Adapter. Config: ``augment_epoch``, ``init_alpha``, ``init_beta``, ``search``,
    ``search_scale`` [β, α], ``search_step`` [β, α]."""

    family = "adapter"
    trains = False
    needs_image_tower = False
    config_class = TipAdapterConfig
    config: TipAdapterConfig
    #: keys are learnable (Tip-Adapter-F)
    finetune_keys = False

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        num_classes, dim = self.train_text_weights.shape
        keys = torch.zeros(0, dim)
        if self.finetune_keys:
            self.cache_keys = nn.Parameter(keys)
        else:
            self.register_buffer("cache_keys", keys)
        self.register_buffer("cache_values", torch.zeros(0, num_classes))
        self.register_buffer("val_features", torch.zeros(0, dim), persistent=False)
        self.register_buffer("val_labels", torch.zeros(0, dtype=torch.long), persistent=False)
        self.train_alpha = self.alpha = float(self.config.init_alpha)
        self.train_beta = self.beta = float(self.config.init_beta)
        self._keys_changed = False

    # -- cache --------------------------------------------------------------------------------------
    def set_cache(self, keys: Tensor, labels: Tensor) -> None:
        """Install a cache: keys (N, E) L2-normalised, values one-hot of ``labels`` over the training classes."""
        values = F.one_hot(labels, self.cache_values.shape[1]).to(keys.dtype)
        if self.finetune_keys:
            self.cache_keys = nn.Parameter(keys.detach().clone())
        else:
            self.cache_keys = keys.detach().clone()
        self.cache_values = values

    def prepare(self, datamodule: Any) -> None:
        keys, labels = extract_features(self.backbone, datamodule.train_dataloader(),
                                        passes=int(self.config.augment_epoch))
        self.set_cache(keys, labels)
        self.val_features, self.val_labels = extract_features(self.backbone, datamodule.val_dataloader())
        self.search()

    def search(self) -> None:
        """Re-choose (β, α) on the cached validation features (no-op without them or with ``search: false``)."""
        self._keys_changed = False
        if not self.config.search or len(self.val_labels) == 0 or len(self.cache_keys) == 0:
            return
        with torch.no_grad():
            feats = self.val_features
            clip = self.backbone.logit_scale.exp() * feats @ F.normalize(self.train_text_weights, dim=-1).t()
            self.beta, self.alpha = search_alpha_beta(
                clip, feats @ self.cache_keys.t(), self.cache_values, self.val_labels,
                scale=tuple(self.config.search_scale),
                steps=tuple(self.config.search_step),
            )

    def eval_values(self) -> Tensor:
        """Cache values re-indexed to the current classes (zero columns for classes never trained)."""
        rows = self.rows.to(self.cache_values.device)
        picked = self.cache_values[:, rows.clamp(min=0)]
        return picked * (rows >= 0).to(picked.dtype).unsqueeze(0)

    def cache_logits(self, features: Tensor, alpha: float | None = None, beta: float | None = None) -> Tensor:
        """Cache logits of L2-normalised ``features`` for the current classes."""
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        return tip_cache_logits(features, self.cache_keys, self.eval_values(), alpha, beta)

    # -- saved state ---------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Tensor]:
        """The cache (keys, values) and the searched (α, β), as evaluation uses them (a pending re-search after
        fine-tuned keys runs first, as the next evaluation would)."""
        if self._keys_changed and not self.training:
            self.search()
        state = super().trainable_state()
        state["search_alpha"] = torch.tensor(float(self.alpha), dtype=torch.float64)
        state["search_beta"] = torch.tensor(float(self.beta), dtype=torch.float64)
        return state

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        for key in ("search_alpha", "search_beta", "cache_keys", "cache_values"):
            if key not in state:
                raise ValueError(f"state for method '{self.method_name}': missing key '{key}'")
        alpha, beta = float(state.pop("search_alpha")), float(state.pop("search_beta"))
        # the cache is sized by prepare (N shots x classes): take the saved shapes, then the strict load checks
        keys, values = state["cache_keys"], state["cache_values"]
        device = self.cache_values.device
        if self.finetune_keys:
            self.cache_keys = nn.Parameter(torch.zeros(keys.shape, device=device))
        else:
            self.cache_keys = torch.zeros(keys.shape, device=device)
        self.cache_values = torch.zeros(values.shape, device=device)
        super().load_trainable_state(state)
        self.alpha, self.beta = alpha, beta
        self._keys_changed = False

    # -- forward ------------------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encode_image(images)

    def forward(self, images: Tensor) -> Tensor:
        if self._keys_changed and not self.training:
            self.search()
        feats = F.normalize(self.image_features(images), dim=-1)
        logits = self.zeroshot_logits(feats)
        if len(self.cache_keys) == 0:
            return logits
        if self.training:
            return logits + self.cache_logits(feats, self.train_alpha, self.train_beta)
        return logits + self.cache_logits(feats)

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        self._keys_changed = True
        logits = self(images)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


@register("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are fine-tuned (K·C·E parameters)."""

    family = "adapter"
    trains = True
    finetune_keys = True
    config_class = TipAdapterFConfig
