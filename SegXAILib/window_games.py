"""Shapley estimators that fit the sliding-window cache: a window's logits depend only on its own players.

Two estimators, both on the ROI-restricted `Evaluator` (same windows, fusion and baseline as plain evaluation):

- `permutation_shapley` (any value function): antithetic permutation sampling. Walking a permutation adds one
  player per step, so between consecutive coalitions only the windows holding that player change; all prefixes of
  a permutation (and of its reverse) go to the evaluator in one call, which runs each distinct (window, pattern of
  that window's players) once. A step costs the windows that hold the player, not every window over the ROI.
  Values are unbiased; the standard error is the spread over permutation pairs.

- `window_game_shapley` (values that are sums over ROI voxels of a per-voxel term, e.g. mean-prob, tp-rate): exact.
  A voxel's fused logits depend only on the windows that cover it, so v(S) = Σ_cells v_c(S ∩ U_c), where a cell
  is the set of ROI voxels covered by the same windows and U_c the players inside those windows. Shapley values
  are linear in the game, so φ = Σ_c φ(v_c), each enumerated exactly over its 2^|U_c| coalitions from the
  window logits of all 2^|P_t| patterns of each window's players. Network cost: Σ_t 2^|P_t| windows instead of
  2^P coalitions × windows, which is small when windows hold few players (organ players, coarse lattices).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .estimators import MIN_REPLICATES, estimate_shapley, exact_shapley
from .targets import Target

CELL_PLAYER_LIMIT = 16      # a cell game is enumerated over at most 2^16 coalitions


# ----- antithetic permutation sampling ----------------------------------------------------------------------
def permutation_coalitions(order: np.ndarray) -> np.ndarray:
    """(n+1, n) bool: the prefixes of `order`, from the empty coalition to the full one."""
    n = len(order)
    z = np.zeros((n + 1, n), dtype=bool)
    for step, player in enumerate(order):
        z[step + 1:, player] = True
    return z


def permutation_shapley(evaluate, n: int, budget: int, seed: int = 0, on_pair=None, tolerance: float | None = None) -> dict:
    """Antithetic permutation sampling: pairs (π, reversed π) until `budget` coalitions (n+1 per permutation) are used,
    or, with `tolerance`, until every standard error is at most it (after MIN_REPLICATES pairs).

    `evaluate(coalitions (m, n) bool) -> (m,) values` must evaluate a whole batch in one call so that the evaluator
    can share window runs between the prefixes. `on_pair(values, std_error, pairs)` sees each running estimate, the
    first one after half a pair (pairs = 0.5, no standard error): a first map after n + 1 coalitions, while the
    reversed permutation runs. Pairs are independent, so sd/√pairs is a calibrated standard error.
    """
    per_pair = 2 * (n + 1)
    pairs = max(1, budget // per_pair)
    rng = np.random.default_rng(seed)
    samples = np.zeros((pairs, n))
    v_empty = v_full = None
    stopped = "budget"
    for k in range(pairs):
        order = rng.permutation(n)
        forward, backward = permutation_coalitions(order), permutation_coalitions(order[::-1])
        if k == 0 and on_pair is not None:
            v_forward = np.asarray(evaluate(forward), dtype=np.float64)
            first = np.zeros(n)
            first[order] = np.diff(v_forward)
            on_pair(first, np.full(n, np.nan), 0.5)
            v = np.concatenate([v_forward, evaluate(backward)])
        else:
            v = np.asarray(evaluate(np.concatenate([forward, backward])), dtype=np.float64)
        v_empty, v_full = v[0], v[n]
        for half, perm in ((v[:n + 1], order), (v[n + 1:], order[::-1])):
            samples[k, perm] += 0.5 * np.diff(half)
        if on_pair is not None:
            on_pair(*_mean_se(samples[:k + 1]), k + 1)
        if tolerance is not None and k + 1 >= MIN_REPLICATES and _mean_se(samples[:k + 1])[1].max() <= tolerance:
            samples, stopped = samples[:k + 1], "tolerance"
            break
    values, std_error = _mean_se(samples)
    return {"values": values, "std_error": std_error if len(samples) >= MIN_REPLICATES else None, "v_empty": float(v_empty),
            "v_full": float(v_full), "evaluations": len(samples) * per_pair, "exact": False, "estimator": "permutation-cached",
            "settings": {"antithetic": True, "pairs": len(samples)}, "replicates": len(samples), "budget": budget,
            "stopped": stopped}


def _mean_se(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = samples.shape[0]
    se = samples.std(0, ddof=1) / np.sqrt(k) if k > 1 else np.full(samples.shape[1], np.nan)
    return samples.mean(0), se


# ----- exact per-window games for voxel-additive values -------------------------------------------------------
def _prob_term(logits, target: Target, ref, n_roi: int, n_ref: int):
    return target.prob(logits).double() / n_roi


def _tp_term(logits, target, ref, n_roi, n_ref):
    return (target.hard(logits) & ref).double()


def _fp_term(logits, target, ref, n_roi, n_ref):
    return (target.hard(logits) & ~ref).double()


def _tp_rate_term(logits, target, ref, n_roi, n_ref):
    return _tp_term(logits, target, ref, n_roi, n_ref) / n_ref if n_ref else torch.zeros(logits.shape[1], dtype=torch.float64)


def _fp_rate_term(logits, target, ref, n_roi, n_ref):
    n_neg = n_roi - n_ref
    return _fp_term(logits, target, ref, n_roi, n_ref) / n_neg if n_neg else torch.zeros(logits.shape[1], dtype=torch.float64)


# value name -> per-voxel term whose sum over the ROI is exactly values.VALUE_FUNCTIONS[name]
VOXEL_TERMS = {"mean-prob": _prob_term, "tp": _tp_term, "fp": _fp_term, "tp-rate": _tp_rate_term, "fp-rate": _fp_rate_term}


def window_game_cost(evaluator) -> tuple[int, int]:
    """(window forward passes the exact decomposition needs, the largest cell's player count)."""
    passes = int(sum(2 ** len(p) - 1 for p in evaluator.present))
    cells = _cells(evaluator)
    largest = max((len(_union(evaluator, ws)) for ws in cells), default=0)
    return passes, largest


def _cells(evaluator) -> dict[tuple[int, ...], np.ndarray]:
    """ROI voxel indices grouped by the set of evaluator windows that cover them."""
    cover = np.zeros((evaluator.n_roi, len(evaluator.windows)), dtype=bool)
    for i, r in enumerate(evaluator.ridx):
        cover[r.numpy(), i] = True
    keys, inverse = np.unique(cover, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return {tuple(np.flatnonzero(k)): np.flatnonzero(inverse == c) for c, k in enumerate(keys) if k.any()}


def _union(evaluator, windows) -> np.ndarray:
    return np.unique(np.concatenate([evaluator.present[i] for i in windows] + [np.zeros(0, int)])).astype(int)


def _window_patterns(evaluator, i: int) -> torch.Tensor:
    """(2^p, K, local) float64 logits of window i for every pattern of its p players (bit b = its b-th player kept)."""
    players = evaluator.present[i]
    p = len(players)
    masks = np.arange(2 ** p)
    out = [None] * (2 ** p)
    out[-1] = evaluator.base_z[i].double()
    todo = [m for m in masks[:-1]]
    for start in range(0, len(todo), evaluator.batch_size):
        chunk = todo[start:start + evaluator.batch_size]
        pairs = []
        for m in chunk:
            coalition = np.ones(evaluator.n_players, dtype=bool)
            coalition[players] = (m >> np.arange(p)) & 1 == 1
            pairs.append((coalition, i))
        z = evaluator._forward(evaluator._inputs(pairs))
        for b, m in enumerate(chunk):
            out[m] = z[b][:, evaluator.local[i]].double()
        evaluator.stats.window_evaluations += len(chunk)
    return torch.stack(out)


def window_game_shapley(evaluator, value: str, target: Target, ref: torch.Tensor, max_passes: int | None = None) -> dict:
    """Exact Shapley values of a voxel-additive value on the evaluator's game, by per-cell enumeration."""
    if value not in VOXEL_TERMS:
        raise InputError(f"The window-game estimator needs a value that is a sum over voxels; {value!r} is not.",
                         f"Use --value {' / '.join(VOXEL_TERMS)}, or another estimator.")
    passes, largest = window_game_cost(evaluator)
    if largest > CELL_PLAYER_LIMIT or (max_passes is not None and passes > max_passes):
        raise InputError(f"Exact window games need {passes} window runs and a cell of {largest} players here.",
                         f"Use fewer players per window (organ players, a coarser lattice) or another estimator"
                         f"{'' if max_passes is None else f'; or raise the budget to {passes}'}.")
    term = VOXEL_TERMS[value]
    ref = torch.as_tensor(ref, dtype=torch.bool)
    n_roi, n_ref = evaluator.n_roi, int(ref.sum())
    logits = {i: _window_patterns(evaluator, i) for i in range(len(evaluator.windows)) if len(evaluator.present[i])}
    phi = np.zeros(evaluator.n_players)
    v_empty = v_full = 0.0
    for windows, voxels in _cells(evaluator).items():
        union = _union(evaluator, windows)
        m = len(union)
        vox = torch.from_numpy(voxels)
        parts = []
        for i in windows:
            pos = torch.from_numpy(np.searchsorted(evaluator.ridx[i].numpy(), voxels))
            bits = np.searchsorted(union, evaluator.present[i])          # where window i's players sit in the cell's
            parts.append((evaluator.weight[i][pos], logits[i][:, :, pos] if i in logits else evaluator.base_z[i][None, :, pos].double(),
                          1 << bits if i in logits else None))
        chunk = max(1, (1 << 22) // max(1, len(voxels) * evaluator.base_sum.shape[0]))
        values = np.zeros(2 ** m)
        for start in range(0, 2 ** m, chunk):
            masks = np.arange(start, min(start + chunk, 2 ** m))
            fused = 0.0
            for weight, z, bit_of in parts:
                pattern = np.zeros(len(masks), int) if bit_of is None else \
                    ((masks[:, None] & bit_of) > 0) @ (1 << np.arange(len(bit_of)))
                fused = fused + weight * z[torch.from_numpy(pattern)]
            fused = (fused / evaluator.norm[vox]).float()                   # (c, K, v), as the evaluator fuses
            flat = fused.permute(1, 0, 2).reshape(fused.shape[1], -1)
            terms = term(flat, target, ref[vox].repeat(len(masks)), n_roi, n_ref)
            values[masks] = terms.reshape(len(masks), -1).sum(1).numpy()
        v_empty += values[0]
        v_full += values[-1]
        if m:
            phi[union] += exact_shapley(values, m)
    return {"values": phi, "std_error": np.zeros(evaluator.n_players), "v_empty": v_empty, "v_full": v_full,
            "evaluations": passes, "exact": True, "estimator": "window-games", "settings": {"window_runs": passes,
            "largest_cell_players": largest}, "replicates": 1, "budget": max_passes, "stopped": "exact"}


# ----- region SHAP hook -------------------------------------------------------------------------------------
ESTIMATORS = ("permutation-cached", "window-games")


def estimate_on_evaluator(name: str, evaluator, value: str, value_fn, target: Target, ref, budget: int | None, seed: int,
                          stage: str = "coalitions", tolerance: float | None = None, on_partial=None) -> dict:
    """Region SHAP's entry: `name` from ESTIMATORS on the evaluator's game (`budget` None: enumeration fits).
    `on_partial(estimate)` receives the running permutation estimate after the first permutation, then after each
    pair (anytime results)."""
    if name == "window-games":
        return window_game_shapley(evaluator, value, target, ref, max_passes=budget)
    n = evaluator.n_players

    def evaluate(coalitions):
        return evaluator.evaluate(coalitions, lambda z: [value_fn(z, target, ref)], stage=stage, group=len(coalitions))[:, 0]

    if budget is None:
        return estimate_shapley(evaluate, n, None)
    if budget < 2 * (n + 1):
        raise InputError(f"A budget of {budget} is below one antithetic permutation pair ({2 * (n + 1)} coalitions for {n} players).",
                         f"Raise --budget to at least {2 * (n + 1)}, or use another --estimator.")
    ends = []

    def partial(values, std_error, pairs):
        if on_partial is not None and ends:
            on_partial({"values": values, "std_error": std_error if pairs >= MIN_REPLICATES else None, "v_empty": ends[0],
                        "v_full": ends[1], "evaluations": int(pairs * 2 * (n + 1)), "exact": False, "estimator": name,
                        "settings": {"antithetic": True, "pairs": pairs}, "replicates": pairs, "budget": budget, "stopped": "budget"})

    def evaluate_ends(coalitions):
        v = evaluate(coalitions)
        ends[:] = [float(v[0]), float(v[n])]
        return v

    return permutation_shapley(evaluate_ends, n, budget, seed, on_pair=partial, tolerance=tolerance)
