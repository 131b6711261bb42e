"""Cohort statistics: checked against scipy and against answers known by construction; the bootstrap interval's coverage.
The cohort page shows them, self-contained."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from SegXAILib.cohort.report import write_html
from SegXAILib.cohort.stats import agreement_by_dice, bootstrap_ci, cohort_statistics, correlation, top_contrast
from SegXAILib.cohort.table import case_rows


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, hits = 200, 0
    for t in range(trials):
        low, high = bootstrap_ci(np.mean, (rng.exponential(1.0, 30),), seed=t, n_resamples=500)
        hits += low <= 1.0 <= high
    # 95 % nominal; BCa on n = 30 skewed samples runs slightly low. 200 trials: binomial s.d. ≈ 1.5 points.
    assert 0.88 <= hits / trials <= 0.99


def test_agreement_groups_and_mann_whitney_match_scipy():
    dice = np.array([0.9, 0.8, 0.75, 0.61, 0.6, 0.4, 0.2, np.nan])
    tau = np.array([1.0, 0.67, 1.0, 0.33, 0.33, -0.33, 0.0, 1.0])
    out = agreement_by_dice(tau, dice, 0.6, seed=0, n_resamples=500)
    high, low = tau[:4], tau[4:7]                      # 0.6 itself is in the low group; the NaN Dice is left out
    assert out["high_dice"]["n"] == 4 and out["low_dice"]["n"] == 3
    assert out["high_dice"]["mean"] == pytest.approx(high.mean()) and out["low_dice"]["mean"] == pytest.approx(low.mean())
    ref = stats.mannwhitneyu(high, low, alternative="two-sided")
    assert out["mann_whitney"]["U"] == ref.statistic and out["mann_whitney"]["p"] == pytest.approx(ref.pvalue)
    # U counts the (high, low) pairs where high wins, ties a half: 0.33 vs 0.33 is the only tie
    assert ref.statistic == 11.5
    lo, hi = out["high_dice"]["ci95"]
    assert lo <= high.mean() <= hi
    one_sided = agreement_by_dice(tau[:7], np.array([0.9] * 4 + [0.1] * 3), 0.6, 0, 200)
    assert one_sided["mann_whitney"]["U"] == ref.statistic
    empty = agreement_by_dice(tau[:4], dice[:4], 0.6, 0, 200)
    assert empty["mann_whitney"] is None and "No case" in empty["note"]


def test_correlation_matches_scipy_and_known_answers():
    rng = np.random.default_rng(2)
    dice = rng.uniform(0.3, 0.95, 40)
    unc = 0.5 - 0.4 * dice + rng.normal(0, 0.05, 40)
    out = correlation(unc, dice, seed=0, n_resamples=500)
    assert out["pearson"]["r"] == pytest.approx(stats.pearsonr(unc, dice).statistic)
    assert out["spearman"]["r"] == pytest.approx(stats.spearmanr(unc, dice).statistic)
    assert out["pearson"]["p"] == pytest.approx(stats.pearsonr(unc, dice).pvalue)
    for kind in ("pearson", "spearman"):
        lo, hi = out[kind]["ci95"]
        assert lo <= out[kind]["r"] <= hi < 0
    assert out["fit_uncertainty_on_dice"]["slope"] == pytest.approx(stats.linregress(dice, unc).slope)
    monotone = correlation(np.exp(-dice), dice, 0, 200)
    assert monotone["spearman"]["r"] == pytest.approx(-1.0) and monotone["pearson"]["r"] < -0.99
    flat = correlation(np.zeros(10), dice[:10], 0, 200)
    assert flat["pearson"] is None and "constant" in flat["note"]


def test_top_contrast_counts_and_wilson_interval():
    out = top_contrast(pd.Series(["FLAIR"] * 7 + ["T2"] * 3))
    assert out["FLAIR"]["count"] == 7 and out["T2"]["share"] == pytest.approx(0.3)
    assert out["T2"]["ci95"] == pytest.approx([0.1078, 0.6032], abs=1e-4)   # Wilson interval for 3 / 10


def _result(region, per_model, dice):
    names = ["T1", "T1c", "T2", "FLAIR"]
    return {"target_label": region, "players": [{"id": i, "name": n} for i, n in enumerate(names)],
            "per_model": [{"values": v, "dice_vs_ground_truth": d} for v, d in zip(per_model, dice)]}


def test_case_rows_recompute_agreement_and_uncertainty_with_agreement_py():
    same = [[0.1, 0.2, 0.3, 0.4]] * 3                  # every fold: FLAIR > T2 > T1c > T1, the clinician's WT order
    row = case_rows(_result("WT", same, [0.8, 0.9, None]))
    assert row["kendall_tau"] == pytest.approx(1.0) and row["uncertainty"] == 0.0 and row["top_contrast"] == "FLAIR"
    assert row["dice"] == pytest.approx(0.85) and np.isnan(row["dice_fold2"])
    flipped = case_rows(_result("WT", [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], [0.5, 0.5]))
    assert flipped["uncertainty"] > 0 and flipped["rank_variance_mean"] == pytest.approx(1.25)


def _cohort_rows():
    return [{"case_id": f"c{i}", "architecture": a, "region": r, "dice": d, "kendall_tau": t, "uncertainty": u, "top_contrast": "FLAIR"}
            for a in ("unet", "swin") for r in ("WT", "ET")
            for i, (d, t, u) in enumerate(zip([0.9, 0.8, 0.7, 0.5, 0.3], [1.0, 0.67, 0.67, 0.0, -0.33], [0.0, 0.1, 0.2, 0.3, 0.5]))]


def test_cohort_statistics_per_architecture_and_region():
    out = cohort_statistics(pd.DataFrame(_cohort_rows()), threshold=0.6, n_resamples=200)
    assert set(out) == {"unet", "swin"} and set(out["unet"]) == {"WT", "ET"}
    s = out["unet"]["WT"]
    assert s["n_cases"] == 5 and s["top_contrast"]["FLAIR"]["count"] == 5
    assert s["uncertainty_vs_dice"]["spearman"]["r"] == pytest.approx(-1.0)
    assert s["agreement_by_dice"]["high_dice"]["n"] == 3 and s["agreement_by_dice"]["mann_whitney"]["U"] == 6.0


def test_cohort_page_shows_the_statistics_on_the_shared_report_base(tmp_path):
    table = pd.DataFrame(_cohort_rows())
    doc = {"title": "demo", "n_cases": 5, "architectures": ["unet", "swin"], "dice_threshold": 0.6, "bootstrap_resamples": 200,
           "seed": 0, "statistics": cohort_statistics(table, threshold=0.6, n_resamples=200),
           "failures": [{"case_id": "bad", "architecture": "unet", "error": "no voxel <inside> the ROI"}],
           "provenance": {"versions": {"segxai": "9.9"}}}
    html = write_html(tmp_path / "cohort.html", table, doc).read_text()
    assert "<title>SegXAI cohort: demo</title>" in html and "This page is self-contained" in html   # the base template
    assert not re.search(r"<script|<link|@import|url\(", html)
    assert [src[:22] for src in re.findall(r'src="([^"]*)"', html)] == ["data:image/png;base64,"] * 3
    assert "<h2>unet</h2>" in html and "<h2>swin</h2>" in html and html.count("FLAIR 5") == 4       # every arch x region row
    s = doc["statistics"]["unet"]["WT"]
    low, high = s["dice"]["ci95"]
    assert f"0.64 [{low:.3g}, {high:.3g}]" in html and "6 (" in html and "(n=3)" in html and "(n=2)" in html
    assert "no voxel &lt;inside&gt; the ROI" in html and "SegXAI 9.9" in html                     # escaped, provenance
