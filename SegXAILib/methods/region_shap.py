"""Region SHAP: Shapley values of anatomical regions (supervoxels, lattice cells, organs, organ-aware supervoxels,
user labels) for the segmentation inside the ROI.

Players live in the support crop (the windows that overlap the ROI), built on the first model's grid; a removed
player's voxels take the baseline in every channel. The game runs on the ROI-restricted evaluator, whose
patch-logit cache re-runs only the windows a coalition changes. Estimation is exact when 2^P fits the budget,
else replicates of a shapiq approximator (estimators.estimate_shapley), whose spread gives each player a calibrated
standard error (None where the estimator cannot give one); after each replicate the map so far goes to
`inputs.on_partial` (anytime results). Outputs: the per-voxel attribution (each
voxel carries its player's value), the player map, a top-k table and the global binary mask (the fewest players
that hold `mask_share` of the positive attribution).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..estimators import estimate_shapley
from ..evaluator import Evaluator
from ..players import build_players, support_box
from ..progress import CancelToken, ProgressFn, no_progress
from ..targets import parse_target
from ..values import value_function
from ..volumes import resample_to
from ..window_games import ESTIMATORS as CACHE_ESTIMATORS
from ..window_games import estimate_on_evaluator
from ..windows import make_grid
from .base import ExplainInputs, MethodResult, baseline_values, check_finite, model_case
from .contrast_shapley import _references

NAME = "region-shap"
DEFAULT_BUDGET = 512   # model evaluations per model when 2^P is too many to enumerate
EXACT_UP_TO = 12       # players enumerated exactly (4096 coalitions) when no budget is given


def global_mask_players(values: np.ndarray, share: float) -> list[int]:
    """The fewest players, largest first, whose positive values add up to `share` of all positive attribution."""
    order = [int(i) for i in np.argsort(-values, kind="stable") if values[i] > 0]
    total = float(values[values > 0].sum())
    chosen, acc = [], 0.0
    for i in order:
        if acc >= share * total:
            break
        chosen.append(i)
        acc += float(values[i])
    return chosen


def region_players(inputs: ExplainInputs):
    """The first model's view of the case and the region players inside its support (shared with causal ATE)."""
    options = inputs.request.region
    first = model_case(inputs.models[0], inputs)
    box = support_box(make_grid(inputs.models[0].window, first.prepared.image.shape[1:]), first.roi)
    players = build_players(options.features, first.prepared.image, first.prepared.geometry.spacing, box,
                            n_players=options.n_players, cell_mm=options.cell_mm, labels=first.labels, label_names=options.label_names)
    return first, players


def map_players(ids: np.ndarray, source, dest) -> np.ndarray:
    """Player ids from the first model's grid onto another model's grid (nearest neighbour)."""
    if not source.prepared.geometry.differences(dest.prepared.geometry):
        return ids
    return resample_to(ids + 1, source.prepared.geometry, dest.prepared.geometry, order=0).astype(np.int32) - 1


def region_maps(inputs: ExplainInputs, first, players, values: np.ndarray, chosen: list[int]) -> dict:
    """attribution (each voxel carries its player's value), players (id + 1), mask (chosen players), roi — on the case grid."""
    case = inputs.case
    ids = players.ids
    attribution = np.where(ids >= 0, values[np.maximum(ids, 0)], 0.0).astype(np.float32)
    mask = np.isin(ids, chosen).astype(np.uint8)
    return {"attribution": (first.to_case_volume(attribution, case.geometry, order=0), case.geometry),
            "players": (first.to_case_volume((ids + 1).astype(np.int32), case.geometry, order=0).astype(np.int32), case.geometry),
            "mask": (first.to_case_volume(mask, case.geometry, order=0).astype(np.uint8), case.geometry),
            "roi": (inputs.roi.astype(np.uint8), case.geometry)}


def explain(inputs: ExplainInputs, progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> list[MethodResult]:
    request = inputs.request
    options = request.region
    if len(request.targets) != 1:
        raise InputError("Region SHAP explains one target per run.", "Give one --target-label (run again for another).")
    vf = value_function(request.value)
    first, players = region_players(inputs)
    if request.budget is not None and request.budget < players.n + 2:
        raise InputError(f"A budget of {request.budget} model evaluations is below the {players.n} players (+2) it needs.",
                         f"Raise --budget to at least {players.n + 2}, or use fewer players (--n-players / --cell-mm).")
    budget = request.budget or (None if players.n <= EXACT_UP_TO else DEFAULT_BUDGET)
    per_model, stats = [], []
    for m, model in enumerate(inputs.models):
        mc = first if m == 0 else model_case(model, inputs)
        ids = players.ids if m == 0 else map_players(players.ids, first, mc)
        evaluator = Evaluator(model, mc.prepared.image, mc.roi, ids[None], players.n,
                              baseline_values(mc.prepared.image, request.baseline), inputs.device,
                              batch_size=request.batch_size, progress=progress, cancel=cancel)
        full = evaluator.full_logits()
        check_finite(full, model.name)
        target = parse_target(request.targets[0], model.labels, model.activation, full.shape[0], model.regions)
        ref_labels = mc.reference[mc.roi] if mc.reference is not None else None
        ref, = _references([target], full, ref_labels, request.value, model.name)
        stage = f"{model.name} [{m + 1}/{len(inputs.models)}]"
        model_stats = lambda: {"model": model.name, **evaluator.stats.to_json()}
        report = None if inputs.on_partial is None else \
            lambda e: inputs.on_partial(_result(inputs, target, players, first, per_model + [e], stats + [model_stats()], budget),
                                        sum(x["evaluations"] for x in per_model + [e]), None if budget is None else budget * len(inputs.models))
        if options.estimator in CACHE_ESTIMATORS:   # estimators that fit the window cache (window_games.py)
            estimate = estimate_on_evaluator(options.estimator, evaluator, request.value, vf, target, ref, budget, request.seed, stage,
                                             options.tolerance, report)
        else:
            estimate = estimate_shapley(lambda c: evaluator.evaluate(c, lambda z: [vf(z, target, ref)], stage=stage)[:, 0],
                                        players.n, budget, options.estimator, request.seed, options.tolerance, report)
        per_model.append(estimate)
        stats.append(model_stats())
    return [_result(inputs, target, players, first, per_model, stats, budget)]


def _result(inputs: ExplainInputs, target, players, first, per_model: list[dict], stats: list[dict], budget: int | None) -> MethodResult:
    request, options = inputs.request, inputs.request.region
    values = np.stack([e["values"] for e in per_model])
    mean = values.mean(0)
    errors = [e["std_error"] for e in per_model]
    std_error = None if any(e is None for e in errors) else np.sqrt(np.mean(np.square(errors), axis=0) / len(per_model))
    spread = values.std(0, ddof=1) if len(per_model) > 1 else np.zeros(players.n)
    voxel_ml = float(np.prod(first.prepared.geometry.spacing)) / 1000.0
    volumes = players.volumes()
    entries = [{"id": i, "name": players.names[i], "value": float(mean[i]), "per_model": values[:, i].tolist(),
                "std": float(spread[i]), "std_error": None if std_error is None else float(std_error[i]), "volume_ml": float(volumes[i] * voxel_ml),
                "organ_label": players.organ[i]} for i in range(players.n)]
    chosen = global_mask_players(mean, options.mask_share)
    v_empty = np.array([e["v_empty"] for e in per_model])
    v_full = np.array([e["v_full"] for e in per_model])
    gap = float(np.max(np.abs(values.sum(1) - (v_full - v_empty))))
    order = np.argsort(-np.abs(mean), kind="stable")
    result = {
        "method": NAME, "value_function": request.value, "target_label": target.name, "target": target.to_json(),
        "players": entries, "ranking": [players.names[i] for i in np.argsort(-mean, kind="stable")],
        "top_k": [entries[i] for i in order[:options.top_k]],
        "v_empty": float(v_empty.mean()), "v_full": float(v_full.mean()), "efficiency_gap": gap,
        "features": {"kind": players.kind, "n_players": players.n, "n_players_requested": options.n_players,
                     "cell_mm": options.cell_mm, "support_box": [[s.start, s.stop] for s in support_box_of(players)]},
        "estimation": {"estimator": per_model[0]["estimator"], "settings": per_model[0]["settings"], "exact": per_model[0]["exact"],
                       "budget": budget, "tolerance": options.tolerance, "evaluations": [e["evaluations"] for e in per_model],
                       "replicates": [e["replicates"] for e in per_model], "stopped": [e["stopped"] for e in per_model],
                       "std_error": "0 when exact; else sd/sqrt(R) over R independent replicates of the estimator, whose mean is "
                                    "the value (over models: combined as for their mean); null when not calibrated"},
        "global_mask": {"share": options.mask_share, "players": [players.names[i] for i in chosen],
                        "ids": chosen, "volume_ml": float(volumes[chosen].sum() * voxel_ml) if chosen else 0.0},
        "per_model": [{"model": m.name, "values": values[i].tolist(), "v_empty": float(v_empty[i]), "v_full": float(v_full[i])}
                      for i, m in enumerate(inputs.models[:len(per_model)])],
        "baseline": request.baseline, "roi_voxels": int(inputs.roi.sum()),
        "reference_source": "file" if inputs.reference is not None else "model prediction",
    }
    return MethodResult(target.name, result, region_maps(inputs, first, players, mean, chosen), stats)


def support_box_of(players) -> tuple[slice, ...]:
    where = np.argwhere(players.ids >= 0)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0)))
