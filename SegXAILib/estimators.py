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
