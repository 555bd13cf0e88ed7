"""Linear probe on frozen, L2-normalised image features.

``init: none`` (default) — the CLIP / CoOp ``lpclip`` / BiomedCoOp protocol: multinomial L2-regularised logistic
regression with sklearn's ``lbfgs`` objective and solver, without sklearn: an analytic loss and gradient in numpy
float64 minimised by SciPy's L-BFGS-B with sklearn's settings (``maxiter=max_iter``, ``gtol=1e-4``,
``ftol=64·eps``, ``maxls=50``, ``maxcor=10``). The inverse regularisation C is chosen on the few-shot validation
set: a coarse search over {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6}, then ``search_steps`` (8) bisection steps in log
space around the best value; each C is fitted once, from zeros as the reference (``warm_start: true``: from the
solution for the nearest C already fitted, as sklearn's path). ``solver: torch`` is the fitter before 2026-12-02
(``torch.optim.LBFGS``). Fitted in ``prepare``; no gradient training (``trains`` False). ``result.json`` →
``fit_info`` records the chosen C and the search's fits.

``init: zeroshot`` — zero-shot-initialised probe: the head starts as the class text embeddings of the dataset
template (logits = exp(logit_scale)·cos(f, w_c) + b_c, equal to zero-shot CLIP at initialisation) and is trained
by gradient descent.

Trainable parameters: ``C·E + C``. Classes absent from training (base→novel) use their zero-shot text row.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MainBaselineConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier, accuracy, extract_features, merge_seen

COARSE_C = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
#: sklearn's L-BFGS-B options for LogisticRegression(solver="lbfgs") besides maxiter and gtol
#: (sklearn/linear_model/_logistic.py: _logistic_regression_path); maxcor 10 is also scipy's default
LBFGS_OPTIONS = {"ftol": 64 * np.finfo(float).eps, "maxls": 50, "maxcor": 10}


@dataclass(frozen=True)
class LogRegFit:
    """One L-BFGS-B fit: ``weight`` (K, E) and ``bias`` (K,) in float64, the iterations run, whether the solver
    stopped at its iteration (or evaluation) cap (scipy status 1), whether it converged (status 0: gradient below
    ``tol`` or no further relative decrease), the final gradient's max-norm and the seconds spent."""

    c: float
    weight: np.ndarray
    bias: np.ndarray
    n_iter: int
    capped: bool
    converged: bool
    grad_max: float
    seconds: float


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """The BLAS libraries loaded in this process (numpy's and scipy's wheels bundle their own OpenBLAS)."""
    return ThreadpoolController()


@contextlib.contextmanager
def _single_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block (threadpoolctl). L-BFGS-B's matrix-vector products (n = (E+1)·K,
    2·maxcor columns) are big enough for OpenBLAS to wake its threads but far too small to gain from them: on a
    loaded 2-core machine a fit ran 10x slower with 2 threads (measured, docs/bench_data/linear_probe.json)."""
    with _blas_threads().limit(limits=1, user_api="blas"):
        yield


def _loss_grad(theta: np.ndarray, x: np.ndarray, y: np.ndarray, num_classes: int, reg: float
               ) -> tuple[float, np.ndarray]:
    """Mean cross-entropy + ``reg/2``·‖W‖² and its gradient. ``theta`` is sklearn's multinomial layout: the
    (K, E+1) coefficients (intercept last) raveled in Fortran order, i.e. the C-order (E+1, K) matrix [Wᵀ; b]."""
    coef = theta.reshape(-1, num_classes)
    wt, b = coef[:-1], coef[-1]
    z = x @ wt + b
    z -= z.max(axis=1, keepdims=True)
    ez = np.exp(z)
    sums = ez.sum(axis=1)
    n = x.shape[0]
    loss = float(np.log(sums).sum() - z[np.arange(n), y].sum()) / n + 0.5 * reg * float(np.dot(wt.ravel(), wt.ravel()))
    g = ez / sums[:, None]
    g[np.arange(n), y] -= 1.0
    g /= n
    grad = np.empty_like(coef)
    np.matmul(x.T, g, out=grad[:-1])
    grad[:-1] += reg * wt
    grad[-1] = g.sum(axis=0)
    return loss, grad.ravel()


def lbfgs_fit(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, *, max_iter: int = 1000, tol: float = 1e-4,
              init: tuple[np.ndarray, np.ndarray] | None = None) -> LogRegFit:
    """sklearn's ``LogisticRegression(solver="lbfgs")`` fit of multinomial logistic regression: minimises mean CE
    + ‖W‖²/(2·C·N) (bias not penalised) with SciPy's L-BFGS-B from zeros or from ``init = (W, b)``."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, dim = x.shape
    theta0 = np.zeros((dim + 1, num_classes))
    if init is not None:
        theta0[:-1], theta0[-1] = np.asarray(init[0], dtype=np.float64).T, np.asarray(init[1], dtype=np.float64)
    reg = 1.0 / (float(c) * n)
    t0 = time.perf_counter()
    with _single_blas_thread():
        res = minimize(_loss_grad, theta0.ravel(), args=(x, y, num_classes, reg), method="L-BFGS-B", jac=True,
                       options={"maxiter": int(max_iter), "gtol": float(tol), **LBFGS_OPTIONS})
    seconds = time.perf_counter() - t0
    coef = res.x.reshape(dim + 1, num_classes)
    return LogRegFit(c=float(c), weight=np.ascontiguousarray(coef[:-1].T), bias=coef[-1].copy(), n_iter=int(res.nit),
                     capped=int(res.status) == 1, converged=int(res.status) == 0,
                     grad_max=float(np.abs(res.jac).max()) if res.jac.size else 0.0, seconds=seconds)


def torch_lbfgs_fit(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, *, max_iter: int = 1000,
                    tol: float = 1e-4, init: tuple[np.ndarray, np.ndarray] | None = None) -> LogRegFit:
    """``method.solver=torch``: the same objective minimised by ``torch.optim.LBFGS`` (strong Wolfe, history 10)
    through autograd in float64, from zeros: promptbench's fitter before 2026-12-02, kept so that its numbers can be
    reproduced. ``init`` is not supported (that fitter never warm-started)."""
    if init is not None:
        raise ValueError("method.solver=torch fits from zeros only (method.warm_start=false)")
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), torch.from_numpy(np.asarray(y, np.int64))
    weight = torch.zeros(num_classes, xt.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    reg = 1.0 / (2.0 * float(c) * xt.shape[0])
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=int(max_iter), tolerance_grad=float(tol),
                            tolerance_change=1e-12, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ weight.t() + bias, yt) + reg * weight.pow(2).sum()
        loss.backward()
        return loss

    t0 = time.perf_counter()
    with torch.enable_grad():
        opt.step(closure)
    seconds = time.perf_counter() - t0
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    grad = torch.cat([weight.grad.reshape(-1), bias.grad.reshape(-1)]) if weight.grad is not None else None
    grad_max = float(grad.abs().max()) if grad is not None else 0.0
    return LogRegFit(c=float(c), weight=weight.detach().numpy().copy(), bias=bias.detach().numpy().copy(),
                     n_iter=n_iter, capped=n_iter >= int(max_iter), converged=grad_max <= float(tol),
                     grad_max=grad_max, seconds=seconds)


def solver_fit(solver: str) -> Any:
    """The fitter of each C for ``method.solver`` (looked up when called)."""
    if solver not in ("scipy", "torch"):
        raise ValueError(f"linear_probe.solver must be scipy or torch, got '{solver}'")
    return lbfgs_fit if solver == "scipy" else torch_lbfgs_fit


def _as_numpy(features: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return (features.detach().to("cpu", torch.float64).numpy(), labels.detach().to("cpu", torch.int64).numpy())


def _as_torch(fit: LogRegFit, like: Tensor) -> tuple[Tensor, Tensor]:
    return (torch.from_numpy(fit.weight).to(like.device, like.dtype),
            torch.from_numpy(fit.bias).to(like.device, like.dtype))


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, c: float, *, max_iter: int = 1000, tol: float = 1e-4,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression with sklearn's ``lbfgs`` objective and solver settings: mean CE +
    ‖W‖²/(2·C·N) (bias not penalised), L-BFGS-B (:func:`lbfgs_fit`), from zeros or from ``init = (W, b)``.
    Returns ``(W (num_classes, E), b (num_classes,))`` in the input dtype and device."""
    start = None if init is None else tuple(t.detach().to("cpu", torch.float64).numpy() for t in init)
    fit = lbfgs_fit(*_as_numpy(features, labels), num_classes, c, max_iter=max_iter, tol=tol, init=start)
    return _as_torch(fit, features)


def _nearest(fits: dict[float, LogRegFit], c: float) -> LogRegFit | None:
    """The fit whose C is nearest to ``c`` in log10 (ties: the smaller C), or None before the first fit."""
    if not fits:
        return None
    return fits[min(fits, key=lambda k: (abs(math.log10(k) - math.log10(c)), k))]


def search_c(
    train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int, *, steps: int = 8,
    grid: Sequence[float] = COARSE_C, max_iter: int = 1000, tol: float = 1e-4, warm_start: bool = False,
    trace: list[LogRegFit] | None = None, solver: str = "scipy",
) -> tuple[float, Tensor, Tensor]:
    """C search of CoOp's ``lpclip`` / BiomedCoOp's LP: coarse grid (first best in grid order), then ``steps``
    bisections in log10 space between 0.1·C* and 10·C*; each step keeps the better end (ties: the left one) and the
    last kept fit wins.

    Each C is fitted once (a C met again reuses its fit: a refit from its own solution returns it unchanged) and,
    with ``warm_start``, started from the solution for the nearest C fitted so far (:func:`_nearest`; else from
    zeros, as one sklearn ``LogisticRegression`` per C); the coarse grid is fitted from the smallest C up, as
    sklearn's regularisation path. ``tol``: the fits' gradient tolerance. ``trace`` (a list) receives every fit in
    the order they were made. ``solver``: :func:`solver_fit` (``torch``: the fitter before 2026-12-02, from zeros)."""
    x, y = _as_numpy(*train)
    fit_one = solver_fit(solver)
    fits: dict[float, LogRegFit] = {}
    evals: dict[float, tuple[float, Tensor, Tensor]] = {}

    def fit_eval(c: float) -> tuple[float, Tensor, Tensor]:
        c = float(c)
        if c not in evals:
            start = _nearest(fits, c) if warm_start else None
            fit = fit_one(x, y, num_classes, c, max_iter=max_iter, tol=tol,
                          init=None if start is None else (start.weight, start.bias))
            fits[c] = fit
            if trace is not None:
                trace.append(fit)
            w, b = _as_torch(fit, train[0])
            evals[c] = (accuracy(val[0] @ w.t() + b, val[1]), w, b)
        return evals[c]

    for c in sorted({float(c) for c in grid}):
        fit_eval(c)
    scores = [fit_eval(c)[0] for c in grid]
    peak = float(grid[max(range(len(grid)), key=lambda i: (scores[i], -i))])
    left, right = math.log10(peak) - 1.0, math.log10(peak) + 1.0
    best_c = peak
    if steps < 1:
        return (best_c, *fit_eval(peak)[1:])
    for _ in range(steps):
        acc_l, w_l, b_l = fit_eval(10**left)
        acc_r, w_r, b_r = fit_eval(10**right)
        mid = 0.5 * (left + right)
        if acc_l < acc_r:
            best_c, w, b = 10**right, w_r, b_r
            left = mid
        else:
            best_c, w, b = 10**left, w_l, b_l
            right = mid
    return best_c, w, b


@dataclass
class LinearProbeConfig(MainBaselineConfig):
    """Linear probe on frozen L2-normalised image features. ``init: none`` = the CLIP paper App. A3 / CoOp
    lpclip / BiomedCoOp trainers/LP/linear_probe_biomedclip.py protocol (L-BFGS logistic regression, C searched on the
    validation shots, fitted in prepare); ``init: zeroshot`` = head initialised from the class text embeddings, trained
    by gradient with BiomedCoOp's configs/trainers/LP/few_shot.yaml (lr 1e-3, 300 epochs, batch 256)."""
    trains: bool = option(False, "no gradient training (method.epochs=0 accepted)")

    display_name: str | None = display_name("Linear probe")
    init: str = option("none", "none (L-BFGS + C search) | zeroshot (text-initialised, gradient-trained)",
                       choices=("none", "zeroshot"))
    c: float | None = option(None, "fixed inverse regularisation C; null = search on the validation shots")
    c_grid: list[float] = option(list(COARSE_C), "coarse C grid of the search")
    search_steps: int = option(8, "log-space bisection steps after the coarse grid (BiomedCoOp num_step)")
    max_iter: int = option(1000, "L-BFGS iterations (sklearn max_iter=1000)")
    solver: str = option("scipy", "scipy: SciPy L-BFGS-B on the analytic gradient with sklearn's lbfgs settings (the "
                                  "reference's LogisticRegression) | torch: torch.optim.LBFGS through autograd (the "
                                  "fitter before 2026-12-02; reproduces its numbers)", choices=("scipy", "torch"))
    warm_start: bool = option(False, "start each fit of the C search from the nearest fitted C's solution (faster; "
                                     "the reference fits every C from zeros; scipy only)")
    epochs: int = option(300, "training epochs (init=zeroshot only)")
    batch_size: int = option(256, "training batch size")
    optim: OptimConfig = option(OptimConfig(lr=0.001, weight_decay=0.0), "optimiser and LR schedule "
                                                                         "(init=zeroshot only)")


@register("linear_probe")
class LinearProbe(FrozenTextClassifier):
    """Config: ``init`` (none = L-BFGS logistic regression + C search | zeroshot = text-initialised, gradient
    trained), ``c`` (fixed C; null = search), ``c_grid``, ``search_steps``, ``max_iter``."""

    family = "baseline"
    trains = False
    needs_image_tower = False
    config_class = LinearProbeConfig
    config: LinearProbeConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        self.init = str(self.config.init)
        if self.init not in ("none", "zeroshot"):
            raise ValueError(f"linear_probe.init must be none or zeroshot, got '{self.init}'")
        num_classes, dim = self.train_text_weights.shape
        self.head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.head.bias.zero_()
            if self.init == "zeroshot":
                self.head.weight.copy_(self.train_text_weights)
            else:
                self.head.weight.zero_()
        self.trains = self.init == "zeroshot"
        self.chosen_c: float | None = None
        self.fits: list[LogRegFit] = []  # the L-BFGS-B fits of prepare, in order (fit_info)

    def prepare(self, datamodule: Any) -> None:
        if self.init != "none":
            return
        train = extract_features(self.backbone, datamodule.train_dataloader())
        val = extract_features(self.backbone, datamodule.val_dataloader())
        num_classes = self.head.out_features
        fixed = self.config.c
        max_iter = int(self.config.max_iter)
        self.fits = []
        if fixed is not None or len(val[1]) == 0:
            self.chosen_c = float(fixed if fixed is not None else 1.0)
            fit = solver_fit(str(self.config.solver))(*_as_numpy(*train), num_classes, self.chosen_c, max_iter=max_iter)
            self.fits.append(fit)
            w, b = _as_torch(fit, train[0])
        else:
            grid = tuple(float(c) for c in self.config.c_grid)
            self.chosen_c, w, b = search_c(train, val, num_classes, steps=int(self.config.search_steps),
                                           grid=grid, max_iter=max_iter, trace=self.fits,
                                           warm_start=bool(self.config.warm_start), solver=str(self.config.solver))
        with torch.no_grad():
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)

    def fit_info(self) -> dict[str, Any]:
        """The chosen C and the search's L-BFGS-B fits (count, how many stopped at ``max_iter``, iterations,
        seconds); empty for ``init: zeroshot``."""
        if self.chosen_c is None:
            return {}
        return {"c": self.chosen_c, "fits": len(self.fits), "capped_fits": sum(f.capped for f in self.fits),
                "iterations": sum(f.n_iter for f in self.fits),
                "fit_s": round(sum(f.seconds for f in self.fits), 4)}

    def image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encode_image(images)

    def forward(self, images: Tensor) -> Tensor:
        feats = F.normalize(self.image_features(images), dim=-1)
        scale = self.backbone.logit_scale.exp()
        if self.init == "zeroshot":
            seen = scale * feats @ self.head.weight.t() + self.head.bias
        else:
            seen = self.head(feats)
        return merge_seen(seen, scale * feats @ F.normalize(self.text_weights, dim=-1).t(), self.rows)
