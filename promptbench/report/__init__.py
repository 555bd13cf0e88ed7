"""Result files → tables: ``collect`` (long frame), ``aggregate`` (seed statistics, averages, HM), ``render``
(Markdown / LaTeX / HTML), ``plots``, ``expected`` (published numbers) and ``build`` (the ``table`` command)."""

from promptbench.report.aggregate import Table, TableSpec, build_table, build_tables, harmonic_mean, summarize
from promptbench.report.collect import collect, load_results

__all__ = ["Table", "TableSpec", "build_table", "build_tables", "collect", "harmonic_mean", "load_results",
           "summarize"]
