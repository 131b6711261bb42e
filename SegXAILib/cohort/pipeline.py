"""`segxai cohort` end to end: run what is missing on Dask, then the table, the statistics and the report.

Outputs in OUT: cases/<case>/<architecture>/ (ordinary result folders), failures/ (one JSON per failed case),
cohort.csv (the table), cohort.json (statistics, failures, run record) and cohort.html. The three summaries are
rewritten from all finished result folders on every run, so they always describe the whole cohort so far.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..progress import CancelToken
from ..request import ExplainRequest
from ..result import provenance
from .cases import CohortCase
from .execute import EventFn, plan, run_tasks
from .report import write_html
from .stats import cohort_statistics
from .table import cohort_table

SCHEMA = "segxai.cohort/1"


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _failures(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "failures").glob("*.json"))] if (out / "failures").exists() else []


def run_cohort(cases: list[CohortCase], architectures: dict[str, list[str]], template: ExplainRequest, out: str | Path,
               scheduler: str | None = None, workers: int | None = None, threshold: float = 0.6, n_resamples: int = 2000,
               on_event: EventFn = lambda e: None, cancel: CancelToken | None = None, truth_reference: bool = False) -> dict:
    """`truth_reference`: Shapley values of the Dice against each case's ground truth (performance) rather than
    against the model's own prediction; a model that misses a region entirely then still has a defined game."""
    out = Path(out)
    if template.method != "contrast-shapley":
        raise InputError(f"segxai cohort runs contrast Shapley; --method {template.method} has no cohort statistics yet.",
                         "Drop --method, or loop `segxai explain` over the cases for other methods.")
    marker = out / "cohort.json"
    if out.exists() and any(out.iterdir()) and not marker.exists() and not (out / "cases").exists():
        raise InputError(f"{out} exists and is not a SegXAI cohort folder.", "Pass a new --out folder, or the folder of an earlier cohort run to resume it.")
    out.mkdir(parents=True, exist_ok=True)
    record = run_tasks(plan(cases, architectures, out), template, architectures, out, scheduler, workers, on_event, cancel,
                       truth_reference)
    table = cohort_table(cases, list(architectures), out, template.clinician_ranking)
    statistics = cohort_statistics(table, threshold, template.seed, n_resamples)
    failures = _failures(out)
    doc = {"schema": SCHEMA, "title": out.name, "n_cases": int(table["case_id"].nunique()) if not table.empty else 0,
           "architectures": list(architectures), "models": architectures, "dice_threshold": threshold,
           "bootstrap_resamples": n_resamples, "seed": template.seed,
           "reference": "ground truth" if truth_reference else "model prediction", "statistics": statistics, "failures": failures,
           "request": {k: v for k, v in template.to_json().items() if k in ("method", "value", "targets", "baseline", "seed", "model_options")},
           "run": {k: v for k, v in record.items() if k != "outcomes"}, "outcomes": record["outcomes"],
           "provenance": provenance()}
    table.to_csv(out / ".cohort.csv.tmp", index=False)
    os.replace(out / ".cohort.csv.tmp", out / "cohort.csv")
    _replace(marker, json.dumps(doc, indent=2, default=str))
    write_html(out / "cohort.html", table, doc)
    on_event({"event": "cohort-done", "out": str(out), **{k: record[k] for k in ("total", "done", "failed", "computed", "skipped")}})
    return doc
