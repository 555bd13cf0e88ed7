"""One self-contained HTML report per table build (``report.html``): no external file, font, script or CDN.

Per table: the paper-style table (method display names, best value per column marked, columns sortable by a click
on their heading, a small inline script), its notes, failed and stale cells, and its figures (inline SVG; links to
the PDF and 300-dpi PNG beside the report). Then optional extra sections and the comparison with published numbers.

Extra sections (e.g. confidence intervals and paired significance tests) plug in through :class:`ReportSection`:
pass them to :func:`render_report` / ``build(..., sections=...)``, or define
``report_sections(tables: list[Table], out_dir: Path) -> list[ReportSection]`` in ``promptbench/tables/stats.py``;
it is called when that module exists (see docs/report.md).
"""

from __future__ import annotations

import base64
import html
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from promptbench.report.aggregate import Table
from promptbench.report.expected import Expected
from promptbench.report.marks import best_mask, cell_number, with_display_names
from promptbench.report.render import FAILED_COLUMNS, _row_dims, _source_lines, comparison_frame

log = logging.getLogger("promptbench")

#: the module whose ``report_sections(tables, out_dir)`` adds sections when it exists
STATS_MODULE = "promptbench.report.stats"


@dataclass
class ReportSection:
    """An extra part of the report. Any of: ``frame`` (a table; ``best_columns``: its first ``label_columns`` are
    labels and the best value of each other column is marked when ``mark_best``), ``html`` (a trusted fragment),
    ``figures`` (image files: SVG inline, PNG/JPEG embedded), ``notes`` (plain text lines)."""

    title: str
    frame: pd.DataFrame | None = None
    html: str = ""
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_columns: int = 1
    mark_best: bool = False
    higher_is_better: bool = True


_CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--rule:#d9d9de;--head:#f3f3f6;--best:#fff2c4}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1400px;padding:0 1.5rem;color:var(--fg);line-height:1.4}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid var(--rule)}
h3{font-size:1rem}.meta,.note{color:var(--muted);font-size:.85rem}
nav ul{columns:2;font-size:.9rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.8rem 0;font-size:.85rem;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;text-align:right;white-space:nowrap;border-bottom:1px solid var(--rule)}
thead th{background:var(--head);border-top:2px solid var(--fg);border-bottom:1px solid var(--fg);position:sticky;top:0}
tbody tr:last-child td{border-bottom:2px solid var(--fg)}
th.label,td.label{text-align:left}
table.sortable thead th{cursor:pointer;user-select:none}
table.sortable thead th::after{content:" \\2195";color:#aaa;font-size:.8em}
table.sortable thead th[aria-sort=ascending]::after{content:" \\2191";color:var(--fg)}
table.sortable thead th[aria-sort=descending]::after{content:" \\2193";color:var(--fg)}
td.best{font-weight:700;background:var(--best)}
tbody tr:hover td{background:#eef3fb}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid var(--rule)}
figcaption{font-size:.85rem;color:var(--muted)}
.close{background:#e3f4e3}.off{background:#fdebd0}.far{background:#f8d7da}
"""

# sort a table by the clicked column: numbers by value ('72.41 ± 1.23' → 72.41), text alphabetically, empty and
# '–' / 'failed' last in both directions; a second click reverses
_JS = """
(function(){
  function key(td){var t=td.textContent.trim();var m=t.match(/^[-+]?\\d+(\\.\\d+)?/);
    return m?{n:parseFloat(m[0]),t:t}:{n:null,t:t};}
  function sort(table,col,th){
    var dir=th.getAttribute('aria-sort')==='descending'?'ascending':'descending';
    if(th.getAttribute('aria-sort')===null){var k0=key(table.tBodies[0].rows[0].cells[col]);
      if(k0.n===null)dir='ascending';}
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir);var s=dir==='ascending'?1:-1;
    var rows=Array.prototype.slice.call(table.tBodies[0].rows);
    rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
      if(x.n!==null&&y.n!==null)return s*(x.n-y.n);if(x.n!==null)return -1;if(y.n!==null)return 1;
      if(!x.t&&y.t)return 1;if(x.t&&!y.t)return -1;return s*x.t.localeCompare(y.t);});
    rows.forEach(function(r){table.tBodies[0].appendChild(r);});}
  document.querySelectorAll('table.sortable').forEach(function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
      th.title='sort by this column';th.addEventListener('click',function(){sort(table,i,th);});});});
  var m=location.hash.match(/sort=(\\d+)/);  // report.html#sort=3: the first table sorted by column 3 (0-based)
  var first=document.querySelector('table.sortable');
  if(m&&first&&first.tHead.rows[0].cells[+m[1]])sort(first,+m[1],first.tHead.rows[0].cells[+m[1]]);
  document.body.classList.add('js-ready');
})();
"""


def html_table(frame: pd.DataFrame, label_columns: int = 1, best: pd.DataFrame | None = None,
               sortable: bool = True, diff_column: str | None = None) -> str:
    """A table with label columns left-aligned, ``class="best"`` where ``best`` is True, optional Δ colouring."""
    classes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for i, col in enumerate(frame.columns):
        if i < label_columns:
            classes[col] = "label"
    if best is not None:
        classes = classes.where(~best.reindex_like(classes).fillna(False).astype(bool), classes + " best")
    if diff_column and diff_column in frame:
        def diff(v: object) -> str:
            x = abs(cell_number(v))
            return "" if x != x else ("close" if x <= 1 else ("off" if x <= 3 else "far"))
        classes[diff_column] = frame[diff_column].map(diff)
    head = "".join(f"<th class=\"{'label' if i < label_columns else ''}\" scope=\"col\">{html.escape(str(c))}</th>"
                   for i, c in enumerate(frame.columns))
    rows = []
    for idx, row in frame.iterrows():
        cells = "".join(f"<td class=\"{classes.at[idx, c].strip()}\">{html.escape(str(v))}</td>"
                        for c, v in zip(frame.columns, row.tolist()))
        rows.append(f"<tr>{cells}</tr>")
    cls = " class=\"sortable\"" if sortable else ""
    return (f"<div class=\"scroll\"><table{cls}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def figure_html(path: Path, caption: str = "") -> str:
    """A figure embedded in the page (SVG and PNG as data URIs, so their ids cannot clash), with links to the
    sibling PDF / PNG / SVG files that exist."""
    path = Path(path)
    mime = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower())
    if mime is None or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    links = " · ".join(f"<a href=\"{html.escape(p.name)}\">{p.suffix[1:].upper()}</a>"
                       for p in (path.with_suffix(s) for s in (".pdf", ".png", ".svg")) if p.is_file())
    caption = html.escape(caption or path.stem.replace("_", " "))
    return (f"<figure><img alt=\"{caption}\" src=\"data:{mime};base64,{data}\">"
            f"<figcaption>{caption}{' — ' + links if links else ''}</figcaption></figure>")


def _figures_for(table: Table, files: Sequence[Path]) -> list[Path]:
    """The table's figures (one per stem: the SVG, else the PNG)."""
    stems: dict[Path, Path] = {}
    for f in files:
        f = Path(f)
        if f.suffix in (".svg", ".png") and (f.suffix == ".svg" or f.with_suffix(".svg") not in files):
            stems.setdefault(f.with_suffix(""), f)
    prefix = f"{table.protocol}_"
    several = any(s.name.startswith(prefix) for s in stems)
    return [f for s, f in stems.items() if not several or s.name.startswith(prefix)]


_CAPTIONS = {
    "acc_vs_shots": "Accuracy vs shots per class: mean over seeds ± sample std (methods at one K slightly offset "
                    "so their bars do not overlap); dotted grey line: chance.",
    "acc_bars": "Accuracy per dataset and average: mean over seeds ± sample std; dotted grey line: chance.",
    "base_novel": "Base and novel accuracy (mean over seeds ± sample std) and their harmonic mean (black tick); "
                  "dotted lines: chance on base (blue) and novel (vermillion) classes.",
}


def _caption(path: Path) -> str:
    """The figure's caption; a per-family figure (``acc_vs_shots_text``) is prefixed with the family's name."""
    for key, text in _CAPTIONS.items():
        if path.stem.endswith(key):
            return text
        if f"{key}_" in path.stem:
            from promptbench.methods.registry import FAMILIES

            family = path.stem.rsplit(f"{key}_", 1)[1]
            return f"{FAMILIES.get(family, family)}. {text}"
    return path.stem.replace("_", " ")


def _section_html(section: ReportSection) -> list[str]:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    if section.frame is not None and len(section.frame):
        best = (best_mask(section.frame, section.label_columns, section.higher_is_better)
                if section.mark_best else None)
        parts.append(html_table(section.frame, section.label_columns, best))
    if section.html:
        parts.append(section.html)
    parts += [figure_html(f) for f in section.figures]
    parts += [f"<p class=\"note\">{html.escape(n)}</p>" for n in section.notes]
    return parts


def stats_sections(tables: Sequence[Table], out_dir: Path, module: str = STATS_MODULE,
                   **context: Any) -> list[ReportSection]:
    """Sections from ``<module>.report_sections(tables, out_dir, **context)`` when that module and function exist
    (``context``: what the table build already computed, e.g. ``stats`` frames and the ``reference`` method)."""
    try:
        stats = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return []
    hook: Callable | None = getattr(stats, "report_sections", None)
    if hook is None:
        return []
    return list(hook(list(tables), out_dir, **context) or [])


def render_report(tables: Sequence[Table], title: str, out_dir: Path, figures: Sequence[Path] = (),
                  comparison: pd.DataFrame | None = None, expected: Expected | None = None,
                  sections: Sequence[ReportSection] = (), source: str = "", command: str = "",
                  heading: str = "") -> str:
    """The report page (see the module docstring). ``source``: where the results came from, as shown (keep it
    relative); ``command``: the command that rebuilds it; ``heading``: the page heading (default: ``title``)."""
    anchors = [f"t{i}" for i in range(len(tables))]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(heading or title)}</h1>",
             "<p class=\"meta\">" + " · ".join(html.escape(x) for x in (
                 f"{sum(len(t.long) for t in tables)} result file(s)" + (f" from {source}" if source else ""),
                 f"generated {stamp}", command) if x) + "</p>"]
    if len(tables) + len(sections) > 1:
        parts.append("<nav><ul>" + "".join(f"<li><a href=\"#{a}\">{html.escape(t.title)}</a></li>"
                                           for a, t in zip(anchors, tables)) + "</ul></nav>")
    for anchor, table in zip(anchors, tables):
        parts.append(f"<h2 id=\"{anchor}\">{html.escape(table.title)}</h2>")
        if table.subtitle:
            parts.append(f"<p><em>{html.escape(table.subtitle)}</em></p>")
        if len(table.frame):
            frame = with_display_names(table.frame)
            labels = _row_dims(table)
            parts.append(html_table(frame, labels, best_mask(frame, labels)))
            parts.append("<p class=\"note\">Bold: best value of its column (per dataset or average when methods "
                         "are rows). Click a column heading to sort.</p>")
        parts += [f"<p class=\"note\">{html.escape(n)}</p>" for n in table.notes]
        if table.missing:
            parts.append(f"<p>Missing: {table.missing} cell(s) without any result ('–').</p>")
        parts += [figure_html(f, _caption(f)) for f in _figures_for(table, figures)]
        if len(table.failed):
            parts += [f"<h3>Failed runs ({len(table.failed)}), not averaged</h3>",
                      html_table(table.failed[FAILED_COLUMNS].fillna("").reset_index(drop=True), 2)]
        if len(table.stale):
            parts.append(f"<p class=\"note\">Stale results ({len(table.stale)}), included: their config, weights, "
                         "subset or data changed since they were run (the next sweep re-runs them).</p>")
    for section in sections:
        parts += _section_html(section)
    if comparison is not None and expected is not None:
        parts += [f"<h2>Published numbers: {html.escape(expected.name)}</h2>",
                  f"<p>{html.escape(expected.description)}</p>", "<ul>"]
        parts += [f"<li>{html.escape(line)}</li>" for line in _source_lines(expected)] + ["</ul>"]
        if len(comparison):
            frame = with_display_names(comparison_frame(comparison))
            parts.append(html_table(frame, 5, diff_column="Δ (ours − theirs)"))
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(p for p in parts if p) + "\n"
