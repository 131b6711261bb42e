"""How far to trust an attribution: removal curves, ROAD, faithfulness correlation, and the
cascading model-randomisation sanity check.

Quantus is the catalogue, but it is built around classifiers on whole images; here the value is the run's value
function on the ROI (segmentation inside it), every value comes from the ROI-restricted evaluator (a `Game`:
coalitions of units → values), and units are what the method attributed to: region players, input channels, or
voxels ranked by a gradient map and cut into equal chunks.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Callable

import numpy as np
import torch
from scipy import ndimage, sparse, stats

from .errors import SegXAIError
from .methods.base import execution_order

Game = Callable[[np.ndarray], np.ndarray]   # bool (n, P) coalitions (True = present) → (n,) values
SANITY_THRESHOLD = 0.5   # |ρ| with the original must fall below this once every layer is random, and stay above it
                         # when the intact model is re-explained under another seed (a random map rarely does: see docs)


@dataclasses.dataclass
class Units:
    """What the curves remove. `ids` is broadcastable to the image: (1, I, J, K) for regions and voxel chunks,
    (C, 1, 1, 1) for channels; -1 = never removed. `order` is most-relevant-first; `sizes` give the fraction axis."""

    ids: np.ndarray
    scores: np.ndarray    # attribution of each unit (its sum)
    sizes: np.ndarray     # voxels per unit
    order: np.ndarray
    kind: str             # players | channels | voxels

    @property
    def n(self) -> int:
        return len(self.scores)


def ranked_units(ids: np.ndarray, scores: np.ndarray, kind: str) -> Units:
    """Players or channels, most relevant (largest value) first."""
    sizes = np.bincount(ids[ids >= 0].ravel(), minlength=len(scores)).astype(float) if kind == "players" else np.ones(len(scores))
    return Units(ids, np.asarray(scores, float), sizes, np.argsort(-np.asarray(scores), kind="stable"), kind)


def voxel_units(attribution: np.ndarray, support: tuple[slice, ...], chunks: int, rng: np.random.Generator,
                random_order: bool = False) -> Units:
    """The support's voxels cut into `chunks` equal groups: by attribution rank (ties broken at random), or at random
    (for the faithfulness correlation, whose subsets must be random)."""
    box = attribution[support].ravel().astype(np.float64)
    n = box.size
    order = rng.permutation(n) if random_order else np.lexsort((rng.random(n), -box))
    chunk = np.empty(n, np.int64)
    chunk[order] = np.arange(n) * chunks // n
    ids = np.full(attribution.shape, -1, np.int64)
    ids[support] = chunk.reshape(attribution[support].shape)
    sizes = np.bincount(chunk, minlength=chunks).astype(float)
    return Units(ids[None], np.bincount(chunk, weights=box, minlength=chunks), sizes, np.arange(chunks), "voxels")


def curve_points(n: int, steps: int) -> np.ndarray:
    """How many units are removed at each point of a curve: at most `steps` + 1 points from 0 to n."""
    return np.unique(np.round(np.linspace(0, n, min(n, steps) + 1)).astype(int))


def _present(n: int, removed: np.ndarray) -> np.ndarray:
    keep = np.ones(n, bool)
    keep[removed] = False
    return keep


def removal_coalitions(units: Units, steps: int) -> dict[str, np.ndarray]:
    """Deletion (remove the first k) and insertion (keep only the first k), most- and least-relevant-first."""
    ks, n = curve_points(units.n, steps), units.n
    out = {}
    for name, order in (("morf", units.order), ("lerf", units.order[::-1])):
        out[f"deletion_{name}"] = np.stack([_present(n, order[:k]) for k in ks])
        out[f"insertion_{name}"] = np.stack([~_present(n, order[:k]) for k in ks])
    return out


def fractions(units: Units, order: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Share of the units' voxels among the first k of `order`, at each k."""
    cumulative = np.concatenate([[0.0], np.cumsum(units.sizes[order])])
    return cumulative[ks] / max(cumulative[-1], 1e-12)


def summarise(x: np.ndarray, values: np.ndarray, v_full: float, v_empty: float) -> dict:
    """A curve with its values normalised to (v − v_empty) / |v_full − v_empty| — 1 with everything present, 0 with
    nothing — and its area over the fraction removed (or inserted). Normalising by the span rather than by v_full
    keeps signed scalars (summed logits) on Dice's scale; dividing by its magnitude keeps the direction, so a lower
    deletion curve is always a faster fall (a summed logit may lie below its baseline value: then the curve starts at −1)."""
    span = abs(v_full - v_empty)
    normalised = (values - v_empty) / span if span > 1e-12 else None
    return {"fraction": x.tolist(), "value": values.tolist(),
            "normalised": None if normalised is None else normalised.tolist(),
            "auc": None if normalised is None else float(np.sum(np.diff(x) * (normalised[1:] + normalised[:-1]) / 2))}


def removal_curves(game: Game, units: Units, steps: int) -> dict:
    """Deletion and insertion curves (MoRF and LeRF), their normalised areas and AOPC, from one batched evaluation."""
    sets = removal_coalitions(units, steps)
    ks = curve_points(units.n, steps)
    rows = np.concatenate(list(sets.values()))
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    values = game(unique)[inverse.ravel()]
    v_full, v_empty = values[0], values[len(ks)]   # deletion_morf and insertion_morf, nothing done yet
    out, start = {}, 0
    for key, coalitions in sets.items():
        order = units.order if key.endswith("morf") else units.order[::-1]
        out[key] = summarise(fractions(units, order, ks), values[start:start + len(coalitions)], v_full, v_empty)
        start += len(coalitions)
    for name in ("morf", "lerf"):
        curve = out[f"deletion_{name}"]["normalised"]
        out[f"aopc_{name}"] = None if curve is None else float(np.mean(curve[0] - np.asarray(curve)))
    out.update(v_full=float(v_full), v_empty=float(v_empty), points=ks.tolist())
    return out


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """ROAD's noisy linear imputation in 3D: each removed voxel becomes the mean of its six neighbours (removed or not,
    solved jointly: a discrete Laplace equation with the kept voxels as boundary), plus Gaussian noise of `noise` ×
    the channel's standard deviation. The filled region then carries no edge that gives its shape away."""
    if not removed.any():
        return image
    out = image.copy()
    out[:, removed] = _harmonic_fill(image, removed)
    for c in range(image.shape[0]):
        out[c][removed] += noise * float(image[c].std()) * rng.standard_normal(int(removed.sum()))
    return out


def _harmonic_fill(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(C, n) values at the removed voxels. A hole with no kept voxel around it (everything removed) has no boundary:
    it takes the channel mean. (A coarse-to-fine start was tried: it saved under 20 % of the iterations, as the
    residual it leaves sits at the hole boundary.)"""
    labels, _ = ndimage.label(removed)
    bounded = np.unique(labels[ndimage.binary_dilation(~removed) & removed])
    inner = np.isin(labels, bounded[bounded > 0])
    mean = image.reshape(len(image), -1).mean(1)
    full = np.broadcast_to(mean[:, None, None, None], image.shape).copy()
    if inner.any():
        a, b = _laplace_system(image, inner)
        full[:, inner] = _block_cg(a, b, np.tile(mean, (len(b), 1))).T
    return full[:, removed]


def _laplace_system(image: np.ndarray, unknown: np.ndarray):
    """Σ_neighbours (x_u − x_v) = 0 for every unknown voxel u: the matrix, and (n, C) right-hand sides from kept voxels."""
    coords = np.argwhere(unknown)
    n = len(coords)
    number = np.full(unknown.shape, -1, np.int64)
    number[unknown] = np.arange(n)
    rows, cols, vals = [], [], []
    rhs = np.zeros((n, image.shape[0]))
    for axis in range(3):
        for step in (-1, 1):
            nb = coords.copy()
            nb[:, axis] += step
            inside = (nb[:, axis] >= 0) & (nb[:, axis] < unknown.shape[axis])
            u, nb = np.flatnonzero(inside), nb[inside]
            other = number[tuple(nb.T)]
            hole = other >= 0
            rows += [u, u[hole]]
            cols += [u, other[hole]]
            vals += [np.ones(len(u)), -np.ones(int(hole.sum()))]
            rhs[u[~hole]] += image[(slice(None),) + tuple(nb[~hole].T)].T
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)), rhs


def _block_cg(a, b: np.ndarray, x: np.ndarray, rtol: float = 1e-4, maxiter: int = 2000) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for every channel at once (one sparse product per step, half the
    time of a solve per channel); rtol 1e-4 leaves errors near 0.5 % of a channel's s.d., below ROAD's noise."""
    d = 1.0 / a.diagonal()[:, None]
    tiny = np.finfo(float).tiny
    r = b - a @ x
    z = d * r
    p, rz = z.copy(), (r * z).sum(0)
    stop = rtol * np.maximum(np.linalg.norm(b, axis=0), np.linalg.norm(r, axis=0))
    for _ in range(maxiter):
        if np.all(np.linalg.norm(r, axis=0) <= stop):
            break
        q = a @ p
        alpha = rz / np.maximum((p * q).sum(0), tiny)   # a converged column (r = 0) stays put
        x, r = x + alpha * p, r - alpha * q
        z = d * r
        rz, rz_old = (r * z).sum(0), rz
        p = z + rz / np.maximum(rz_old, tiny) * p
    return x


def road_curves(evaluator, value: Callable, image: np.ndarray, baseline: np.ndarray, units: Units, steps: int,
                noise: float, rng: np.random.Generator) -> dict:
    """MoRF and LeRF deletion with removed voxels imputed (ROAD), normalised between its own ends (nothing / all
    removed); every point needs its own imputation, so the evaluator's baseline is replaced per point and restored."""
    ks, n = curve_points(units.n, steps), units.n
    raw, everything = {}, None   # with every unit removed both orders impute the same: once
    try:
        for name, order in (("morf", units.order), ("lerf", units.order[::-1])):
            values = []
            for k in ks:
                if k < n or everything is None:
                    imputed = noisy_linear_impute(image, np.isin(units.ids[0], order[:k]), noise, rng)
                    everything = imputed if k == n else everything
                evaluator.set_baseline(everything if k == n else imputed)
                values.append(evaluator.evaluate(_present(n, order[:k])[None], lambda z: [value(z)], stage=f"ROAD {name}")[0, 0])
            raw[name] = np.array(values)
    finally:
        evaluator.set_baseline(baseline)
    full, empty = raw["morf"][0], raw["morf"][-1]
    out = {name: summarise(fractions(units, order, ks), raw[name], full, empty)
           for name, order in (("morf", units.order), ("lerf", units.order[::-1]))}
    return {**out, "imputation": "noisy-linear", "noise": noise}


def interaction_share(game: Game, n: int) -> dict:
    """How far the game is from additive: 1 − Σ_i (v(N) − v(N ∖ i)) / (v(N) − v(∅)). 0 = additive (leave-one-out
    effects, what a single-unit intervention sees, add up to the whole drop, and equal the Shapley values); > 0 = units
    back each other up (redundancy: removing one alone loses less than its share); < 0 = they need each other."""
    values = game(np.concatenate([np.ones((1, n), bool), np.zeros((1, n), bool), ~np.eye(n, dtype=bool)]))
    full, empty, loo = values[0], values[1], values[0] - values[2:]
    span = full - empty
    return {"share": None if abs(span) < 1e-12 else float(1 - loo.sum() / span), "leave_one_out": loo.tolist()}


def faithfulness_correlation(game: Game, units: Units, samples: int, share: float, rng: np.random.Generator) -> dict:
    """Pearson correlation between the attribution summed over a random subset of units and the drop of the value
    when that subset is removed (Bhatt et al. 2020); every proper subset when there are few units."""
    n = units.n
    if 2 ** n - 2 <= samples:
        subsets = np.array([[(s >> i) & 1 for i in range(n)] for s in range(1, 2 ** n - 1)], bool)
    else:
        size = max(1, int(round(share * n)))
        subsets = np.zeros((samples, n), bool)
        for row in subsets:
            row[rng.choice(n, size, replace=False)] = True
    values = game(np.concatenate([np.ones((1, n), bool), ~subsets]))
    drops, sums = values[0] - values[1:], subsets @ units.scores
    constant = np.ptp(drops) == 0 or np.ptp(sums) == 0
    return {"pearson": None if constant else float(stats.pearsonr(sums, drops).statistic), "n_subsets": len(subsets),
            "subset_size": int(subsets.sum(1).max()), "attribution_sum": sums.tolist(), "value_drop": drops.tolist()}


def parameterised_layers(module: torch.nn.Module) -> list[str]:
    """Modules holding parameters of their own, in registration order (TorchScript modules included)."""
    return [name for name, m in module.named_modules() if next(iter(m.parameters(recurse=False)), None) is not None]


def randomise_layer(module: torch.nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation range: weights and biases ~ U(±1/√fan_in); norm scales and shifts U(±1)."""
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    fan_in = weight[0].numel() if weight is not None and weight.ndim > 1 else 1
    bound = fan_in ** -0.5
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation over the entries where either is nonzero: entries both leave at exactly zero (input the ROI
    cannot see) are structural ties that would inflate it for every map."""
    keep = (a != 0) | (b != 0)
    a, b = a[keep], b[keep]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def layer_order(module: torch.nn.Module, probe: Callable[[], object] | None) -> tuple[list[str], str]:
    """Parameterised layers from the output end: the reverse of the order they ran in during `probe()` (registration
    order is not execution order: SegResNet registers its up-sampling convolutions after the blocks they feed).
    TorchScript modules take no hooks, and without a probe there is nothing to run: registration order, reversed."""
    names = parameterised_layers(module)
    if probe is None or isinstance(module, torch.jit.ScriptModule):
        return names[::-1], "registration"
    return execution_order(dict(module.named_modules()), names, probe)[::-1], "execution"


def cascading_randomisation(models: list, explain: Callable[[list, int], np.ndarray], reference: np.ndarray, steps: int,
                            seed: int = 0, probe: Callable[[object], object] | None = None) -> dict:
    """Adebayo et al. (2018): on deep copies, re-initialise parameterised layers from the output end (in execution
    order, found by running `probe(model)` once), cumulatively, and re-explain at up to `steps` depths.

    `explain(models, replicate)` re-runs the method; replicate 0 with the result's own seed, 1 with another. Passing
    needs both halves of the argument: the explanation must depend on the model (|ρ| with the original falls below
    SANITY_THRESHOLD once every layer is random) and it must be reproducible on the intact model under another seed
    (ρ ≥ SANITY_THRESHOLD) — otherwise a map of pure noise, which shares nothing with any other, would pass too.
    An explainer that ignores the model (an edge detector, the input image) keeps ρ = 1 and is flagged."""
    with torch.no_grad():   # a TorchScript module deep-copied with autograd on gets non-leaf parameters
        copies = [copy.deepcopy(m) for m in models]
    orders = [layer_order(c.module, None if probe is None else functools.partial(probe, c)) for c in copies]
    layers = [names for names, _ in orders]
    depth = max(len(names) for names in layers)
    if depth == 0:
        return {"curve": [], "n_layers": 0, "passed": None, "note": "the model has no parameterised layer to randomise"}
    try:
        reproducibility = spearman(reference, explain(copies, 1))
    except SegXAIError:
        reproducibility = None
    generator = torch.Generator().manual_seed(seed)
    curve, done = [], 0
    points = min(depth, max(steps, 1))
    for k in np.unique(np.round(np.linspace(depth / points, depth, points)).astype(int)):   # the last: every layer
        for c, names in zip(copies, layers):
            named = dict(c.module.named_modules())
            for name in names[done:k]:
                randomise_layer(named[name], generator)
        done = int(k)
        row = {"layers_randomised": done, "layer": layers[0][min(done, len(layers[0])) - 1]}
        try:
            row["spearman"] = spearman(reference, explain(copies, 0))
        except SegXAIError as exc:  # e.g. a random model that predicts no target in the ROI leaves nothing to explain
            row.update(spearman=None, note=exc.problem)
        curve.append(row)
    final = curve[-1]["spearman"]
    passed = None if final is None or reproducibility is None else bool(abs(final) < SANITY_THRESHOLD <= reproducibility)
    return {"curve": curve, "n_layers": depth, "layer_order": orders[0][1], "reproducibility": reproducibility,
            "final_spearman": final, "threshold": SANITY_THRESHOLD, "passed": passed}
