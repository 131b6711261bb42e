"""run(request) → result folder: the one entry point every front end calls.

Order matters for the user: the destination is checked first (so a long run never ends in "folder exists"),
then inputs and models are loaded and checked, and only then the method runs. Nothing is written until the
whole result is ready, and then atomically — except, when asked, anytime results in OUT/partial/, which the final
result replaces (and a failed or cancelled run removes).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from .agreement import clinician_ranking
from .errors import InputError
from .evaluator import pick_device
from .methods import causal, contrast_shapley, gradients, region_shap, tracin
from .methods.base import ExplainInputs, MethodResult
from .models import LoadedModel, load_models
from .partial import PartialWriter
from .progress import CancelToken, ProgressFn, check_cancel, emit, no_progress
from .request import ExplainRequest
from .result import check_destination, provenance, write_result, write_results
from .volumes import box_mask, load_case, load_mask

METHODS = {contrast_shapley.NAME: contrast_shapley.explain, region_shap.NAME: region_shap.explain,
           causal.NAME: causal.explain, gradients.NAME: gradients.explain,
           tracin.NAME: tracin.explain}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_inputs(request: ExplainRequest, models: list[LoadedModel] | None = None) -> ExplainInputs:
    """Images, models, ROI and reference, checked against each other.

    `models`: already loaded from `request.models` (a cohort worker keeps them across cases); loaded here when None.
    """
    if request.method not in METHODS:
        raise InputError(f"Unknown method {request.method!r}.", f"Choose --method {' or '.join(METHODS)}.")
    if not request.targets:
        raise InputError("No target given.", "Pass --target-label (a label, a label set such as 1,3, or WT / TC / ET).")
    for target in request.targets if request.clinician_ranking else ():
        clinician_ranking(target, request.clinician_ranking)  # a malformed file is reported now, not after the run
    models = load_models(request.models, request.model_options) if models is None else models
    if not models:
        raise InputError("No model given.", "Pass --model (a TorchScript file, MONAI bundle or nnU-Net results folder).")
    names = request.model_options.channels or models[0].channel_names
    if names and len(names) != len(request.images) and len(request.images) > 1:
        raise InputError(f"The model takes {len(names)} input channels ({', '.join(names)}), but {len(request.images)} images were given.",
                         "Pass one --image per model input channel, in that order.")
    case = load_case(request.images, resample=request.resample)
    case.channel_names = list(names) if names and len(names) == case.n_channels else \
        [Path(s).name.split(".")[0] for s in case.sources] if len(set(case.sources)) == case.n_channels else case.channel_names
    if request.roi_mask:
        roi = load_mask(request.roi_mask, case.geometry, "ROI mask", request.resample) != 0
        if not roi.any():
            raise InputError(f"The ROI mask {request.roi_mask} has no nonzero voxel.", "Draw the ROI (nonzero voxels = inside) and save it again.")
    elif request.roi_box:
        roi = box_mask(case.geometry, request.roi_box[:3], request.roi_box[3:])
    else:
        raise InputError("No ROI given.", "Pass --roi-mask PATH (nonzero voxels = ROI) or --roi-box R1 A1 S1 R2 A2 S2 (mm).")
    reference = load_mask(request.reference, case.geometry, "reference", request.resample) if request.reference else None
    truth = load_mask(request.ground_truth, case.geometry, "ground truth", request.resample) if request.ground_truth else None
    labels = load_mask(request.region.labels, case.geometry, "label map", request.resample) if request.region.labels else None
    return ExplainInputs(request, case, roi, reference, truth, labels, models, pick_device(request.device))


def run(request: ExplainRequest, progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
        partial: bool = False, models: list[LoadedModel] | None = None) -> Path:
    """Runs the request and writes its result folder; returns its path.

    partial: write anytime results into OUT/partial/ while a long estimate runs, each announced through
    `progress.event("partial", ...)` (see SegXAILib/partial.py); the final folder is the same either way.
    models: already loaded models (a cohort worker's cache); see load_inputs.
    """
    started = time.perf_counter()
    check_destination(request.out, request.overwrite)
    seed_everything(request.seed)
    inputs = load_inputs(request, models)
    loaded = time.perf_counter()
    base = dict(seed=request.seed, budget=request.budget, device=str(inputs.device), torch_threads=torch.get_num_threads(),
                models=[{"name": m.name, "format": m.format, "source": m.source, "sha256": m.sha256, "window": m.window.to_json(),
                         "preprocessing": m.preprocessing} for m in inputs.models],
                images=list(request.images), geometry=inputs.case.geometry.to_json(), channel_names=inputs.case.channel_names)

    def compose(r: MethodResult) -> tuple[dict, dict, dict]:
        """result.json fields, maps and files of a result as of now (timings included), final or partial."""
        now = time.perf_counter()
        prov = provenance(**base, timings={"load_s": round(loaded - started, 3), "explain_s": round(now - loaded, 3),
                                           "total_s": round(now - started, 3)})
        return {**r.result, "request": request.to_json(), "provenance": {**prov, "evaluator": r.stats}}, r.maps, r.files

    writer = PartialWriter(request.out, compose, lambda event, **fields: emit(progress, event, **fields)) if partial else None
    inputs.on_partial = writer
    try:
        results: list[MethodResult] = METHODS[request.method](inputs, progress, cancel)
        check_cancel(cancel)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    docs = {r.target: compose(r) for r in results}
    if len(docs) == 1:
        (result, maps, files), = docs.values()
        return write_result(request.out, result, maps, request.overwrite, files)
    return write_results(request.out, docs, request.overwrite)
