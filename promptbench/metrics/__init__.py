"""Trust metrics computed from a cell's logits: calibration (:mod:`.calibration`) and conformal sets
(:mod:`.conformal`)."""

from promptbench.metrics.calibration import calibration_metrics, reliability_bins
from promptbench.metrics.conformal import conformal_metrics

__all__ = ["calibration_metrics", "reliability_bins", "conformal_metrics"]
