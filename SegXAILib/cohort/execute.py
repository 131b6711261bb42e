"""Runs a cohort on Dask distributed: an embedded LocalCluster, or an existing cluster given by its address.

Dask does the scheduling, the retries of tasks whose worker died and the load balancing; this module only decides
what is left to do (a case whose result folder exists is finished: folders are written atomically, so a folder is
either complete or absent), submits it, and records each outcome as it arrives. A case that failed is written to
OUT/failures/<case>__<architecture>.json and is retried on the next run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, InputError
from ..progress import CancelToken
from ..request import ExplainRequest
from .cases import CohortCase
from .worker import ModelCache, explain_case, result_exists

EventFn = Callable[[dict], None]


@dataclasses.dataclass
class Task:
    case: CohortCase
    architecture: str
    out: Path

    @property
    def name(self) -> str:
        return f"{self.case.case_id}__{self.architecture}"


def case_folder(out: Path, case_id: str, architecture: str) -> Path:
    return out / "cases" / case_id / architecture


def plan(cases: list[CohortCase], architectures: dict[str, list[str]], out: Path) -> list[Task]:
    return [Task(c, a, case_folder(out, c.case_id, a)) for c in cases for a in architectures]


def _client(scheduler: str | None, workers: int | None):
    """A Dask client on the given scheduler, or on a fresh LocalCluster of `workers` processes (listening on 127.0.0.1)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"Cannot reach the Dask scheduler at {scheduler}: {exc}",
                             "Start it (dask scheduler; dask worker ADDRESS) or drop --scheduler to use an embedded cluster.") from exc
    n = workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0",
                           silence_logs=40)
    return Client(cluster), cluster


def _failure_path(out: Path, task: Task) -> Path:
    return out / "failures" / f"{task.name}.json"


def run_tasks(tasks: list[Task], template: ExplainRequest, architectures: dict[str, list[str]], out: Path,
              scheduler: str | None = None, workers: int | None = None, on_event: EventFn = lambda e: None,
              cancel: CancelToken | None = None, truth_reference: bool = False) -> dict:
    """Computes the tasks whose result folder is missing; returns counts, outcomes and timings of this run."""
    from distributed import as_completed

    started = time.monotonic()
    todo = [t for t in tasks if not result_exists(t.out)]
    skipped = len(tasks) - len(todo)
    outcomes: list[dict] = []
    counts = {"total": len(tasks), "skipped": skipped, "done": skipped, "failed": 0, "computed": 0}

    def emit(kind: str) -> None:
        finished = counts["computed"] + counts["failed"]
        remaining = len(todo) - finished
        elapsed = time.monotonic() - started
        eta = elapsed / finished * remaining if finished else None
        on_event({"event": kind, **counts, "remaining": remaining, "elapsed_s": round(elapsed, 2),
                  "eta_s": None if eta is None else round(eta, 1)})

    emit("cohort-started")
    if not todo:
        return {**counts, "outcomes": outcomes, "wall_s": 0.0, "workers": 0}
    cores = os.cpu_count() or 1
    n = min(workers or cores, len(todo)) if not scheduler else None
    threads = max(1, cores // n) if n else None
    client, cluster = _client(scheduler, n)
    try:
        client.register_plugin(ModelCache(threads))
        n_workers = len(client.scheduler_info()["workers"])
        (out / "failures").mkdir(parents=True, exist_ok=True)
        futures = {}
        for t in todo:
            request = dataclasses.replace(template, models=list(architectures[t.architecture]))
            future = client.submit(explain_case, t.case, t.architecture, request, str(t.out), truth_reference, pure=False,
                                   key=f"segxai-{t.name}-{time.time_ns()}")
            futures[future] = t
        arriving = as_completed(list(futures))
        while not arriving.is_empty():
            if cancel is not None and cancel.is_set():
                client.cancel([f for f in futures if not f.done()])
                raise Cancelled()
            if not arriving.has_ready():
                time.sleep(0.2)
                continue
            for future in arriving.next_batch(block=False):
                task = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the task killed every worker it ran on
                    outcome = {"case_id": task.case.case_id, "architecture": task.architecture, "status": "failed",
                               "kind": type(exc).__name__, "error": f"{type(exc).__name__}: {exc} (the worker died: out of memory?)", "fix": ""}
                outcomes.append(outcome)
                failure = _failure_path(out, task)
                if outcome["status"] == "done":
                    counts["computed"] += 1
                    counts["done"] += 1
                    failure.unlink(missing_ok=True)
                else:
                    counts["failed"] += 1
                    failure.write_text(json.dumps(outcome, indent=2, default=str))
                emit("cohort-progress")
        return {**counts, "outcomes": outcomes, "wall_s": round(time.monotonic() - started, 3), "workers": n_workers,
                "scheduler": scheduler or "embedded LocalCluster", "torch_threads_per_worker": threads}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

