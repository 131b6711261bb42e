"""Shapley estimators over a game given as values of coalitions.

Coalitions are bitmasks: bit p set = player p present. `all_coalitions(n)` enumerates the 2^n coalitions as a
bool matrix whose row index *is* the bitmask, so `exact_shapley` reads v(S) and v(S ∪ {i}) by integer index.
"""

from __future__ import annotations

from math import factorial

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


APPROXIMATORS = ("kernelshap", "unbiased-kernelshap", "svarm", "permutation", "stratified", "owen", "kadd-shap")


class RecordingGame:
    """Wraps v(coalitions) so every coalition is evaluated once (cached by bitmask) and recorded for error estimates."""

    def __init__(self, value_fn, n: int):
        self.value_fn, self.n = value_fn, n
        self.cache: dict[bytes, float] = {}

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        keys = [np.packbits(c).tobytes() for c in coalitions]
        todo = {k: c for k, c in zip(keys, coalitions) if k not in self.cache}
        if todo:
            values = self.value_fn(np.array(list(todo.values())))
            self.cache.update(zip(todo, np.asarray(values, dtype=np.float64)))
        return np.array([self.cache[k] for k in keys])

    def recorded(self) -> tuple[np.ndarray, np.ndarray]:
        keys = list(self.cache)
        z = np.unpackbits(np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), -1), axis=1)[:, :self.n].astype(bool)
        return z, np.array([self.cache[k] for k in keys])


def _approximator(method: str, n: int, seed: int):
    import shapiq

    makers = {"kernelshap": lambda: shapiq.KernelSHAP(n, random_state=seed),
              "unbiased-kernelshap": lambda: shapiq.UnbiasedKernelSHAP(n, random_state=seed),
              "svarm": lambda: shapiq.SVARM(n, random_state=seed),
              "permutation": lambda: shapiq.PermutationSamplingSV(n, random_state=seed),
              "stratified": lambda: shapiq.StratifiedSamplingSV(n, random_state=seed),
              "owen": lambda: shapiq.OwenSamplingSV(n, random_state=seed),
              "kadd-shap": lambda: shapiq.kADDSHAP(n, random_state=seed)}
    if method not in makers:
        raise ValueError(method)
    return makers[method]()


def kernel_regression(z: np.ndarray, v: np.ndarray, v_empty: float, v_full: float) -> np.ndarray:
    """Shapley-kernel weighted least squares with the efficiency constraint (what KernelSHAP solves)."""
    from math import comb

    n = z.shape[1]
    sizes = z.sum(1)
    keep = (sizes > 0) & (sizes < n)
    z, v, sizes = z[keep].astype(float), v[keep], sizes[keep]
    by_size = np.array([0.0] + [(n - 1) / (comb(n, s) * s * (n - s)) for s in range(1, n)] + [0.0])
    w = by_size[sizes]
    delta = v_full - v_empty
    a = z[:, :-1] - z[:, -1:]
    b = v - v_empty - z[:, -1] * delta
    sw = np.sqrt(w)
    head = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
    return np.append(head, delta - head.sum())


def bootstrap_std_error(z: np.ndarray, v: np.ndarray, v_empty: float, v_full: float, seed: int, rounds: int = 200) -> np.ndarray:
    """Standard error of each player's value: bootstrap over the evaluated coalitions of the kernel regression."""
    rng = np.random.default_rng(seed)
    inner = np.flatnonzero((z.sum(1) > 0) & (z.sum(1) < z.shape[1]))
    if inner.size < 2:
        return np.full(z.shape[1], np.nan)
    draws = [kernel_regression(z[s], v[s], v_empty, v_full) for s in (rng.choice(inner, inner.size) for _ in range(rounds))]
    return np.std(draws, axis=0, ddof=1)


def estimate_shapley(value_fn, n: int, budget: int | None, method: str = "kernelshap", seed: int = 0) -> dict:
    """Shapley values of a game on n players: exact when 2^n fits the budget, else a shapiq approximator.

    Returns values, std_error (0 for exact), v_empty, v_full, the number of distinct coalitions evaluated and
    whether the values are exact.
    """
    game = RecordingGame(value_fn, n)
    if n <= EXACT_LIMIT and (budget is None or budget >= 2 ** n):
        coalitions = all_coalitions(n)
        values = game(coalitions)
        return {"values": exact_shapley(values, n), "std_error": np.zeros(n), "v_empty": float(values[0]),
                "v_full": float(values[-1]), "evaluations": len(coalitions), "exact": True, "estimator": "exact"}
    ends = game(np.array([np.zeros(n, bool), np.ones(n, bool)]))
    result = _approximator(method, n, seed).approximate(int(budget), game)
    values = np.array([result[(i,)] for i in range(n)])
    z, v = game.recorded()
    return {"values": values, "std_error": bootstrap_std_error(z, v, ends[0], ends[1], seed), "v_empty": float(ends[0]),
            "v_full": float(ends[1]), "evaluations": len(game.cache), "exact": False, "estimator": method}
