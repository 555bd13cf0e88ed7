"""Pieces shared by the text-prompt methods: distillation losses, BiomedCoOp's prompt pruning, ProGrad's
gradient projection, description banks, clinical-template splitting and TPT's views/entropy.

Every function is written from the papers' equations and the reference notes
(``shared/reference/methods_openclip.md`` §3, ``biomed_dpt_biomedcoop.md`` §4-§6); sources are cited per function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from promptbench.backbones.towers import TextTower
from promptbench.methods.common import load_descriptions
from promptbench.methods.config import MethodConfig, option
from promptbench.prompts import TextPromptLearner

# -- config of the CoOp-style text prompt -------------------------------------------------------------------


@dataclass
class TextPromptConfig(MethodConfig):
    """A learnable text context (CoOp family): BiomedCoOp's biomedical settings, n_ctx 4 from "a photo of a"."""

    n_ctx: int | None = option(4, "learnable context tokens when ctx_init is empty (random N(0, 0.02) init)")
    ctx_init: str | None = option("a photo of a", "init words; their token count overrides n_ctx")
    class_token_position: str = option("end", "where the class name sits relative to the context",
                                       choices=("end", "middle", "front"))
    class_specific: bool = option(False, "CSC: one context per class")


def text_prompt_learner(tower: TextTower, classnames: Sequence[str], config: TextPromptConfig) -> TextPromptLearner:
    """The CoOp-style context of ``config`` (``n_ctx``, ``ctx_init``, ``class_token_position``,
    ``class_specific``)."""
    return TextPromptLearner(tower, classnames, n_ctx=config.n_ctx, ctx_init=config.ctx_init or "",
                             position=config.class_token_position,  # type: ignore[arg-type]
                             class_specific=bool(config.class_specific))


# -- distillation losses ---------------------------------------------------------------------------------


def teacher_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(p_teacher ‖ p_student) summed over batch and classes and divided by B·C (not by B).

    BiomedCoOp's L_KDSP and Biomed-DPT's L_KL both call ``kl_div(..., reduction="sum") / logits.numel()``
    (biomed_dpt_biomedcoop.md §4.3, §5.2).
    """
    log_s = F.log_softmax(student_logits, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) / student_logits.numel()


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """ProGrad's KD term: T² · mean over the batch of −Σ_c p_t(c) log p_s(c), both at temperature T
    (``ProGradLoss`` in BeierZhu/Prompt-align and BiomedCoOp's ``prograd_biomedclip.py``)."""
    t = float(temperature)
    p_t = F.softmax(teacher_logits.detach() / t, dim=-1)
    return -(p_t * F.log_softmax(student_logits / t, dim=-1)).sum(-1).mean() * t * t


def one_minus_mean_cos(text_features: Tensor, anchors: Tensor) -> Tensor:
    """KgCoOp's regulariser 1 − mean_c cos(w_c, w_c^clip) (``htyao89/KgCoOp`` kgcoop.py, methods_openclip.md §3.4)."""
    return 1.0 - F.cosine_similarity(text_features, anchors.to(text_features.dtype), dim=-1, eps=1e-7).mean()


# -- BiomedCoOp: statistical prompt selection ---------------------------------------------------------


def prompt_scores(image_features: Tensor, bank: Tensor, scale: Tensor | float) -> Tensor:
    """Score σ_i of every description index i: mean over the batch of max over classes of s·f·g_{c,i}.

    ``image_features`` (B, E) and ``bank`` (C, N, E) are L2-normalised (biomed_dpt_biomedcoop.md §4.3 step 2).
    """
    logits = scale * torch.einsum("be,cne->bnc", image_features, bank)
    return logits.max(dim=-1).values.mean(dim=0)


def mad_keep_mask(scores: Tensor, tau: float) -> Tensor:
    """Which prompts BiomedCoOp keeps: robust z = (σ − median σ) / MAD(σ), standardised once more with the
    mean and the unbiased std of z, kept where |·| ≤ τ.

    ``torch.median`` (lower median for even counts) as in the reference. Guard (ours): a zero MAD or std, or a
    mask that would keep nothing, keeps every prompt instead of producing the reference's NaN teacher.
    """
    med = scores.median()
    mad = (scores - med).abs().median()
    keep_all = torch.ones_like(scores, dtype=torch.bool)
    if scores.numel() < 2 or not torch.isfinite(mad) or mad <= 0:
        return keep_all
    z = (scores - med) / mad
    std = z.std()
    if not torch.isfinite(std) or std <= 0:
        return keep_all
    mask = ((z - z.mean()) / std).abs() <= tau
    return mask if mask.any() else keep_all


def pruned_teacher(bank: Tensor, mask: Tensor) -> Tensor:
    """Teacher class embeddings ĝ_c: normalised mean of the kept descriptions ``bank[:, mask]`` (C, E)."""
    return F.normalize(bank[:, mask].mean(dim=1), dim=-1)


# -- ProGrad: gradient projection -------------------------------------------------------------------------


def project_conflicting(grad: Tensor, reference: Tensor, lam: float = 1.0) -> Tensor:
    """ProGrad (Zhu et al., ICCV 2023): if g·g_ref < 0, return g − λ (g·ĝ_ref) ĝ_ref, else g unchanged
    (``prograd_backward_and_update`` in BeierZhu/Prompt-align ``dassl/engine/trainer.py``). A zero reference
    gradient projects nothing."""
    ref_norm = reference.norm()
    if not torch.isfinite(ref_norm) or ref_norm <= 0:
        return grad
    unit = reference / ref_norm
    dot = (grad * unit).sum()
    return grad - lam * dot * unit if dot < 0 else grad


class _InjectGradients(torch.autograd.Function):
    """Returns ``value`` unchanged; its backward hands ``grad_out · grads[i]`` to ``params[i]``."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple[Tensor, ...], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return (None, None, *(grad_out * g for g in ctx.grads))


def loss_with_gradients(value: Tensor, params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> Tensor:
    """A scalar equal to ``value`` whose ``backward()`` leaves exactly ``grads`` (× the upstream gradient, so
    AMP loss scaling and gradient accumulation still apply) in ``params[i].grad``. Lets a method hand
    pre-computed (e.g. projected) gradients to Lightning's automatic optimisation."""
    return _InjectGradients.apply(value.detach(), tuple(g.detach() for g in grads), *params)


# -- descriptions ------------------------------------------------------------------------------------------


class DescriptionBank:
    """Frozen, L2-normalised features of each class's first ``n_prompts`` description sentences, cached by name.

    The teacher tensor is (C, N, E) with N = min(n_prompts, fewest sentences of any class): the reference
    encodes description i of every class as one "prompt index" i, so all classes need the same N.
    """

    def __init__(self, method: Any, n_prompts: int = 50):
        self.method = method
        self.n_prompts = int(n_prompts)
        self._cache: dict[str, Tensor] = {}

    def features(self, classnames: Sequence[str]) -> Tensor:
        missing = [c for c in classnames if c not in self._cache]
        if missing:
            sentences = load_descriptions(self.method.dataset_cfg, missing)
            for name in missing:
                feats = self.method.encode_prompts(sentences[name][: self.n_prompts])
                self._cache[name] = F.normalize(feats.float(), dim=-1)
        n = min(self._cache[c].shape[0] for c in classnames)
        device = self.method.backbone.logit_scale.device  # the cache may predate a move to another device
        return torch.stack([self._cache[c][:n].to(device) for c in classnames])

    @staticmethod
    def mean(bank: Tensor) -> Tensor:
        """ḡ_c: normalised mean over all of a class's descriptions (C, E)."""
        return F.normalize(bank.mean(dim=1), dim=-1)


# -- clinical templates -----------------------------------------------------------------------------------


def split_template(template: str) -> tuple[str, str]:
    """``"a MR photo of a {} in the brain."`` → (``"a MR photo of a"``, ``" in the brain."``)."""
    if template.count("{}") != 1:
        raise ValueError(f"template '{template}' needs exactly one '{{}}' slot for the class name")
    prefix, _, suffix = template.partition("{}")
    return prefix.strip(), suffix.rstrip()


def words_within_tokens(tower: TextTower, text: str, n_tokens: int | None) -> int:
    """Largest k such that the first k words of ``text`` take at most ``n_tokens`` tokens (all words when
    ``n_tokens`` is None). At least one word. Biomed-DPT learns the first N_CTX *tokens* of its init phrase;
    promptbench learns whole words, so when N_CTX ends inside a word the learnable part ends one word early."""
    words = text.split()
    if not words:
        raise ValueError("no init words")
    if n_tokens is None:
        return len(words)
    k = 1
    for j in range(1, len(words) + 1):
        if tower.count_tokens(" ".join(words[:j])) <= n_tokens:
            k = j
    return k


# -- TPT: views, confidence selection, marginal entropy ----------------------------------------------------


def _crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
              generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling (10 tries, else the whole image), with an explicit RNG."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=generator).item())
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(1, generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    return 0, 0, height, width


def augmented_views(image: Tensor, n_views: int, *, scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                    generator: torch.Generator | None = None) -> Tensor:
    """``[image] + (n_views − 1)`` random-resized-crop (+ horizontal flip) views of one (3, H, W) tensor.

    Works on the already-normalised test tensor; bicubic resizing is linear, so cropping before or after the
    per-channel normalisation gives the same pixels (TPT itself crops the raw image, see docs/methods_text.md).
    """
    if n_views < 1:
        raise ValueError("TPT needs at least one view (the original)")
    _, height, width = image.shape
    views = [image]
    for _ in range(n_views - 1):
        top, left, h, w = _crop_box(height, width, scale, ratio, generator)
        view = TF.resized_crop(image, top, left, h, w, [height, width],
                               interpolation=InterpolationMode.BICUBIC, antialias=True)
        if flip and torch.rand(1, generator=generator).item() < 0.5:
            view = view.flip(-1)
        views.append(view)
    return torch.stack(views)


def entropy(logits: Tensor) -> Tensor:
    """Per-row entropy of softmax(logits)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def confident_indices(logits: Tensor, fraction: float) -> Tensor:
    """Indices of the ``fraction`` of rows with the lowest entropy: TPT keeps int(N·p) views (6 of 64); at
    least one here, so a handful of test views still works."""
    k = max(1, int(logits.shape[0] * fraction))
    return torch.argsort(entropy(logits), descending=False)[:k]


def marginal_entropy(logits: Tensor) -> Tensor:
    """Entropy of the view-averaged distribution, computed as TPT does: logsumexp of the log-probabilities
    minus log N (``avg_entropy`` in azshue/TPT tpt_classification.py)."""
    logp = F.log_softmax(logits, dim=-1)
    avg = torch.logsumexp(logp, dim=0) - math.log(logits.shape[0])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg.exp() * avg).sum()
