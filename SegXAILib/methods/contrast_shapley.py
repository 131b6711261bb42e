"""Exact contrast-level Shapley values per model (fold), with rank uncertainty and clinician agreement.

Players are the input channels. For each model every one of the 2^C coalitions is evaluated once, on the
ROI-restricted evaluator, and the one set of fused outputs serves every target and the value function on
it; so T targets cost no more network time than one. Shapley values are exact (estimators.exact_shapley),
and efficiency (Σφ = v_full − v_empty) holds to rounding; the largest gap is reported.
"""

from __future__ import annotations

import numpy as np
import torch

from ..agreement import agreement, clinician_ranking, rank_uncertainty
from ..errors import InputError
from ..estimators import all_coalitions, exact_shapley
from ..evaluator import Evaluator
from ..progress import CancelToken, ProgressFn, no_progress
from ..targets import Target, parse_target
from ..values import dice, value_function
from .base import ExplainInputs, MethodResult, baseline_values, check_finite, model_case

NAME = "contrast-shapley"
# Value functions whose game means nothing when the reference holds no target voxel inside the ROI.
NEEDS_REFERENCE = ("dice", "soft-dice", "tp", "tp-rate")


def _references(targets: list[Target], full: torch.Tensor, ref_labels: np.ndarray | None, value: str, model: str) -> list[torch.Tensor]:
    refs = []
    for t in targets:
        ref = t.hard(full) if ref_labels is None else torch.from_numpy(t.in_reference(ref_labels))
        if value in NEEDS_REFERENCE and not bool(ref.any()):
            source = "the model's own prediction" if ref_labels is None else "the reference segmentation"
            raise InputError(f"For target {t.name}, {source} ({model}) has no voxel inside the ROI, so '{value}' has nothing to measure.",
                             "Move the ROI onto the target, choose another target, or use --value fp or mean-prob.")
        refs.append(ref)
    return refs


def explain(inputs: ExplainInputs, progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> list[MethodResult]:
    request, case = inputs.request, inputs.case
    n = case.n_channels
    coalitions = all_coalitions(n)
    vf = value_function(request.value)
    per_model, stats, predictions, gt_dice, targets = [], [], None, [], None
    for m, model in enumerate(inputs.models):
        mc = model_case(model, inputs)
        stage = f"{model.name} [{m + 1}/{len(inputs.models)}]"
        evaluator = Evaluator(model, mc.prepared.image, mc.roi, np.arange(n).reshape(n, 1, 1, 1), n,
                              baseline_values(mc.prepared.image, request.baseline), inputs.device,
                              batch_size=request.batch_size, progress=progress, cancel=cancel)
        full = evaluator.full_logits()
        check_finite(full, model.name)
        targets = [parse_target(t, model.labels, model.activation, full.shape[0], model.regions) for t in request.targets]
        ref_labels = mc.reference[mc.roi] if mc.reference is not None else None
        refs = _references(targets, full, ref_labels, request.value, model.name)
        values = evaluator.evaluate(coalitions, lambda z: [vf(z, t, r) for t, r in zip(targets, refs)], stage=stage)
        per_model.append(values)
        stats.append({"model": model.name, **evaluator.stats.to_json()})
        hard = [t.hard(full).numpy().astype(np.float32) for t in targets]
        grids = [mc.to_case_grid(h, case.geometry) for h in hard]
        predictions = grids if predictions is None else [p + g for p, g in zip(predictions, grids)]
        if mc.ground_truth is not None:
            gt = mc.ground_truth[mc.roi]
            gt_dice.append([dice(full, t, torch.from_numpy(t.in_reference(gt))) for t in targets])
    values = np.stack(per_model)                          # (M, 2^C, T)
    return [_target_result(inputs, targets[k], values[:, :, k], coalitions, stats,
                           predictions[k] / len(inputs.models), [d[k] for d in gt_dice] if gt_dice else None)
            for k in range(len(targets))]


def _target_result(inputs: ExplainInputs, target: Target, values: np.ndarray, coalitions: np.ndarray, stats: list[dict],
                   prediction: np.ndarray, gt_dice: list[float] | None) -> MethodResult:
    request, case, models = inputs.request, inputs.case, inputs.models
    n = case.n_channels
    names = case.channel_names
    phi = np.stack([exact_shapley(v, n) for v in values])  # (M, C)
    mean = phi.mean(axis=0)
    spread = phi.std(axis=0, ddof=1) if len(models) > 1 else np.zeros(n)
    unc = rank_uncertainty(phi)
    v_empty, v_full = values[:, 0], values[:, -1]
    gap = float(np.max(np.abs(phi.sum(axis=1) - (v_full - v_empty))))
    players = [{"id": c, "name": names[c], "value": float(mean[c]), "per_model": phi[:, c].tolist(), "std": float(spread[c]),
                "mean_rank": unc["mean_rank"][c], "rank_variance": unc["rank_variance"][c]} for c in range(n)]
    per_model = [{"model": model.name, "format": model.format, "values": phi[i].tolist(), "ranks": unc["ranks"][i],
                  "v_empty": float(v_empty[i]), "v_full": float(v_full[i]),
                  "dice_vs_ground_truth": None if gt_dice is None else float(gt_dice[i]),
                  "coalition_values": [{"present": [names[c] for c in np.flatnonzero(s)], "value": float(values[i, j])}
                                       for j, s in enumerate(coalitions)]}
                 for i, model in enumerate(models)]
    result = {
        "method": NAME, "value_function": request.value, "target_label": target.name, "target": target.to_json(),
        "players": players, "ranking": [names[c] for c in np.argsort(-mean, kind="stable")],
        "v_empty": float(v_empty.mean()), "v_full": float(v_full.mean()), "efficiency_gap": gap,
        "per_model": per_model,
        "agreement": agreement(mean, phi, names, clinician_ranking(target.name, request.clinician_ranking),
                               explicit=request.clinician_ranking is not None),
        "uncertainty": {k: unc[k] for k in ("rank_variance_mean", "normalised", "kendalls_w", "n_models")},
        "baseline": request.baseline,
        "reference_source": "file" if inputs.reference is not None else "model prediction",
        "roi_voxels": int(inputs.roi.sum()),
    }
    maps = {"roi": (inputs.roi.astype(np.uint8), case.geometry), "prediction": (prediction.astype(np.float32), case.geometry)}
    return MethodResult(target.name, result, maps, stats)
