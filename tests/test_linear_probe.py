"""The linear probe's logistic-regression fitter (SciPy L-BFGS-B, sklearn's lbfgs settings) and its C search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptbench.methods import linear_probe as lp
from promptbench.methods.linear_probe import COARSE_C, LogRegFit, fit_logistic_regression, lbfgs_fit, search_c


def problem(n: int = 60, dim: int = 8, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small well-conditioned problem: L2-normalised Gaussian features, classes shifted apart (not separable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    means = torch.randn(k, dim, generator=g)
    x = F.normalize(means[y] + 1.5 * torch.randn(n, dim, generator=g), dim=-1)
    return x, y


def objective_grad(x, y, w, b, c) -> float:
    """Max-norm of the gradient of mean CE + ‖W‖²/(2·C·N) at (w, b), by autograd in float64."""
    w, b = w.detach().double().clone().requires_grad_(), b.detach().double().clone().requires_grad_()
    obj = F.cross_entropy(x.double() @ w.t() + b, y) + w.pow(2).sum() / (2 * c * len(y))
    gw, gb = torch.autograd.grad(obj, (w, b))
    return float(max(gw.abs().max(), gb.abs().max()))


# -- reference: the pre-change fitter (promptbench/methods/linear_probe.py before the SciPy port), compact ---------
def torch_lbfgs_fit(x, y, k, c, *, max_iter=1000, tol=1e-4):
    """REFERENCE ONLY — the old torch fitter: torch.optim.LBFGS (strong Wolfe, history 10) through autograd."""
    x = x.double()
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    reg = 1.0 / (2.0 * float(c) * x.shape[0])
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.t() + b, y) + reg * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def old_search_rule(score, grid, steps):
    """REFERENCE ONLY — the old search_c's decisions, with ``score(c)`` standing for a fit's validation accuracy."""
    scores = [score(c) for c in grid]
    peak = float(grid[max(range(len(grid)), key=lambda i: (scores[i], -i))])
    left, right = math.log10(peak) - 1.0, math.log10(peak) + 1.0
    best = peak
    for _ in range(steps):
        mid = 0.5 * (left + right)
        if score(10**left) < score(10**right):
            best, left = 10**right, mid
        else:
            best, right = 10**left, mid
    return best


@pytest.mark.parametrize("c", [1e-2, 1.0, 100.0])
def test_solution_satisfies_the_optimality_condition(c):
    x, y = problem()
    w, b = fit_logistic_regression(x, y, 3, c)
    assert w.dtype == x.dtype and w.shape == (3, 8) and b.shape == (3,)
    assert objective_grad(x, y, w, b, c) < 1e-4  # gtol: sklearn's tol
    fit = lbfgs_fit(x.double().numpy(), y.numpy(), 3, c)
    assert fit.converged and not fit.capped and fit.grad_max < 1e-4
    assert abs(float(fit.bias.sum())) < 1e-10  # the unpenalised bias stays in the sum-zero subspace (from zeros)


@pytest.mark.parametrize("c", [1e-2, 1.0, 100.0])
def test_equals_the_old_torch_fitter_at_tight_tolerance(c):
    x, y = problem()
    w_old, b_old = torch_lbfgs_fit(x, y, 3, c, tol=1e-9)
    fit = lbfgs_fit(x.double().numpy(), y.numpy(), 3, c, tol=1e-9)
    # each stops at gtol 1e-9 or earlier on its own small-change test (gradients 1e-8..4e-7): the same point to
    # 1e-5 relative (the weak-regularisation C = 100 is the flattest objective), the same objective to 1e-10
    assert objective_grad(x, y, w_old, b_old, c) < 1e-6 and fit.grad_max < 1e-6
    scale = max(1.0, float(np.abs(fit.weight).max()))
    assert np.abs(fit.weight - w_old.numpy()).max() < 1e-5 * scale
    assert np.abs(fit.bias - b_old.numpy()).max() < 1e-5 * scale
    theta_old = np.concatenate([w_old.numpy().T, b_old.numpy()[None]]).ravel()
    theta_new = np.concatenate([fit.weight.T, fit.bias[None]]).ravel()
    args = (x.double().numpy(), y.numpy(), 3, 1.0 / (c * len(y)))
    assert abs(lp._loss_grad(theta_old, *args)[0] - lp._loss_grad(theta_new, *args)[0]) < 1e-10
    # at the default tolerance (gradient 1e-4) each stops near the optimum, as far as that tolerance allows: the
    # flatter the objective (larger C), the farther (measured: logits within 2e-4, 1.3e-3, 2.2e-2 of the optimum)
    w, b = fit_logistic_regression(x, y, 3, c)
    w_t, b_t = torch_lbfgs_fit(x, y, 3, c)
    logits_opt = x.double() @ w_old.t() + b_old
    for logits in (x.double() @ w.double().t() + b.double(), x.double() @ w_t.t() + b_t):
        assert (logits - logits_opt).abs().max() < {1e-2: 5e-4, 1.0: 3e-3, 100.0: 5e-2}[c]


def test_warm_start_gives_the_cold_start_solution():
    x, y = problem()
    xn, yn = x.double().numpy(), y.numpy()
    start = lbfgs_fit(xn, yn, 3, 1.0)
    for tol, atol in ((1e-4, 1e-2), (1e-9, 1e-6)):  # the same optimum, as far as each tolerance pins it down
        cold = lbfgs_fit(xn, yn, 3, 10.0, tol=tol)
        warm = lbfgs_fit(xn, yn, 3, 10.0, tol=tol, init=(start.weight, start.bias))
        assert np.abs(warm.weight - cold.weight).max() < atol and np.abs(warm.bias - cold.bias).max() < atol
        assert warm.converged and warm.grad_max < max(tol, 1e-6)  # at 1e-9 the ftol test may stop it first
    assert warm.n_iter < cold.n_iter  # the point of warm starting
    again = lbfgs_fit(xn, yn, 3, 10.0, init=(cold.weight, cold.bias))  # from a solution: returned unchanged
    assert again.n_iter == 0 and np.array_equal(again.weight, cold.weight)
    w, b = fit_logistic_regression(x, y, 3, 10.0, init=(torch.from_numpy(start.weight), torch.from_numpy(start.bias)))
    assert objective_grad(x, y, w, b, 10.0) < 1e-4


def test_iteration_cap_is_respected():
    x, y = problem()
    fit = lbfgs_fit(x.double().numpy(), y.numpy(), 3, 100.0, max_iter=3)
    assert fit.n_iter <= 3 and fit.capped and not fit.converged and fit.grad_max > 1e-4
    w, b = fit_logistic_regression(x, y, 3, 100.0, max_iter=3)
    assert objective_grad(x, y, w, b, 100.0) > 1e-4
    trace: list[LogRegFit] = []
    search_c((x, y), (x, y), 3, steps=2, max_iter=2, trace=trace)
    assert trace and all(f.n_iter <= 2 for f in trace)


@pytest.mark.parametrize("scores", ["flat", "peak", "rising", "falling", "ties"])
def test_search_keeps_the_old_decisions_ties_and_winner(monkeypatch, scores):
    """search_c's choices with scripted validation accuracies (a function of C) equal the old search's rule:
    coarse ties → the first grid value, bisection ties → the left end, the last kept fit wins."""
    score = {"flat": lambda c: 0.5, "peak": lambda c: -abs(math.log10(c) - 1.3),
             "rising": lambda c: math.log10(c), "falling": lambda c: -math.log10(c),
             "ties": lambda c: round(math.sin(3 * math.log10(c)), 1)}[scores]
    fitted: list[float] = []

    def fake_fit(x, y, k, c, *, max_iter, tol, init=None):  # the fit "is" its C: bias[0] = C
        fitted.append(c)
        return LogRegFit(c=c, weight=np.zeros((k, x.shape[1])), bias=np.array([c] + [0.0] * (k - 1)), n_iter=1,
                         capped=False, converged=True, grad_max=0.0, seconds=0.0)

    monkeypatch.setattr(lp, "lbfgs_fit", fake_fit)
    monkeypatch.setattr(lp, "accuracy", lambda logits, labels: score(float(logits[0, 0])))
    x, y = torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    val = (torch.zeros(4, 2, dtype=torch.float64), y)  # logits = bias: the scripted score reads C back
    best, w, b = search_c((x, y), val, 3, steps=8)
    assert best == old_search_rule(score, COARSE_C, 8)
    assert float(b[0]) == best  # the winning C's own fit
    assert len(fitted) == len(set(fitted)) <= len(COARSE_C) + 16  # each C fitted once
    assert fitted[:len(COARSE_C)] == sorted(COARSE_C)  # the coarse grid from the smallest C up (sklearn's path)
    assert search_c((x, y), val, 3, steps=0)[0] == old_search_rule(score, COARSE_C, 0)


def test_search_warm_starts_from_the_nearest_fitted_c(monkeypatch):
    starts: list[tuple[float, int | None]] = []
    fitted_c: dict[int, float] = {}  # id of a fit's bias array → its C (the search hands that array on as a start)
    real = lp.lbfgs_fit

    def spy(x, y, k, c, *, max_iter, tol, init=None):
        fit = real(x, y, k, c, max_iter=max_iter, tol=tol, init=init)
        starts.append((c, None if init is None else id(init[1])))
        fitted_c[id(fit.bias)] = c
        return fit

    monkeypatch.setattr(lp, "lbfgs_fit", spy)
    x, y = problem()
    search_c((x[:30], y[:30]), (x[30:], y[30:]), 3, steps=3, warm_start=True)
    assert starts[0] == (1e-6, None)  # the first fit starts from zeros
    done: list[float] = []
    for c, start in starts:
        if done:
            nearest = min(done, key=lambda d: (abs(math.log10(d) - math.log10(c)), d))  # ties: the smaller C
            assert fitted_c[start] == nearest
        done.append(c)
    starts.clear()
    search_c((x[:30], y[:30]), (x[30:], y[30:]), 3, steps=3, warm_start=False)
    assert starts and all(start is None for _, start in starts)  # one cold sklearn fit per C


def test_search_matches_cold_fits_on_a_well_conditioned_problem():
    """Warm starts and the fit cache change no decision here: the old rule on cold fits chooses the same C."""
    x, y = problem(n=90, seed=1)
    train, val = (x[:45], y[:45]), (x[45:], y[45:])

    def cold_score(c):
        w, b = fit_logistic_regression(*train, 3, c)
        return lp.accuracy(val[0] @ w.t() + b, val[1])

    best, w, b = search_c(train, val, 3, steps=4)
    assert best == old_search_rule(cold_score, COARSE_C, 4)
    assert objective_grad(*train, w, b, best) < 1e-4


@pytest.mark.parametrize("c", [1e-2, 1.0, 1e4])
def test_solver_torch_is_the_fitter_before_the_scipy_port_bit_for_bit(c):
    """``method.solver=torch`` reproduces the pre-change numbers: equal to the labelled copy of the old fitter."""
    x, y = problem()
    w_old, b_old = torch_lbfgs_fit(x, y, 3, c)
    fit = lp.torch_lbfgs_fit(x.double().numpy(), y.numpy(), 3, c)
    assert np.array_equal(fit.weight, w_old.numpy()) and np.array_equal(fit.bias, b_old.numpy())
    with pytest.raises(ValueError, match="warm_start"):
        lp.torch_lbfgs_fit(x.double().numpy(), y.numpy(), 3, c, init=(fit.weight, fit.bias))


def test_the_search_fits_every_c_from_zeros_by_default_as_the_reference():
    starts = []
    real = lp.lbfgs_fit

    def spy(x, y, k, c, *, max_iter, tol, init=None):
        starts.append(init)
        return real(x, y, k, c, max_iter=max_iter, tol=tol, init=init)

    x, y = problem()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lp, "lbfgs_fit", spy)
        search_c((x[:30], y[:30]), (x[30:], y[30:]), 3, steps=2)
    assert starts and all(s is None for s in starts)
