"""``promptbench table --wandb``: one W&B run per table build (tables, comparison with published numbers, figures,
the HTML report)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from promptbench.report.marks import with_display_names
from promptbench.tracking.loggers import _replace_offline_runs, wandb_mode, wandb_settings


def table_run_id(name: str, title: str) -> str:
    """Deterministic id of a table's W&B summary run (rebuilding the table replaces it)."""
    return "pb-table-" + hashlib.sha256(f"{name}\n{title}".encode()).hexdigest()[:16]


def log_table_run(built: Any, cfg: Any, name: str, experiment: str | None = None) -> str:
    """``promptbench table --wandb``: one W&B run (job type ``table``) per table build holding every table (numeric
    summary and display form), the comparison with published numbers, the figures (PNG) and the HTML report.
    Offline unless logged in, saved under ``<table folder>/wandb``. Returns the run id."""
    import wandb

    cfg = cfg if cfg is not None else {}
    title = next((t.title for t in built.tables), name)
    run_id, mode, out_dir = table_run_id(name, title), wandb_mode(cfg), Path(built.out_dir)
    if mode == "offline":
        _replace_offline_runs(out_dir, run_id)
    protocols = [t.protocol for t in built.tables]
    run = wandb.init(project=cfg.get("project", "promptbench"), entity=cfg.get("entity"), id=run_id,
                     name=f"table/{name}", group=experiment or name, job_type="table", dir=str(out_dir), mode=mode,
                     resume="allow", reinit="finish_previous", settings=wandb_settings(bool(cfg.get("verbose"))),
                     tags=list(dict.fromkeys([*protocols, *(map(str, cfg.get("tags") or [])), "table"])),
                     config={"experiment": experiment, "table": name, "title": title})
    payload: dict[str, Any] = {}
    for table in built.tables:
        key = table.protocol if len(built.tables) > 1 else "main"
        summary = table.summary.astype({"shots": int}).fillna({"std": float("nan")})
        payload[f"tables/{key}/summary"] = wandb.Table(dataframe=summary)
        if len(table.frame):
            payload[f"tables/{key}/display"] = wandb.Table(dataframe=with_display_names(table.frame).astype(str))
    if built.comparison is not None and len(built.comparison):
        payload["tables/published"] = wandb.Table(dataframe=built.comparison)
    for path in built.files:
        if Path(path).suffix == ".png":
            payload[f"figures/{Path(path).stem}"] = wandb.Image(str(path))
    report = out_dir / "report.html"
    if report.is_file():
        payload["report"] = wandb.Html(report.read_text(), inject=False)
    run.log(payload)
    run.summary.update({"tables": len(built.tables), "figures": sum(Path(p).suffix == ".png" for p in built.files)})
    wandb.finish()
    return run_id

