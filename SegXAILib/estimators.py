"""Shapley estimators over a game given as values of coalitions, with standard errors that mean what they say.

Coalitions are bitmasks: bit p set = player p present. `all_coalitions(n)` enumerates the 2^n coalitions as a
bool matrix whose row index *is* the bitmask, so `exact_shapley` reads v(S) and v(S ∪ {i}) by integer index.

When 2^n does not fit the budget, `estimate_shapley` runs a shapiq approximator as R independent *replicates*
(each with its own seed and a share of the budget). The reported value is their mean and its standard error is
sd/√R: the uncertainty of the very number reported, whatever the estimator (a bootstrap of some other estimator
would not be). Coalitions are evaluated once (`RecordingGame`), so the coalitions replicates share (the empty and
full coalitions, shapiq's border sizes) are paid once and the budget — an upper bound on distinct coalitions —
buys more replicates. Replicates also give anytime results (a map after the first one) and a stopping rule
(`tolerance`). Testing/test_estimators.py checks that φ̂ ± 1.96·SE covers the exact value about 95 % of the time.
"""

from __future__ import annotations

from math import factorial
from typing import Callable

import numpy as np

EXACT_LIMIT = 16  # 2^16 coalitions: beyond that, enumeration is for approximators


def all_coalitions(n: int) -> np.ndarray:
    """(2^n, n) bool: row m holds the players of bitmask m."""
    if n > EXACT_LIMIT:
        raise ValueError(f"exact enumeration of {n} players is 2^{n} coalitions; use an approximator")
    masks = np.arange(2 ** n)
    return ((masks[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_shapley(values: np.ndarray, n: int) -> np.ndarray:
    """Shapley values from v over all bitmask-indexed coalitions; `values` is (2^n,) or (2^n, T) for T games at once.

    φ_i = Σ_{S ⊆ N∖{i}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S)).
    """
    values = np.asarray(values, dtype=np.float64)
    masks = np.arange(2 ** n)
    sizes = np.array([bin(m).count("1") for m in masks])
    weight = np.array([factorial(s) * factorial(n - s - 1) / factorial(n) if s < n else 0.0 for s in sizes])
    phi = np.zeros((n,) + values.shape[1:])
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        w = weight[without].reshape((-1,) + (1,) * (values.ndim - 1))
        phi[i] = (w * (values[without | (1 << i)] - values[without])).sum(axis=0)
    return phi


def _leverage(n: int, seed: int):
    """Paired KernelSHAP sampling coalition sizes uniformly (leverage-score weights, Musco & Witter)."""
    import shapiq

    return shapiq.KernelSHAP(n, pairing_trick=True, sampling_weights=np.ones(n + 1), random_state=seed)


def _shapiq(name: str, **settings):
    def make(n: int, seed: int):
        import shapiq

        return getattr(shapiq, name)(n, random_state=seed, **settings)
    return make


# name -> (maker(n, seed), settings recorded in results, whether its replicate standard error is calibrated).
# A new estimator plugs in here: maker(n, seed) returns an object whose approximate(budget, game) evaluates at most
# `budget` coalitions through `game` ((k, n) bool -> (k,) values) and returns a mapping (i,) -> φ_i. Mark it
# calibrated only once Testing/test_estimators.py (which runs every calibrated entry) passes for it.
APPROXIMATOR_SPECS: dict[str, tuple[Callable, dict, bool]] = {
    "leverage-kernelshap": (_leverage, {"shapiq": "KernelSHAP", "pairing_trick": True, "sampling_weights": "uniform over sizes"}, True),
    "kernelshap": (_shapiq("KernelSHAP"), {"shapiq": "KernelSHAP"}, True),
    "unbiased-kernelshap": (_shapiq("UnbiasedKernelSHAP"), {"shapiq": "UnbiasedKernelSHAP"}, True),
    "svarm": (_shapiq("SVARM"), {"shapiq": "SVARM"}, False),   # replicates on small budgets are biased (coverage 30-57 %)
    "permutation": (_shapiq("PermutationSamplingSV"), {"shapiq": "PermutationSamplingSV"}, True),
    "stratified": (_shapiq("StratifiedSamplingSV"), {"shapiq": "StratifiedSamplingSV"}, False),  # coverage 5-9 %: biased replicates
    "owen": (_shapiq("OwenSamplingSV"), {"shapiq": "OwenSamplingSV"}, False),  # coverage 0-5 %: biased replicates
    "kadd-shap": (_shapiq("kADDSHAP"), {"shapiq": "kADDSHAP"}, False),  # fits a 2-additive game: biased, no error bar
}
APPROXIMATORS = tuple(APPROXIMATOR_SPECS)
DEFAULT_ESTIMATOR = "permutation"   # lowest error at equal budget among the calibrated ones (report-i12a, docs/methods.md)
REPLICATES = 8          # budget split into this many replicates (more when shared coalitions leave room)
MIN_REPLICATES = 8      # a standard error is reported from this many replicates on (fewer: too noisy to be calibrated)
MAX_REPLICATES = 256    # replicates that find every coalition already evaluated cost nothing: stop somewhere


class RecordingGame:
    """Wraps v(coalitions) so every coalition is evaluated once (cached by bitmask); len() = distinct coalitions."""

    def __init__(self, value_fn, n: int):
        self.value_fn, self.n = value_fn, n
        self.cache: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self.cache)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        keys = [np.packbits(c).tobytes() for c in coalitions]
        todo = {k: c for k, c in zip(keys, coalitions) if k not in self.cache}
        if todo:
            values = self.value_fn(np.array(list(todo.values())))
            self.cache.update(zip(todo, np.asarray(values, dtype=np.float64)))
        return np.array([self.cache[k] for k in keys])


ESTIMATE_KEYS = ("values", "std_error", "v_empty", "v_full", "evaluations", "exact", "estimator", "settings",
                 "replicates", "budget", "stopped")
"""What `estimate_shapley` returns (a dict): values (n,); std_error (n,), 0 when exact, None when the estimator cannot
give a calibrated one (too few replicates, or a biased estimator); v_empty, v_full; evaluations = distinct coalitions
(the model's real cost); exact; estimator and its settings; replicates; budget; stopped = exact | budget | tolerance."""


def replicate_budget(n: int, budget: int, tolerance: float | None = None) -> int:
    """Coalitions per replicate: the budget (less the empty and full coalitions, evaluated first) shared by
    REPLICATES — by 4 × REPLICATES with a tolerance, so that a run can stop well before the budget — but not fewer
    than 2n + 2, below which a regression on n players is ill-posed, unless the whole budget is smaller."""
    share = REPLICATES * (1 if tolerance is None else 4)
    return min(max((budget - 2) // share, 2 * n + 2), budget - 2)


def estimate_shapley(value_fn, n: int, budget: int | None, method: str = DEFAULT_ESTIMATOR, seed: int = 0,
                     tolerance: float | None = None, on_partial: Callable[[dict], None] | None = None) -> dict:
    """Shapley values of a game on n players: exact when 2^n fits the budget, else replicates of an approximator.

    value_fn: (k, n) bool coalitions -> (k,) values. budget: an upper bound on distinct coalitions (None: exact).
    Replicates run until the next one might not fit the budget, or, with `tolerance`, until every player's
    standard error is at most `tolerance` (after MIN_REPLICATES). `on_partial` receives the estimate so far after
    each replicate (anytime results); it does not change what is computed, so the final estimate is the same
    with or without it.
    """
    if method not in APPROXIMATOR_SPECS:
        raise ValueError(f"unknown estimator {method!r}; choose one of {', '.join(APPROXIMATORS)}")
    game = RecordingGame(value_fn, n)
    if n <= EXACT_LIMIT and (budget is None or budget >= 2 ** n):
        coalitions = all_coalitions(n)
        values = game(coalitions)
        return _estimate(exact_shapley(values, n), np.zeros(n), values[[0, -1]], len(coalitions), True, "exact", {}, 1, budget, "exact")
    if budget is None:
        raise ValueError(f"{n} players are too many to enumerate; give a budget")
    make, settings, calibrated = APPROXIMATOR_SPECS[method]
    per = replicate_budget(n, budget, tolerance)
    ends = game(np.array([np.zeros(n, bool), np.ones(n, bool)]))
    seeds = np.random.SeedSequence(seed).generate_state(MAX_REPLICATES)
    draws: list[np.ndarray] = []
    stopped = "budget"
    while len(draws) < len(seeds) and (not draws or len(game) + per <= budget):
        result = make(n, int(seeds[len(draws)])).approximate(per, game)
        draws.append(np.array([result[(i,)] for i in range(n)]))
        estimate = _summary(draws, ends, len(game), method, {**settings, "replicate_budget": per}, calibrated, budget)
        if tolerance is not None and estimate["std_error"] is not None and estimate["std_error"].max() <= tolerance:
            stopped = "tolerance"
            break
        if on_partial is not None and len(game) + per <= budget:
            on_partial(estimate)
    return {**estimate, "stopped": stopped}


def _summary(draws: list[np.ndarray], ends: np.ndarray, evaluations: int, method: str, settings: dict,
             calibrated: bool, budget: int) -> dict:
    """The mean of the replicates and its standard error sd/√R (None below MIN_REPLICATES or when not calibrated)."""
    stack = np.stack(draws)
    r = len(draws)
    se = stack.std(0, ddof=1) / np.sqrt(r) if calibrated and r >= MIN_REPLICATES else None
    return _estimate(stack.mean(0), se, ends, evaluations, False, method, settings, r, budget, "budget")


def _estimate(values, std_error, ends, *rest) -> dict:
    return dict(zip(ESTIMATE_KEYS, (values, std_error, float(ends[0]), float(ends[1]), *rest)))
