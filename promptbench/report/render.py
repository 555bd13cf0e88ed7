"""Tables → Markdown, LaTeX and HTML documents (one section per table, notes, failed cells, comparison)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from promptbench.report.aggregate import Table
from promptbench.report.expected import Expected
from promptbench.report.marks import best_mask, with_display_names

FAILED_COLUMNS = ["method", "dataset", "shots", "seed", "error"]


def blank_repeats(frame: pd.DataFrame, columns: int = 1) -> pd.DataFrame:
    """Paper style: blank a row label equal to the one above it (first ``columns`` columns)."""
    out = frame.copy()
    for col in list(out.columns)[:columns]:
        values = out[col].tolist()
        out[col] = [v if i == 0 or v != values[i - 1] else "" for i, v in enumerate(values)]
    return out


def _row_dims(table: Table) -> int:
    return sum(c in ("Backbone", "Method", "Dataset", "K", "Metric") for c in table.frame.columns)


def markdown_table(frame: pd.DataFrame, label_columns: int = 1) -> str:
    """A GitHub pipe table (labels left-aligned, values right-aligned)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join(":---" if i < label_columns else "---:" for i in range(len(frame.columns))) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


def comparison_frame(comparison: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Display form of :func:`promptbench.report.expected.compare` (numbers as text, '–' when ours is missing)."""
    def num(v: float, signed: bool = False) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"

    shots = ["" if s is None or (isinstance(s, float) and math.isnan(s)) else f"K={int(s)}"
             for s in comparison["shots"]]
    return pd.DataFrame({
        "Source": comparison["source"], "Method": comparison["method"], "Dataset": comparison["dataset"],
        "K": shots, "Metric": comparison["metric"], "Ours": [num(v) for v in comparison["ours"]],
        "Theirs": [num(v) for v in comparison["theirs"]], "Δ (ours − theirs)": [num(v, True) for v in
                                                                              comparison["diff"]],
    })


def _source_lines(expected: Expected) -> list[str]:
    lines = []
    for key, src in expected.sources.items():
        label = f" [{src['label']}]" if src.get("label") else ""
        url = f" <{src['url']}>" if src.get("url") else ""
        lines.append(f"`{key}`{label}: {src.get('citation', '')}{url}".strip())
    return lines


def render_markdown(tables: Sequence[Table], header: str, comparison: pd.DataFrame | None = None,
                    expected: Expected | None = None) -> str:
    parts = [f"# {header}", ""]
    for table in tables:
        parts += [f"## {table.title}", ""]
        if table.subtitle:
            parts += [f"_{table.subtitle}_", ""]
        parts += [markdown_table(blank_repeats(table.frame), _row_dims(table)) if len(table.frame)
                  else "_no cells_", ""]
        parts += [f"- {n}" for n in table.notes] + [""]
        if table.missing:
            parts += [f"Missing: {table.missing} cell(s) without any result ('–').", ""]
        if len(table.failed):
            parts += [f"Failed runs ({len(table.failed)}), not averaged:", "",
                      markdown_table(table.failed[FAILED_COLUMNS].fillna(""), 2), ""]
        if len(table.stale):
            cells = ["/".join(Path(p).parts[-7:-1]) for p in table.stale["path"]]
            shown = ", ".join(cells[:20]) + (f", … ({len(cells) - 20} more)" if len(cells) > 20 else "")
            parts += [f"Stale results ({len(cells)}), included above: their config, weights, subset or data changed "
                      f"since they were run (the next sweep re-runs them): {shown}", ""]
    if comparison is not None and expected is not None:
        parts += [f"## Published numbers: {expected.name}", "", expected.description, ""]
        parts += [f"- {line}" for line in _source_lines(expected)] + [""]
        parts += [markdown_table(comparison_frame(comparison), 5) if len(comparison)
                  else "_no published number matches a cell of this table_", ""]
    return "\n".join(parts).rstrip() + "\n"


def _latex_escape(text: Any) -> str:
    s = str(text)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return (s.replace("±", r"$\pm$").replace("–", "--").replace("−", "-").replace("†", r"$^\dagger$")
            .replace("·", r"$\cdot$").replace("Δ", r"$\Delta$"))


def latex_label(*parts: str) -> str:
    """``tab:<parts>`` with only letters, digits and ``-:`` (safe in ``\\label`` and ``\\ref``)."""
    return "tab:" + "-".join(re.sub(r"[^A-Za-z0-9:-]+", "-", str(p)).strip("-") for p in parts if str(p))


def latex_table(frame: pd.DataFrame, caption: str, label_columns: int = 1, label: str | None = None,
                bold: pd.DataFrame | None = None) -> str:
    """A booktabs ``table`` (``\\toprule``/``\\midrule``/``\\bottomrule``) through pandas' Styler, with ``\\label``
    and ``\\textbf`` where ``bold`` (same shape as ``frame``) is True."""
    body = frame.map(_latex_escape)
    body.columns = [_latex_escape(c) for c in frame.columns]
    styler = body.style.hide(axis="index")
    if bold is not None and bool(bold.to_numpy().any()):
        marks = pd.DataFrame(bold.to_numpy(), index=body.index, columns=body.columns)
        styler = styler.apply(lambda _: marks.replace({True: "textbf:--rwrap;", False: ""}), axis=None)
    fmt = "l" * label_columns + "r" * (len(frame.columns) - label_columns)
    text = styler.to_latex(hrules=True, column_format=fmt, caption=_latex_escape(caption), label=label,
                           position="t", position_float="centering", environment="table")
    return text.replace("\\centering\n", "\\centering\n\\small\n", 1).rstrip() + "\n"


def render_latex(tables: Sequence[Table], comparison: pd.DataFrame | None = None,
                 expected: Expected | None = None) -> str:
    """LaTeX ``table`` environments (booktabs rules, ``\\label{tab:<name>-<protocol>}``, method display names, best
    value per column in bold); notes as comments."""
    parts = ["% generated by `promptbench table`; needs \\usepackage{booktabs}", ""]
    for table in tables:
        parts += [f"% {n}" for n in table.notes]
        caption = table.title + (f" ({table.subtitle})" if table.subtitle else "")
        if len(table.frame):
            frame = with_display_names(table.frame)
            bold = best_mask(frame, _row_dims(table))
            parts.append(latex_table(blank_repeats(frame), caption, _row_dims(table),
                                     latex_label(table.name, table.protocol), bold))
        if len(table.failed):
            parts += ["% failed runs (not averaged):"] + [
                f"%   {r['method']} {r['dataset']} K={r['shots']} seed={r['seed']}: {r['error']}"
                for r in table.failed.to_dict("records")] + [""]
    if comparison is not None and expected is not None and len(comparison):
        parts += [f"% sources: {line}" for line in _source_lines(expected)]
        parts.append(latex_table(comparison_frame(comparison), f"Ours vs published: {expected.name}", 5,
                                 latex_label(expected.name, "published")))
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:0.85em}.close{background:#e3f4e3}.off{background:#fdebd0}.far{background:#f8d7da}"""


def _diff_class(text: str) -> str:
    try:
        value = abs(float(text))
    except ValueError:
        return ""
    return "close" if value <= 1.0 else ("off" if value <= 3.0 else "far")


def _html_table(frame: pd.DataFrame, diff_column: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False, name=None):
        cells = []
        for col, value in zip(frame.columns, row):
            cls = _diff_class(str(value)) if col == diff_column else ""
            cells.append(f"<td class=\"{cls}\">{html.escape(str(value))}</td>" if cls
                         else f"<td>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(tables: Sequence[Table], header: str, comparison: pd.DataFrame | None = None,
                expected: Expected | None = None) -> str:
    """A standalone page; the comparison's Δ is coloured (≤1 point green, ≤3 amber, else red)."""
    parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(header)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(header)}</h1>"]
    for table in tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2>")
        if table.subtitle:
            parts.append(f"<p><em>{html.escape(table.subtitle)}</em></p>")
        if len(table.frame):
            parts.append(_html_table(blank_repeats(table.frame)))
        parts += [f"<p class=\"note\">{html.escape(n)}</p>" for n in table.notes]
        if table.missing:
            parts.append(f"<p>Missing: {table.missing} cell(s) without any result ('–').</p>")
        if len(table.failed):
            parts += [f"<h3>Failed runs ({len(table.failed)}), not averaged</h3>",
                      _html_table(table.failed[FAILED_COLUMNS].fillna(""))]
    if comparison is not None and expected is not None:
        parts += [f"<h2>Published numbers: {html.escape(expected.name)}</h2>",
                  f"<p>{html.escape(expected.description)}</p>", "<ul>"]
        parts += [f"<li>{html.escape(line)}</li>" for line in _source_lines(expected)] + ["</ul>"]
        if len(comparison):
            parts.append(_html_table(comparison_frame(comparison), "Δ (ours − theirs)"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
