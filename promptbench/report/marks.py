"""Display helpers shared by the renderers: numbers back from cell text, best value per column, display names."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import pandas as pd

from promptbench.report.results_meta import display_name

_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)")


def cell_number(text: object) -> float:
    """The leading number of a cell ('72.41 ± 1.23 (2/3)' → 72.41); NaN for '–', 'failed', ''."""
    match = _NUMBER.match(str(text))
    return float(match.group(1)) if match else float("nan")


def best_mask(frame: pd.DataFrame, label_columns: int, higher_is_better: bool = True) -> pd.DataFrame:
    """True where a value cell is the best of its column among the rows compared: when 'Method' is a row label,
    the methods of each combination of the other row labels (e.g. per dataset); otherwise all rows. Ties are all
    marked; a column with fewer than two numbers in a block is not marked."""
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    labels = list(frame.columns[:label_columns])
    values = [c for c in frame.columns[label_columns:]]
    others = [c for c in labels if c != "Method"] if "Method" in labels else []
    blocks = frame.groupby(others, sort=False, dropna=False).groups.values() if others else [frame.index]
    for rows in blocks:
        for col in values:
            numbers = frame.loc[rows, col].map(cell_number)
            finite = numbers.dropna()
            if len(finite) < 2:
                continue
            best = finite.max() if higher_is_better else finite.min()
            mask.loc[finite.index[finite == best], col] = True
    return mask


def with_display_names(frame: pd.DataFrame, names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The 'Method' column (when there is one) with display names (``conf/method/<id>.yaml: display_name``)."""
    if "Method" not in frame.columns:
        return frame
    out = frame.copy()
    out["Method"] = [display_name(str(m), names) if str(m) else m for m in out["Method"]]
    return out


def is_missing(value: float) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
