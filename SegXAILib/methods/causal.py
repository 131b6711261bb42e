"""Causal ATE (after PdCR, Jiang et al. 2026), in 3D: what happens to the segmentation in the ROI under do(region := x′)
and under do(network component := its mean activation).

Regions are the region-SHAP players inside the receptive-field support (everything else has ATE exactly 0 by
construction and is never intervened on). An intervention replaces one region at a time, on the ROI-restricted
evaluator (only the windows holding that region re-run): by the removal baseline (one deterministic sample), or
in-distribution by the same voxels of the case shifted by a random offset ("shift": real tissue from elsewhere in
this case). ATE_r = mean over samples of v(do(X_r := x′)) − v(X); its 95 % t-interval comes from the samples.
Sampling is adaptive: every region gets `min_samples`, then only regions whose interval is still wider than the
tolerance get more, up to `max_samples` (PdCR screened with 3 then a fixed 50). Samples that all agree (common with
hard Dice or TP) have a zero-width t-interval that says nothing about the next sample, so such a region keeps being
sampled up to `max_samples`; if they still all agree, it reports no interval and says that the mean rests on n
identical samples. The baseline intervention is one deterministic sample: its effect is exact.
Components: each output channel (or the whole output) of the named modules is set to its spatial mean by a
forward hook, and the change of the value function is that component's effect.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from ..errors import InputError, ModelError
from ..evaluator import Evaluator
from ..progress import CancelToken, ProgressFn, check_cancel, no_progress
from ..targets import parse_target
from ..values import value_function
from .base import ExplainInputs, MethodResult, baseline_values, check_finite, model_case
from .contrast_shapley import _references
from .region_shap import global_mask_players, map_players, region_maps, region_players

NAME = "causal"


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and the t-interval half-width (0 for a single or constant sample)."""
    mean = float(samples.mean())
    if samples.size < 2:
        return mean, 0.0, float(samples.size)
    half = float(stats.t.ppf(0.5 + confidence / 2, samples.size - 1) * samples.std(ddof=1) / np.sqrt(samples.size))
    return mean, half, float(samples.size)


def _settled(samples: list[float], options) -> bool:
    """Enough samples for this region: a narrow interval from samples that do not all agree."""
    s = np.array(samples)
    return np.ptp(s) > 0 and _interval(s, options.confidence)[1] <= options.tolerance


def _interval_entry(samples: np.ndarray, options) -> dict:
    """The interval fields of a region: a t-interval, exact (deterministic intervention), or none (n identical samples)."""
    mean, half, n = _interval(samples, options.confidence)
    n = int(n)
    if options.intervention == "baseline":
        return {"ci_low": mean, "ci_high": mean, "n_samples": n, "interval": "exact: the baseline intervention is deterministic"}
    if np.ptp(samples) == 0:
        bound = 1 - (1 - options.confidence) ** (1 / n)   # Clopper-Pearson upper bound on P(a sample differs), 0 seen in n
        return {"ci_low": None, "ci_high": None, "n_samples": n,
                "interval": f"none: all {n} samples identical (ATE {mean:+.4g} each); a further sample differs with "
                            f"probability below {bound:.2f} ({options.confidence:.0%}), by an unknown amount"}
    return {"ci_low": mean - half, "ci_high": mean + half, "n_samples": n, "interval": f"{options.confidence:.0%} t-interval"}


def _shifted(image: np.ndarray, rng: np.random.Generator, box: tuple[slice, ...]) -> np.ndarray:
    """The case moved by a random offset of up to half the support box per axis: real tissue from elsewhere."""
    offsets = [int(rng.integers(-(s.stop - s.start) // 2, (s.stop - s.start) // 2 + 1)) for s in box]
    return np.roll(image, offsets, axis=(1, 2, 3))


def region_effects(evaluator: Evaluator, value, players, image: np.ndarray, baseline: np.ndarray, options, seed: int,
                   cancel: CancelToken | None) -> dict:
    """ATE samples per region: one region intervened on at a time, adaptively sampled."""
    n = players.n
    y = value(evaluator.full_logits())   # `value` checks every logit it reads is finite
    single = ~np.eye(n, dtype=bool)          # row r: every region present but r
    samples: list[list[float]] = [[] for _ in range(n)]
    active = np.arange(n)
    rng = np.random.default_rng(seed)
    where = np.argwhere(players.ids >= 0)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0)))
    rounds = 1 if options.intervention == "baseline" else options.max_samples
    for k in range(rounds):
        check_cancel(cancel)
        evaluator.set_baseline(baseline if options.intervention == "baseline" else _shifted(image, rng, box))
        values = evaluator.evaluate(single[active], lambda z: [value(z)], stage=f"interventions, round {k + 1}")[:, 0]
        for r, v in zip(active, values):
            samples[r].append(float(v - y))
        if k + 1 >= options.min_samples:
            active = np.array([r for r in active if not _settled(samples[r], options)], int)
            if active.size == 0:
                break
    return {"y": y, "samples": samples}


def component_effects(model, mc, value, components: list[str], unit: str, device, batch_size, cancel) -> list[dict]:
    """Each channel (or whole output) of the named modules set to its spatial mean; the change of the value."""
    module = model.module
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelError("Network-component interventions need forward hooks, which TorchScript modules do not take.",
                         "Use the model as a MONAI bundle, an nnU-Net folder or --factory with its state dict.")
    named = dict(module.named_modules())
    n = mc.prepared.image.shape[0]
    args = (model, mc.prepared.image, mc.roi, np.arange(n).reshape(n, 1, 1, 1), n, np.zeros((n, 1, 1, 1), np.float32), device)
    y = value(Evaluator(*args, batch_size=batch_size).full_logits())
    rows = []
    for name in components:
        if name not in named:
            raise InputError(f"The model has no module named {name!r}.", f"Choose among: {', '.join(list(named)[1:12])} …")
        channels = [None]
        if unit == "channel":
            out_channels = getattr(named[name], "out_channels", None) or getattr(named[name], "num_features", None)
            if out_channels is None:
                raise InputError(f"Cannot tell how many channels {name} has.", "Use --component-unit block for this module.")
            channels = list(range(int(out_channels)))
        for c in channels:
            check_cancel(cancel)

            def hook(_, __, out, c=c):
                mean = out.mean(dim=tuple(range(2, out.ndim)), keepdim=True)
                if c is None:
                    return mean.expand_as(out)
                out = out.clone()
                out[:, c] = mean[:, c].expand_as(out[:, c])
                return out

            handle = named[name].register_forward_hook(hook)
            try:
                y_do = value(Evaluator(*args, batch_size=batch_size).full_logits())
            finally:
                handle.remove()
            rows.append({"module": name, "channel": c, "ate": float(y_do - y)})
    return sorted(rows, key=lambda r: -abs(r["ate"]))


def explain(inputs: ExplainInputs, progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> list[MethodResult]:
    request = inputs.request
    options = request.causal
    if len(request.targets) != 1:
        raise InputError("Causal ATE explains one target per run.", "Give one --target-label (run again for another).")
    if options.intervention not in ("shift", "baseline"):
        raise InputError(f"Unknown intervention {options.intervention!r}.", "Choose --intervention shift or baseline.")
    vf = value_function(request.value)
    first, players = region_players(inputs)
    per_model, components, stats_rows = [], [], []
    for m, model in enumerate(inputs.models):
        mc = first if m == 0 else model_case(model, inputs)
        ids = players.ids if m == 0 else map_players(players.ids, first, mc)
        baseline = baseline_values(mc.prepared.image, request.baseline)
        evaluator = Evaluator(model, mc.prepared.image, mc.roi, ids[None], players.n, baseline, inputs.device,
                              batch_size=request.batch_size, progress=progress, cancel=cancel)
        full = check_finite(evaluator.full_logits(), model.name)
        target = parse_target(request.targets[0], model.labels, model.activation, full.shape[0], model.regions)
        ref, = _references([target], full, mc.reference[mc.roi] if mc.reference is not None else None, request.value, model.name)
        value = lambda z, model=model: vf(check_finite(z, model.name, "under a causal intervention"), target, ref)
        per_model.append(region_effects(evaluator, value, players, mc.prepared.image, baseline, options, request.seed + m, cancel))
        if options.components:
            components.append(component_effects(model, mc, value, options.components, options.component_unit, inputs.device,
                                                request.batch_size, cancel))
        stats_rows.append({"model": model.name, **evaluator.stats.to_json()})
    return [_result(inputs, target, players, first, per_model, components, stats_rows)]


def _result(inputs, target, players, first, per_model, components, stats_rows) -> MethodResult:
    request, options = inputs.request, inputs.request.causal
    pooled = [np.concatenate([np.array(e["samples"][r]) for e in per_model]) for r in range(players.n)]
    ate = np.array([float(s.mean()) for s in pooled])
    voxel_ml = float(np.prod(first.prepared.geometry.spacing)) / 1000.0
    volumes = players.volumes()
    entries = [{"id": r, "name": players.names[r], "value": ate[r], **_interval_entry(s, options),
                "per_model": [float(np.mean(e["samples"][r])) for e in per_model], "volume_ml": float(volumes[r] * voxel_ml),
                "organ_label": players.organ[r]} for r, s in enumerate(pooled)]
    # the global mask keeps the regions whose removal hurts most: the most negative effects
    chosen = global_mask_players(-ate, options.mask_share)
    y = float(np.mean([e["y"] for e in per_model]))
    order = np.argsort(ate, kind="stable")
    result = {
        "method": NAME, "value_function": request.value, "target_label": target.name, "target": target.to_json(),
        "players": entries, "ranking": [players.names[i] for i in order], "top_k": [entries[i] for i in order[:request.region.top_k]],
        "v_full": y, "v_empty": None,
        "ate_definition": "mean over interventions of v(do(region := x')) - v(observed); negative = the region supports the target",
        "relevance_sign": -1,
        "interventions": {"kind": options.intervention, "min_samples": options.min_samples, "max_samples": options.max_samples,
                          "tolerance": options.tolerance, "confidence": options.confidence,
                          "total": int(sum(len(s) for e in per_model for s in e["samples"]))},
        "features": {"kind": players.kind, "n_players": players.n},
        "global_mask": {"share": options.mask_share, "players": [players.names[i] for i in chosen], "ids": chosen},
        "components": _components_table(components),
        "baseline": request.baseline, "roi_voxels": int(inputs.roi.sum()),
        "reference_source": "file" if inputs.reference is not None else "model prediction",
    }
    return MethodResult(target.name, result, region_maps(inputs, first, players, ate, chosen), stats_rows)


def _components_table(per_model: list[list[dict]]) -> list[dict]:
    """Component effects averaged over models (with each model's), ranked by |ATE|."""
    tables = [{(r["module"], r["channel"]): r["ate"] for r in rows} for rows in per_model]
    rows = [{"module": k[0], "channel": k[1], "ate": float(np.mean([t[k] for t in tables])), "per_model": [t[k] for t in tables]}
            for k in (tables[0] if tables else {})]
    return sorted(rows, key=lambda r: -abs(r["ate"]))
