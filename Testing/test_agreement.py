"""The exact definitions of rank uncertainty and clinician agreement (see SegXAILib/agreement.py)."""

import itertools

import numpy as np
import pytest

from SegXAILib.agreement import agreement, clinician_ranking, rank_uncertainty, ranks
from SegXAILib.errors import InputError
from SegXAILib.estimators import all_coalitions, exact_shapley


def test_ranks_and_uncertainty_extremes():
    assert ranks(np.array([0.1, 0.5, 0.5, -1])).tolist() == [[3.0, 1.5, 1.5, 4.0]]
    same = rank_uncertainty(np.array([[3.0, 2, 1], [30, 20, 10]]))
    assert same["rank_variance_mean"] == 0 and same["kendalls_w"] == 1.0
    reversed_ = rank_uncertainty(np.array([[2.0, 1.0], [1.0, 2.0]]))
    assert reversed_["normalised"] == 1.0 and reversed_["kendalls_w"] == 0.0


def test_agreement_with_aliases_and_default_table():
    names = ["T1", "T1ce", "T2", "FLAIR"]
    values = np.array([0.01, 0.05, 0.2, 0.4])  # FLAIR > T2 > T1ce > T1: the default WT ranking
    result = agreement(values, values[None], names, clinician_ranking("WT"))
    assert result["kendall_tau"] == 1.0 and result["spearman_rho"] == 1.0 and result["per_model_tau"] == [1.0]
    assert agreement(-values, -values[None], names, clinician_ranking("WT"))["kendall_tau"] == -1.0
    assert clinician_ranking("ET")[0] == "T1c" and clinician_ranking("x", "B,A") == ["B", "A"]
    with pytest.raises(InputError, match="do not include"):
        agreement(values, values[None], names, ["DWI", "T1"], explicit=True)
    assert agreement(values, values[None], ["CT"], clinician_ranking("WT"))["kendall_tau"] is None


def test_exact_shapley_known_game():
    # v(S) = |S ∩ {0, 1}|² on 3 players: φ0 = φ1 = 2, φ2 = 0 and Σφ = v(N) − v(∅) = 4
    coalitions = all_coalitions(3)
    v = (coalitions[:, :2].sum(1) ** 2).astype(float)
    assert np.allclose(exact_shapley(v, 3), [2, 2, 0])
    assert np.allclose(exact_shapley(np.stack([v, 2 * v], 1), 3)[:, 1], [4, 4, 0])


@pytest.mark.parametrize("p", [2, 3, 4, 5])
def test_normalised_uncertainty_spans_exactly_zero_to_one(p):
    """Every ranking of the other folds against the first, for two folds and (P ≤ 4) three: the normalised
    uncertainty stays in [0, 1], reaches 1 (the normaliser is the true maximum, not ((P − 1) / 2)², which capped
    4 contrasts at 0.556) and 0 when the folds agree. Fixing the first fold loses nothing: renaming the players
    leaves the mean rank variance as it is."""
    perms = np.array(list(itertools.permutations(range(p))), float)   # values whose ranks are each permutation
    folds = [(0, i) for i in range(len(perms))]
    if p <= 4:
        folds += [(0, i, j) for i, j in itertools.product(range(len(perms)), repeat=2)]
    results = [rank_uncertainty(perms[list(f)]) for f in folds]
    scores = [r["normalised"] for r in results]
    assert min(scores) == 0.0 and max(scores) == pytest.approx(1.0) and max(scores) <= 1.0 + 1e-12
    # the brute-force maximum of the raw mean (ddof = 0) rank variance is the normaliser itself
    assert max(r["rank_variance_mean"] for r in results) == pytest.approx((p ** 2 - 1) / 12)
