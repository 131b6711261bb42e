"""Window-cache estimators: the per-window decomposition is exact, permutation sampling shares window runs."""

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet

from SegXAILib.errors import InputError
from SegXAILib.estimators import all_coalitions, exact_shapley
from SegXAILib.evaluator import Evaluator
from SegXAILib.models import LoadedModel
from SegXAILib.models.base import identity_prepare
from SegXAILib.targets import parse_target
from SegXAILib.values import VALUE_FUNCTIONS
from SegXAILib.window_games import permutation_shapley, window_game_cost, window_game_shapley
from SegXAILib.windows import WindowSpec


def _model() -> LoadedModel:
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=2, out_channels=3, init_filters=8, blocks_down=(1, 1), blocks_up=(1,)).eval()
    return LoadedModel("segresnet", "module", "", "", net, net, 2, None, {"bg": 0, "a": 1, "b": 2}, "softmax",
                       WindowSpec("monai", (16, 16, 16), 0.25, "gaussian", 0.125), identity_prepare())


@pytest.fixture(scope="module")
def game():
    """Seven players in blocks along the first axis of a 40×16×16 volume: each 16³ window holds two to four of them."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 40, 16, 16)).astype(np.float32)
    ids = np.full((40, 16, 16), -1)
    for p in range(7):
        ids[3 + 5 * p:8 + 5 * p, 2:14, 2:14] = p
    roi = np.zeros((40, 16, 16), bool)
    roi[4:36, 4:12, 4:12] = True
    ev = Evaluator(_model(), image, roi, ids[None], 7, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"), batch_size=4)
    target = parse_target("a", ev.model.labels, "softmax", 3)
    ref = target.hard(ev.full_logits())
    return ev, target, ref


def _exact(ev, target, ref, value):
    vf = VALUE_FUNCTIONS[value]
    v = ev.evaluate(all_coalitions(7), lambda z: [vf(z, target, ref)])[:, 0]
    return exact_shapley(v, 7), v


@pytest.mark.parametrize("value", ["mean-prob", "tp-rate"])
def test_window_games_equal_exact_enumeration(game, value):
    ev, target, ref = game
    passes, largest = window_game_cost(ev)
    assert len(ev.windows) > 1 and largest < 7 and passes < 2 ** 7 * len(ev.windows)
    got = window_game_shapley(ev, value, target, ref)
    phi, v = _exact(ev, target, ref, value)
    assert got["exact"] and np.abs(got["values"] - phi).max() <= 1e-6 * max(1.0, np.abs(phi).max())
    assert got["v_empty"] == pytest.approx(v[0], abs=1e-6) and got["v_full"] == pytest.approx(v[-1], abs=1e-6)


def test_window_games_refuse_a_ratio_value(game):
    ev, target, ref = game
    with pytest.raises(InputError, match="sum over voxels"):
        window_game_shapley(ev, "soft-dice", target, ref)


def test_permutation_sampling_is_efficient_covered_and_cheap(game):
    ev, target, ref = game
    vf = VALUE_FUNCTIONS["soft-dice"]
    phi, v = _exact(ev, target, ref, "soft-dice")
    ev.memo.clear()
    ev.memo_used = 0
    before = ev.stats.window_evaluations
    est = permutation_shapley(lambda c: ev.evaluate(c, lambda z: [vf(z, target, ref)], group=len(c))[:, 0], 7, 16 * 20, seed=3)
    # every permutation's marginals add up to v(N) - v(∅): efficiency holds exactly
    assert est["values"].sum() == pytest.approx(v[-1] - v[0], abs=1e-9)
    z = np.abs(est["values"] - phi) / est["std_error"]
    assert np.mean(z < 3) >= 6 / 7
    # a step re-runs only the windows holding the added player: at most Σ_t |P_t| runs per permutation
    per_permutation = sum(len(p) for p in ev.present)
    assert ev.stats.window_evaluations - before <= 2 * est["replicates"] * per_permutation


def _toy_game(n=6):
    """A nonlinear game in numpy (no network): exact Shapley values by enumeration."""
    w = np.linspace(0.2, 1.0, n)
    value = lambda z: np.sqrt(np.atleast_2d(z) @ w) + 0.5 * np.atleast_2d(z)[:, 0] * np.atleast_2d(z)[:, 1]
    return value, exact_shapley(value(all_coalitions(n)), n)


def test_permutation_standard_error_is_calibrated():
    value, phi = _toy_game()
    z = [(est["values"] - phi) / est["std_error"]
         for est in (permutation_shapley(value, 6, 12 * 14, seed=s) for s in range(300))]
    coverage = np.mean(np.abs(np.concatenate(z)) <= 1.96)
    assert 0.90 <= coverage <= 0.98


def test_permutation_stops_at_tolerance_and_reports_partials():
    value, phi = _toy_game()
    seen, maps = [], []
    est = permutation_shapley(value, 6, 10 ** 6, seed=0, tolerance=0.01,
                              on_pair=lambda v, se, k: (seen.append(k), maps.append((v.copy(), se.copy()))))
    assert est["stopped"] == "tolerance" and est["std_error"].max() <= 0.01
    # a first map after one permutation (half a pair, no standard error), then one per pair
    assert seen == [0.5] + list(range(1, est["replicates"] + 1)) and est["evaluations"] == est["replicates"] * 14
    first, first_se = maps[0]
    assert np.isnan(first_se).all() and first.sum() == pytest.approx(est["v_full"] - est["v_empty"])
    assert np.abs(est["values"] - phi).max() <= 4 * 0.01
