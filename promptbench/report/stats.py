"""Seed-paired statistics for ``promptbench table``: a 95% t-interval for every mean over seeds, and a paired
comparison of every method with a reference method (default ``zeroshot``) over matched (dataset, shots, seed)
results. Written as ``stats.{md,html}``, ``stats_intervals.csv`` and ``stats_paired.csv`` beside the main table.

Definitions (also printed under the tables, see :func:`stats_notes`):

- interval: the t-interval ``mean ± t_{0.975, n-1} · s / sqrt(n)`` over the ``n`` seeds with an ``ok`` result
  (``scipy.stats.t``), intersected with the metric's range (:func:`metric_range`: [0, 1] for accuracy, F1, AUC,
  coverage, ECE, coverage gap...; [0, 2] for the Brier score; [0, ∞) for set size and NLL). The mean of a bounded
  metric lies in its range, so the intersection contains it whenever the t-interval does: its coverage is at least
  the t-interval's, and it never prints an impossible value such as 106 % coverage. An end cut at a bound is
  marked ``‡`` (``clipped``): there the seeds vary too much for the t-interval to say anything the range does not.
  No interval with fewer than :data:`MIN_SEEDS` (3) seeds: with 2, ``t_{0.975, 1} = 12.7`` makes the interval
  ±9 times the two seeds' distance (one seed: none at all); the cell shows the mean and ``n`` instead.
  (Why not a logit-scale interval: values at the bounds, e.g. 100 % coverage or 0 ECE on a small test set, have
  no logit, so any correction would decide the interval; and it is centred on the back-transformed mean logit,
  not on the mean the tables print. A percentile bootstrap over 3 seeds has 10 distinct resamples.);
- paired comparison: for each (backbone, dataset, shots) and method ≠ reference, the differences
  ``d_s = method_s − reference_s`` over the seeds ``s`` where both have a result; mean difference with its
  t-interval (the same rules: within ± the range's width, at least 3 pairs), paired t-test
  (``scipy.stats.ttest_1samp`` on the differences, identical to ``ttest_rel``) and Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, exact two-sided; with 3 seeds its smallest possible p is 0.25, so it can never be
  significant at 0.05);
- multiple comparisons: the paired-t p-values of one table (every method × dataset × shots) are adjusted with
  Holm's step-down method (``statsmodels.stats.multitest.multipletests``); ``*`` marks an adjusted p below
  ``alpha`` (0.05). Seeds share nothing but the seed, so these are statements about seed-to-seed variation on
  one fixed test set, not about new patients.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from promptbench.report.aggregate import base_metrics, harmonic_mean, is_b2n
from promptbench.report.marks import with_display_names
from promptbench.report.report import ReportSection
from promptbench.report.results_meta import dataset_display_names

__all__ = ["seed_intervals", "paired_comparison", "stats_frames", "write_stats", "stats_notes", "INTERVAL_LABEL",
           "MIN_SEEDS", "bounded_t_interval", "metric_range"]

INTERVAL_LABEL = "95% t-interval over seeds, within the metric's range"
#: fewest seeds (or seed pairs) an interval is given for
MIN_SEEDS = 3
#: marks an interval end cut at the metric's bound
CLIPPED = "‡"
#: metric name suffix → its range, for metrics not in [0, 1] (fractions)
RANGES = {"set_size": (0.0, math.inf), "nll": (0.0, math.inf), "brier": (0.0, 2.0)}
KEY = ["protocol", "backbone", "dataset", "shots"]
#: differences closer than this count as equal (metrics are fractions stored as float32 in result files)
TIE_TOLERANCE = 1e-9
#: metrics shown as they are (not as percentages)
RAW_SCALE = ("set_size", "nll", "brier")


def _per_seed(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per ok result: KEY, method, seed, metric label, value (fractions). The label is the metric's name;
    base-to-novel: base/novel (and a per-seed HM) for acc, ``base_<metric>``/``novel_<metric>`` otherwise."""
    ok = long[long["status"] == "ok"] if "status" in long else long
    frames = []
    for protocol, block in ok.groupby("protocol", sort=False):
        cols = base_metrics(str(protocol), metric)
        present = {k: v for k, v in cols.items() if v in block.columns}
        if not present:
            continue
        if not is_b2n(str(protocol)):
            present = {metric: next(iter(present.values()))}
        elif metric != "acc":
            present = {f"{k}_{metric}": v for k, v in present.items()}
        wide = block[[*KEY, "method", "seed", *present.values()]].rename(columns={v: k for k, v in present.items()})
        if is_b2n(str(protocol)) and metric == "acc" and {"base", "novel"} <= set(present):
            wide["hm"] = [harmonic_mean(b, n) for b, n in zip(wide["base"], wide["novel"])]
        value_cols = [c for c in wide.columns if c not in (*KEY, "method", "seed")]
        frames.append(wide.melt(id_vars=[*KEY, "method", "seed"], value_vars=value_cols, var_name="metric"))
    if not frames:
        return pd.DataFrame(columns=[*KEY, "method", "seed", "metric", "value"])
    out = pd.concat(frames, ignore_index=True)
    return out.dropna(subset=["value"]).reset_index(drop=True)


def metric_range(name: str) -> tuple[float, float]:
    """The values a metric can take (as stored: fractions): ``[0, 1]`` unless :data:`RANGES` says otherwise
    (by suffix, so ``lac_set_size`` and ``base_nll`` are found)."""
    for suffix, bounds in RANGES.items():
        if str(name).endswith(suffix):
            return bounds
    return 0.0, 1.0


def bounded_t_interval(values: Sequence[float], confidence: float = 0.95,
                       bounds: tuple[float, float] = (0.0, 1.0),
                       min_n: int = MIN_SEEDS) -> tuple[float, float, str]:
    """(low, high, clipped) of the t-interval of the mean of ``values`` (``scipy.stats.t``) intersected with
    ``bounds``; ``clipped``: ``low``, ``high``, ``both`` or ``""``. NaN ends with fewer than ``min_n`` values."""
    n = len(values)
    if n < max(2, min_n):
        return float("nan"), float("nan"), ""
    mean, sem = float(np.mean(values)), float(sps.sem(values))
    low, high = (mean, mean) if sem == 0 else (float(x) for x in sps.t.interval(confidence, n - 1, loc=mean,
                                                                                 scale=sem))
    lo_cut, hi_cut = low < bounds[0], high > bounds[1]
    clipped = "both" if lo_cut and hi_cut else ("low" if lo_cut else ("high" if hi_cut else ""))
    return max(low, bounds[0]), min(high, bounds[1]), clipped


def seed_intervals(long: pd.DataFrame, metric: str = "acc", confidence: float = 0.95) -> pd.DataFrame:
    """Per (protocol, backbone, dataset, shots, method, metric): ``n``, ``mean``, ``std``, ``ci_low``,
    ``ci_high`` and ``interval`` (its label) over seeds. ``metric``: the result metric (acc, ece, lac_coverage...).
    """
    per_seed = _per_seed(long, metric)
    rows = []
    for key, block in per_seed.groupby([*KEY, "method", "metric"], sort=False):
        values = block["value"].astype(float).tolist()
        bounds = metric_range(str(key[-1]))
        low, high, clipped = bounded_t_interval(values, confidence, bounds)
        rows.append({**dict(zip([*KEY, "method", "metric"], key)), "n": len(values),
                     "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                     else float("nan"), "ci_low": low, "ci_high": high, "clipped": clipped,
                     "interval": (f"{round(100 * confidence)}% t-interval over seeds within [{bounds[0]:g}, "
                                  f"{bounds[1]:g}]" if len(values) >= MIN_SEEDS else
                                  f"none: {len(values)} seed(s) < {MIN_SEEDS}")})
    return pd.DataFrame(rows, columns=[*KEY, "method", "metric", "n", "mean", "std", "ci_low", "ci_high", "clipped",
                                       "interval"])


def _p_values(diffs: np.ndarray) -> tuple[float, float]:
    """(paired t p, Wilcoxon signed-rank p) of the differences; NaN with fewer than two pairs; all differences 0:
    (1, 1); identical non-zero differences (no variance to test against): t p NaN."""
    if len(diffs) < 2:
        return float("nan"), float("nan")
    if np.all(np.abs(diffs) < TIE_TOLERANCE):
        return 1.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_t = float(sps.ttest_1samp(diffs, 0.0).pvalue) if np.ptp(diffs) > TIE_TOLERANCE else float("nan")
        p_w = float(sps.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    return p_t, p_w


def paired_comparison(long: pd.DataFrame, reference: str = "zeroshot", metric: str = "acc",
                      confidence: float = 0.95, alpha: float = 0.05) -> pd.DataFrame:
    """Every method against ``reference`` over matched (protocol, backbone, dataset, shots, seed) results.

    Columns: KEY, ``method``, ``reference``, ``metric``, ``n_pairs``, ``seeds``, ``mean_diff``, ``ci_low``,
    ``ci_high``, ``p_ttest``, ``p_wilcoxon``, ``p_holm`` (Holm-adjusted paired-t p over all rows of one
    (protocol, backbone, metric)), ``significant`` (``p_holm < alpha``). Differences are fractions (method − ref).
    """
    per_seed = _per_seed(long, metric)
    cols = [*KEY, "method", "reference", "metric", "n_pairs", "seeds", "mean_diff", "ci_low", "ci_high", "p_ttest",
            "p_wilcoxon", "p_holm", "significant"]
    ref = per_seed[per_seed["method"] == reference]
    if ref.empty:
        return pd.DataFrame(columns=cols)
    merged = per_seed[per_seed["method"] != reference].merge(
        ref.drop(columns="method"), on=[*KEY, "seed", "metric"], suffixes=("", "_ref"))
    rows = []
    for key, block in merged.groupby([*KEY, "method", "metric"], sort=False):
        block = block.sort_values("seed")
        diffs = (block["value"].astype(float) - block["value_ref"].astype(float)).to_numpy()
        lo, hi = metric_range(str(key[-1]))
        low, high, _ = bounded_t_interval(diffs.tolist(), confidence, (lo - hi, hi - lo))
        p_t, p_w = _p_values(diffs)
        rows.append({**dict(zip([*KEY, "method", "metric"], key)), "reference": reference, "n_pairs": len(diffs),
                     "seeds": ",".join(str(int(s)) for s in block["seed"]), "mean_diff": float(diffs.mean()),
                     "ci_low": low, "ci_high": high, "p_ttest": p_t, "p_wilcoxon": p_w})
    out = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "significant")])
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["protocol", "backbone", "metric"], sort=False).groups.items():
        pvals = out.loc[idx, "p_ttest"]
        valid = pvals.notna()
        if valid.any():
            out.loc[pvals[valid].index, "p_holm"] = multipletests(pvals[valid].to_numpy(), method="holm")[1]
    out["significant"] = out["p_holm"] < alpha
    return out[cols].reset_index(drop=True)


def stats_notes(reference: str, n_tests: int, alpha: float = 0.05) -> list[str]:
    return [
        f"Intervals: {INTERVAL_LABEL}: the t-interval mean ± t·s/√n (scipy.stats.t) intersected with the metric's "
        "range ([0, 100] % for accuracy, F1, AUC, coverage, ECE; ≥ 0 for set size and NLL; [0, 2] for Brier). The "
        "mean lies in that range, so the intersection covers it at least as often as the t-interval does; "
        f"{CLIPPED} marks an end cut at the bound (the seeds vary too much for the t-interval to say more there).",
        f"No interval with fewer than {MIN_SEEDS} seeds, '(n=2)': with 2 seeds t(0.975, 1) = 12.7 makes the "
        "interval ±9 times the distance between them.",
        f"Δ vs {reference}: mean over matched seeds of (method − {reference}), with its 95% t-interval (at least "
        f"{MIN_SEEDS} pairs); "
        "p_t = paired t-test (scipy.stats.ttest_1samp on the differences), p_W = Wilcoxon signed-rank "
        "(scipy.stats.wilcoxon, exact; with 3 seeds its smallest p is 0.25). Identical non-zero differences on "
        "every seed leave no variance to test: p_t = –.",
        f"Multiple comparisons: {n_tests} paired t-tests per table, Holm-adjusted (statsmodels); "
        f"* = adjusted p < {alpha}. Unadjusted p-values are shown for reference only.",
        "Seeds vary the few-shot sample and training randomness on one fixed test set: the intervals describe that "
        "variation, not generalisation to new patients or sites.",
    ]


def _num(v: Any, digits: int = 1, scale: float = 100.0, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{scale * v:+.{digits}f}" if signed else f"{scale * v:.{digits}f}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _p(v: float) -> str:
    return "–" if v is None or math.isnan(v) else (f"{v:.3f}" if v >= 0.001 else "<0.001")


def display_frames(intervals: pd.DataFrame, paired: pd.DataFrame, metric: str = "acc",
                   digits: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display tables (strings; percentages except set sizes, NLL and Brier): rows (backbone, dataset, method,
    metric; dataset and method display names), one column per K: ``mean [low, high]`` (``‡``: an end cut at the
    metric's bound), ``mean (n=2)`` without an interval. ``metric`` is the table metric (the paired frame's)."""
    main = intervals
    clipped = main["clipped"] if "clipped" in main else pd.Series([""] * len(main), index=main.index)

    def fmt(name: str, m: float, lo: float, hi: float, n: int, cut: str) -> str:
        scale, dig = (1.0, 2) if str(name).endswith(RAW_SCALE) else (100.0, digits)
        if _missing(lo) or _missing(hi):
            return f"{_num(m, dig, scale)} (n={n})"
        low = _num(lo, dig, scale) + (CLIPPED if cut in ("low", "both") else "")
        high = _num(hi, dig, scale) + (CLIPPED if cut in ("high", "both") else "")
        return f"{_num(m, dig, scale)} [{low}, {high}]"

    iv = main.assign(text=[fmt(*row) for row in zip(main["metric"], main["mean"], main["ci_low"], main["ci_high"],
                                                     main["n"], clipped.fillna(""))])

    def ci(lo: float, hi: float, n: int) -> str:
        if _missing(lo) or _missing(hi):
            return f"(n={n})"
        return f"[{_num(lo, digits, signed=True)}, {_num(hi, digits, signed=True)}]"

    pr = paired.assign(text=[
        f"{_num(d, digits, signed=True)} {ci(lo, hi, n)} p_t={_p(pt)} p_W={_p(pw)}{' *' if sig else ''}"
        for d, lo, hi, n, pt, pw, sig in zip(paired["mean_diff"], paired["ci_low"], paired["ci_high"],
                                             paired["n_pairs"], paired["p_ttest"], paired["p_wilcoxon"],
                                             paired["significant"])])

    def pivot(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return pd.DataFrame()
        wide = frame.pivot_table(index=["backbone", "dataset", "method", "metric"], columns="shots", values="text",
                                 aggfunc="first", sort=False)
        wide.columns = [f"K={c}" for c in wide.columns]
        out = wide.reset_index().rename(columns=str.capitalize).fillna("–")
        names = dataset_display_names()
        out["Dataset"] = [names.get(str(d), d) for d in out["Dataset"]]
        return with_display_names(out)

    return pivot(iv), pivot(pr)


def stats_frames(long: pd.DataFrame, reference: str = "zeroshot", metric: str = "acc",
                 extra_metrics: Sequence[str] = ("ece", "lac_coverage", "lac_set_size"),
                 confidence: float = 0.95, alpha: float = 0.05) -> dict[str, pd.DataFrame]:
    """The numeric frames (for the HTML report too): ``intervals`` (table metric and ``extra_metrics``) and
    ``paired`` (table metric)."""
    intervals = pd.concat([seed_intervals(long, m, confidence) for m in [metric, *extra_metrics]],
                          ignore_index=True)
    return {"intervals": intervals, "paired": paired_comparison(long, reference, metric, confidence, alpha)}


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no data)"
    cell = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False, name=None)]
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join(":---" if not str(c).startswith("K=") else "---:" for c in frame.columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in cell)])


def write_stats(long: pd.DataFrame, out_dir: Path, reference: str = "zeroshot", metric: str = "acc",
                title: str = "", alpha: float = 0.05) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """Write ``stats_intervals.csv``, ``stats_paired.csv``, ``stats.md`` and ``stats.html`` to ``out_dir``."""
    frames = stats_frames(long, reference, metric, alpha=alpha)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames["intervals"].to_csv(out_dir / "stats_intervals.csv", index=False)
    frames["paired"].to_csv(out_dir / "stats_paired.csv", index=False)
    iv, pr = display_frames(frames["intervals"], frames["paired"], metric)
    notes = stats_notes(reference, int(frames["paired"]["p_ttest"].notna().sum()), alpha)
    heading = title or "Seed statistics"
    md = [f"# {heading}", "", f"## Mean [{INTERVAL_LABEL}] (%)", "", _markdown(iv), "",
          f"## Paired difference vs {reference} (percentage points)", "", _markdown(pr), "",
          *[f"- {n}" for n in notes], ""]
    (out_dir / "stats.md").write_text("\n".join(md))
    esc = html.escape
    body = [f"<h1>{esc(heading)}</h1>", f"<h2>Mean [{esc(INTERVAL_LABEL)}] (%)</h2>",
            iv.to_html(index=False, escape=True) if not iv.empty else "<p>(no data)</p>",
            f"<h2>Paired difference vs {esc(reference)} (percentage points)</h2>",
            pr.to_html(index=False, escape=True) if not pr.empty else "<p>(no data)</p>",
            "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"]
    (out_dir / "stats.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>"
                                        f"{esc(heading)}</title></head><body>{''.join(body)}</body></html>\n")
    files = [out_dir / f for f in ("stats_intervals.csv", "stats_paired.csv", "stats.md", "stats.html")]
    return frames, files


def report_sections(tables: Sequence[Any], out_dir: Path, stats: dict[str, pd.DataFrame] | None = None,
                    reference: str = "zeroshot", metric: str = "acc", alpha: float = 0.05) -> list[Any]:
    """The HTML report's statistics sections (called by ``tables.report.stats_sections``): intervals per mean
    over seeds and the paired comparison with ``reference``, from the frames the table build computed."""

    if stats is None:
        long = pd.concat([t.long for t in tables], ignore_index=True) if tables else pd.DataFrame()
        if long.empty:
            return []
        stats = stats_frames(long, reference, metric, alpha=alpha)

    iv, pr = (with_display_names(f) for f in display_frames(stats["intervals"], stats["paired"], metric))
    notes = stats_notes(reference, int(stats["paired"]["p_ttest"].notna().sum()) if not stats["paired"].empty else 0,
                        alpha)
    return [ReportSection(f"Mean [{INTERVAL_LABEL}] (%)", frame=iv, label_columns=4),
            ReportSection(f"Paired difference vs {reference} (percentage points; * = significant after Holm)",
                          frame=pr, label_columns=4, notes=notes)]
