"""Estimators: standard errors that are calibrated (φ̂ ± 1.96·SE covers the exact value ~95 % of the time),
tolerance as a stopping rule under the budget, and anytime estimates that do not change the final one.

Games with exactly known Shapley values, no models: a table game on 8 players (random values on every coalition,
enumerated exactly) and an analytic game on 20 players made of unanimity terms (interactions up to order 4),
whose Shapley values are the terms' weights shared equally among their members.
"""

import numpy as np
import pytest

from SegXAILib.estimators import (APPROXIMATOR_SPECS, MIN_REPLICATES, all_coalitions, estimate_shapley, exact_shapley)

CALIBRATED = [name for name, (_, _, calibrated) in APPROXIMATOR_SPECS.items() if calibrated]
SEEDS = range(50)


def table_game(n: int = 8, seed: int = 1):
    rng = np.random.default_rng(seed)
    z = all_coalitions(n)
    values = z @ rng.normal(size=n) + 0.5 * rng.normal(size=len(z))   # additive part plus interactions of every order
    return (lambda c: values[np.asarray(c, bool) @ (1 << np.arange(n))]), exact_shapley(values, n)


def unanimity_game(n: int = 20, seed: int = 1, terms: int = 30):
    rng = np.random.default_rng(seed)
    sets = [rng.choice(n, size=rng.integers(1, 5), replace=False) for _ in range(terms)]
    weights = rng.normal(size=terms)
    phi = np.zeros(n)
    for members, w in zip(sets, weights):
        phi[members] += w / len(members)
    return (lambda c: sum(np.asarray(c, bool)[:, m].all(1) * w for m, w in zip(sets, weights)).astype(float)), phi


GAMES = {"table, 8 players": (table_game, 8, 128), "unanimity, 20 players": (unanimity_game, 20, 400)}


def coverage(name: str, game_name: str) -> float:
    make, n, budget = GAMES[game_name]
    game, phi = make()
    hits = []
    for seed in SEEDS:
        est = estimate_shapley(game, n, budget, name, seed)
        assert est["std_error"] is not None and est["replicates"] >= MIN_REPLICATES and est["evaluations"] <= budget
        hits.append(np.abs(est["values"] - phi) <= 1.96 * est["std_error"])
    return float(np.mean(hits))


@pytest.mark.parametrize("game_name", list(GAMES))
@pytest.mark.parametrize("name", CALIBRATED)
def test_error_bars_are_calibrated(name, game_name):
    assert 0.88 <= coverage(name, game_name) <= 0.99


@pytest.mark.parametrize("name", [n for n in APPROXIMATOR_SPECS if n not in CALIBRATED])
def test_uncalibrated_estimators_report_no_error(name):
    game, _ = unanimity_game()
    assert estimate_shapley(game, 20, 400, name, 0)["std_error"] is None


def test_exact_has_zero_error_and_too_few_replicates_none():
    game, phi = table_game()
    exact = estimate_shapley(game, 8, None)
    assert exact["exact"] and np.allclose(exact["values"], phi) and np.all(exact["std_error"] == 0)
    game, _ = unanimity_game()
    small = estimate_shapley(game, 20, 100, seed=0)   # room for fewer than MIN_REPLICATES replicates
    assert small["replicates"] < MIN_REPLICATES and small["std_error"] is None and small["evaluations"] <= 100


def test_tolerance_stops_early_within_the_budget():
    game, phi = unanimity_game()
    full = estimate_shapley(game, 20, 4000, seed=3)
    loose = estimate_shapley(game, 20, 4000, seed=3, tolerance=0.08)
    assert full["stopped"] == "budget" and loose["stopped"] == "tolerance"
    assert loose["evaluations"] < full["evaluations"] <= 4000
    assert loose["std_error"].max() <= 0.08 and full["std_error"].max() < loose["std_error"].max()
    never = estimate_shapley(game, 20, 400, seed=3, tolerance=1e-9)   # unreachable: the budget is the bound
    assert never["stopped"] == "budget" and never["evaluations"] <= 400


def test_anytime_estimates_leave_the_final_one_unchanged():
    game, phi = unanimity_game()
    seen = []
    streamed = estimate_shapley(game, 20, 600, seed=5, on_partial=seen.append)
    quiet = estimate_shapley(game, 20, 600, seed=5)
    assert np.array_equal(streamed["values"], quiet["values"]) and np.array_equal(streamed["std_error"], quiet["std_error"])
    assert len(seen) == streamed["replicates"] - 1 and [p["replicates"] for p in seen] == list(range(1, len(seen) + 1))
    assert all(p["evaluations"] <= 600 for p in seen) and seen[0]["std_error"] is None
    errors = [np.linalg.norm(p["values"] - phi) for p in seen] + [np.linalg.norm(streamed["values"] - phi)]
    assert errors[-1] < errors[0]   # refines
