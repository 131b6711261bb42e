"""What runs on a Dask worker: one case through `run()`, with the models loaded once per worker.

`ModelCache` is a Dask WorkerPlugin: Dask installs it on every worker of the cluster, including workers that
join or are restarted later, and the models it loads stay in that worker process for every case it is given.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path

import numpy as np
from distributed import WorkerPlugin, get_worker

from ..errors import InputError
from ..request import ExplainRequest
from ..volumes import read_volume
from .cases import CohortCase

PLUGIN = "segxai-model-cache"


class ModelCache(WorkerPlugin):
    """Loaded models per (model paths, options), kept for the worker's lifetime; `threads` torch threads per worker."""

    name = PLUGIN
    idempotent = True   # registering again (a resumed cohort on the same cluster) keeps the models a worker holds

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def setup(self, worker) -> None:
        self.models: dict = {}
        self.loads = 0
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def get(self, request: ExplainRequest) -> tuple[list, bool]:
        """The request's models and whether they were loaded just now."""
        from ..models import load_models

        key = (tuple(request.models), repr(request.model_options))
        fresh = key not in self.models
        if fresh:
            self.models[key] = load_models(request.models, request.model_options)
            self.loads += 1
        return self.models[key], fresh


def box_around(truth_path: str, margin: int = 4) -> list[float]:
    """The ROI a reader would draw: the ground truth's bounding box plus `margin` voxels, as R1 A1 S1 R2 A2 S2 (mm)."""
    labels, geometry = read_volume(truth_path)
    idx = np.argwhere(labels > 0)
    if not len(idx):
        raise InputError(f"The ground truth {truth_path} is empty, so there is no box to draw around it.",
                         "Give this case a roi_mask, or a ground truth with the lesion in it.")
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin, np.asarray(labels.shape) - 1)
    ras = [geometry.affine[:3, :3] @ c + geometry.affine[:3, 3] for c in (lo, hi)]
    return [float(v) for v in np.concatenate(ras)]


def explain_case(case: CohortCase, architecture: str, template: ExplainRequest, out: str, truth_reference: bool = False) -> dict:
    """Runs one case (`truth_reference`: the game's reference is the case's ground truth); never raises for a case's own failure (bad file, NaN output, out of memory, a bug): it is reported,
    and the cohort goes on. A worker that dies instead is Dask's business: it reruns the task elsewhere."""
    from ..run import run

    started = time.perf_counter()
    worker = get_worker()
    info = {"case_id": case.case_id, "architecture": architecture, "out": out, "worker": worker.address, "pid": os.getpid()}
    if result_exists(out):   # finished meanwhile, e.g. by a task of an interrupted earlier run that still ran to its end
        return {**info, "status": "done", "models_loaded": False, "seconds": 0.0, "note": "already written"}
    try:
        roi = {"roi_mask": case.roi_mask, "roi_box": None} if case.roi_mask else {"roi_mask": None, "roi_box": box_around(case.ground_truth)}
        if truth_reference and not case.ground_truth:
            raise InputError(f"Case {case.case_id} has no ground truth to use as the reference.", "Fill its ground_truth column, or drop --reference ground-truth.")
        request = dataclasses.replace(template, images=list(case.images), ground_truth=case.ground_truth, out=out,
                                      reference=case.ground_truth if truth_reference else template.reference, **roi)
        models, fresh = worker.plugins[PLUGIN].get(request)
        run(request, models=models)
        return {**info, "status": "done", "models_loaded": fresh, "seconds": round(time.perf_counter() - started, 3)}
    except Exception as exc:  # noqa: BLE001 - one case's failure must not stop the cohort
        if result_exists(out):   # another run of this task won the race to the (atomic) result folder
            return {**info, "status": "done", "models_loaded": False, "seconds": 0.0, "note": "already written"}
        problem = getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}"
        return {**info, "status": "failed", "error": problem, "kind": type(exc).__name__, "fix": getattr(exc, "fix", ""),
                "traceback": traceback.format_exc(limit=6), "seconds": round(time.perf_counter() - started, 3)}


def result_exists(out: str | Path) -> bool:
    out = Path(out)
    return (out / "result.json").exists() or (out / "index.json").exists()
