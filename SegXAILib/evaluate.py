"""`segxai evaluate RESULT_DIR`: how far to trust a result, written to RESULT_DIR/evaluation.json with figures beside it.

The case and the models are re-loaded from the result's own `request`, so the evaluation measures the very model
and case that were explained; result.json is never touched (evaluation.json is replaced atomically when evaluated
again). Units follow the method: region players (players map), input channels (contrast Shapley), or voxels ranked
by the attribution map (gradient methods). Several models (folds) are each evaluated against the mean map, and the
figures and top-level numbers are their means.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import faithfulness as fm
from .errors import InputError
from .methods.base import baseline_values, model_case
from .methods.gradients import value_game
from .players import support_box
from .progress import CancelToken, ProgressFn, no_progress
from .request import ExplainRequest
from .result import INDEX_FILE, RESULT_FILE, _json_default, read_result
from .volumes import read_volume, resample_to
from .windows import make_grid

EVALUATION_FILE = "evaluation.json"
FIGURES = {"curves": "evaluation_curves.png", "correlation": "evaluation_correlation.png", "sanity": "evaluation_sanity.png"}
ROAD_NOISE = 0.01          # × the channel's standard deviation, as ROAD's 0.01 on standardised images
CORRELATION_GROUPS = 32    # voxel maps: random voxel groups the correlation subsets are drawn from


def request_from_json(doc: dict) -> ExplainRequest:
    """The request a result was made with: nested options rebuilt, label-name keys back to ints, unknown keys dropped."""
    def build(cls, values: dict):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key in fields:
                factory = fields[key].default_factory
                kwargs[key] = build(factory, value) if isinstance(value, dict) and dataclasses.is_dataclass(factory) else value
        return cls(**kwargs)

    request = build(ExplainRequest, doc)
    if request.region.label_names:
        request.region.label_names = {int(k): v for k, v in request.region.label_names.items()}
    return request


def unit_kind(doc: dict) -> str:
    maps = doc.get("maps", {})
    if doc["method"] == "contrast-shapley":
        return "channels"
    if "players" in maps:
        return "players"
    if "attribution" in maps:
        return "voxels"
    raise InputError(f"This {doc['method']} result has neither a players map nor an attribution map to evaluate.", "Evaluate a result folder written by segxai explain.")


def _on_model_grid(volume: np.ndarray, case_geometry, mc) -> np.ndarray:
    if not case_geometry.differences(mc.prepared.geometry):
        return volume
    return resample_to(volume, case_geometry, mc.prepared.geometry, order=0)


def _player_values(doc: dict) -> np.ndarray:
    """Player relevance, most relevant highest: `value` × the result's `relevance_sign` (causal ATE is −1: a region
    whose replacement lowers the value supports the target)."""
    values = np.zeros(len(doc["players"]))
    for p in doc["players"]:
        values[p["id"]] = p["value"]
    return values * doc.get("relevance_sign", 1)


def evaluate(result_dir: str | Path, steps: int = 20, seed: int = 0, value: str | None = None, samples: int = 32,
             sanity_steps: int = 4, road_steps: int = 6, progress: ProgressFn = no_progress,
             cancel: CancelToken | None = None) -> list[Path]:
    """Evaluates a result folder (each target of a multi-target one); returns the evaluation.json files written."""
    folder = Path(result_dir)
    if not (folder / RESULT_FILE).exists() and (folder / INDEX_FILE).exists():
        names = json.loads((folder / INDEX_FILE).read_text())["results"]
        return [p for name in names for p in evaluate(folder / name, steps, seed, value, samples, sanity_steps, road_steps, progress, cancel)]
    started = time.perf_counter()
    doc = read_result(folder)
    if "request" not in doc:
        raise InputError(f"{folder / RESULT_FILE} does not record the request it was made with.", "Re-run segxai explain to get a complete result.")
    from .run import load_inputs  # run imports the methods; importing it here keeps `segxai evaluate --help` light

    inputs = load_inputs(request_from_json(doc["request"]))
    kind = unit_kind(doc)
    value = value or doc["value_function"]
    maps = {key: read_volume(folder / name)[0] for key, name in doc["maps"].items() if key in ("attribution", "players")}
    blocks, first = [], None
    for m, model in enumerate(inputs.models):
        mc = model_case(model, inputs)
        box = support_box(make_grid(model.window, mc.roi.shape), mc.roi)
        stage = f"evaluation, {model.name} [{m + 1}/{len(inputs.models)}]"
        blocks.append(_evaluate_model(doc, inputs, model, mc, box, kind, maps, value, steps, min(steps, road_steps), samples, seed,
                                      stage, progress, cancel))
        first = first or (mc, box)
    evaluation = {"schema": "segxai.evaluation/1", "result": RESULT_FILE, "method": doc["method"], "target_label": doc["target_label"],
                  "value_function": value, "units": kind, "steps": steps, "seed": seed, **_mean(blocks), "per_model": blocks}
    del evaluation["model"], evaluation["evaluator"]
    if sanity_steps > 0:
        t0 = time.perf_counter()
        evaluation["sanity"] = _sanity(doc, inputs, kind, maps, first, sanity_steps, seed, cancel)
        evaluation["timings"]["sanity_s"] = round(time.perf_counter() - t0, 3)
    evaluation["figures"] = _figures(evaluation, folder)
    evaluation["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    tmp = folder / f".{EVALUATION_FILE}.tmp"
    tmp.write_text(json.dumps(evaluation, indent=2, default=_json_default))
    os.replace(tmp, folder / EVALUATION_FILE)
    return [folder / EVALUATION_FILE]


def _evaluate_model(doc, inputs, model, mc, box, kind, maps, value, steps, road_steps, samples, seed, stage, progress, cancel) -> dict:
    """Every metric but the sanity check, for one model; each metric draws from its own seeded stream, so its
    numbers do not depend on which others ran, and every model gets the same subsets and tie-breaks."""
    rank_rng, road_rng, corr_rng = (np.random.default_rng([seed, i]) for i in range(3))
    attribution = _on_model_grid(maps["attribution"], inputs.case.geometry, mc) if "attribution" in maps else None
    if kind == "channels":
        units = fm.ranked_units(np.arange(len(doc["players"])).reshape(-1, 1, 1, 1), _player_values(doc), "channels")
    elif kind == "players":
        ids = _on_model_grid(maps["players"], inputs.case.geometry, mc).astype(np.int64)[None] - 1
        units = fm.ranked_units(ids, _player_values(doc), "players")
    else:
        units = fm.voxel_units(attribution, box, steps, rank_rng)
    evaluator, _, vf = value_game(inputs, model, mc, units.ids, units.n, value, doc["target_label"], progress, cancel)
    game = lambda c: evaluator.evaluate(c, lambda z: [vf(z)], stage=stage)[:, 0]
    t0 = time.perf_counter()
    block = {"model": model.name, "n_units": units.n, **fm.removal_curves(game, units, steps)}
    timings = {"curves_s": time.perf_counter() - t0}
    if kind != "channels" and road_steps > 0:
        t0 = time.perf_counter()
        block["road"] = fm.road_curves(evaluator, vf, mc.prepared.image, baseline_values(mc.prepared.image, inputs.request.baseline),
                                       units, road_steps, ROAD_NOISE, road_rng)
        timings["road_s"] = time.perf_counter() - t0
    if samples > 0:
        t0 = time.perf_counter()
        if kind == "voxels":
            groups = fm.voxel_units(attribution, box, CORRELATION_GROUPS, corr_rng, random_order=True)
            ev_groups, _, vf_groups = value_game(inputs, model, mc, groups.ids, groups.n, value, doc["target_label"], progress, cancel)
            block["correlation"] = fm.faithfulness_correlation(
                lambda c: ev_groups.evaluate(c, lambda z: [vf_groups(z)], stage=stage)[:, 0], groups, samples, 0.25, corr_rng)
        else:
            block["correlation"] = fm.faithfulness_correlation(game, units, samples, 0.25, corr_rng)
        timings["correlation_s"] = time.perf_counter() - t0
    if kind != "voxels":
        block["interactions"] = fm.interaction_share(game, units.n)
    block["evaluator"] = evaluator.stats.to_json()
    block["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return block


def _mean(blocks: list):
    """Element-wise mean of the models' evaluation blocks (numbers and equal-length number lists; anything else: the first)."""
    first = blocks[0]
    if isinstance(first, dict):
        return {key: _mean([b[key] for b in blocks]) for key in first}
    numbers = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if all(numbers(b) for b in blocks):
        return float(np.mean(blocks)) if len(blocks) > 1 else first
    if all(isinstance(b, list) and len(b) == len(first) and all(numbers(v) for v in b) for b in blocks) and len(blocks) > 1:
        return np.mean(blocks, axis=0).tolist()
    return first


def _sanity(doc: dict, inputs, kind: str, maps: dict, first, steps: int, seed: int, cancel) -> dict:
    """Cascading randomisation: the method re-run on randomised copies of the models, compared with the result."""
    from .run import METHODS, seed_everything

    if kind == "voxels":
        mc, box = first
        support = np.zeros(mc.roi.shape, np.uint8)
        support[box] = 1
        inside = mc.to_case_volume(support, inputs.case.geometry, order=0) > 0
        reference = maps["attribution"][inside]
        pick = lambda r: r.maps["attribution"][0][inside]
    else:
        reference = _player_values(doc)
        pick = lambda r: _player_values(r.result)

    def explain(models, replicate: int) -> np.ndarray:
        request = dataclasses.replace(inputs.request, seed=inputs.request.seed + replicate)
        seed_everything(request.seed)
        results = METHODS[doc["method"]](dataclasses.replace(inputs, models=models, request=request), no_progress, cancel)
        return pick(next(r for r in results if r.target == doc["target_label"]))

    image = first[0].prepared.image

    def probe(model) -> None:
        """One forward pass of a window of zeros: enough to see the order the layers run in."""
        size = model.window.size or image.shape[1:]
        model.forward(torch.zeros((1, image.shape[0], *size), device=inputs.device))

    return fm.cascading_randomisation(inputs.models, explain, reference, steps, seed, probe)


def _figures(evaluation: dict, folder: Path) -> dict:
    """Removal curves (and ROAD), the faithfulness-correlation scatter and the sanity curve, as PNGs beside the result."""
    from .plots import _pyplot

    plt = _pyplot()
    written = {}
    panels = [("deletion", "removed"), ("insertion", "inserted")] + ([("road", "removed (imputed)")] if "road" in evaluation else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), dpi=120, squeeze=False)
    for ax, (name, what) in zip(axes[0], panels):
        for order, style in (("morf", "-"), ("lerf", "--")):
            curve = evaluation["road"][order] if name == "road" else evaluation[f"{name}_{order}"]
            if curve["normalised"] is not None:
                ax.plot(curve["fraction"], curve["normalised"], style, label=f"{order.upper()}  AUC {curve['auc']:.3f}")
        ax.set_xlabel(f"fraction {what}")
        ax.set_title(name if name != "road" else "ROAD deletion", fontsize=10)
        ax.legend(frameon=False, fontsize=8)
    axes[0][0].set_ylabel(f"{evaluation['value_function']} (normalised)")
    fig.suptitle(f"{evaluation['method']} · {evaluation['target_label']} · units: {evaluation['units']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / FIGURES["curves"])
    plt.close(fig)
    written["curves"] = FIGURES["curves"]
    corr = evaluation.get("correlation")
    if corr:
        fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=120)
        ax.scatter(corr["attribution_sum"], corr["value_drop"], s=12)
        ax.set_xlabel("attribution of the removed subset")
        ax.set_ylabel("value drop")
        ax.set_title("faithfulness correlation r = " + ("n/a" if corr["pearson"] is None else f"{corr['pearson']:.2f}"), fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / FIGURES["correlation"])
        plt.close(fig)
        written["correlation"] = FIGURES["correlation"]
    sanity = evaluation.get("sanity")
    if sanity and sanity["curve"]:
        fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=120)
        ax.plot([0] + [r["layers_randomised"] for r in sanity["curve"]], [1.0] + [r["spearman"] if r["spearman"] is not None else np.nan for r in sanity["curve"]], "o-")
        ax.axhline(sanity["threshold"], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("layers re-initialised (from the output end)")
        ax.set_ylabel("Spearman ρ with the original")
        ax.set_title("model randomisation: " + {True: "passed", False: "FLAGGED", None: "undetermined"}[sanity["passed"]], fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / FIGURES["sanity"])
        plt.close(fig)
        written["sanity"] = FIGURES["sanity"]
    return written
