"""Cohort statistics of the agreement-and-uncertainty study, per architecture and region, all from scipy.

- agreement (Kendall τ with the clinician) in cases with Dice > threshold vs ≤ threshold: group means with
  bootstrap 95 % intervals, and the two-sided Mann–Whitney U test;
- Pearson and Spearman r between uncertainty (normalised mean rank variance) and Dice, with their p-values and
  paired bootstrap 95 % intervals;
- the distribution of the top-ranked contrast: counts, shares and Wilson 95 % intervals.
A figure that cannot be computed (too few cases, a constant column) is None with a `note` saying why.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def _clean(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def bootstrap_ci(statistic, data: tuple[np.ndarray, ...], seed: int, n_resamples: int, paired: bool = False) -> list | None:
    """BCa bootstrap interval of `statistic` (scipy.stats.bootstrap), or None when the data cannot carry one."""
    if len(data[0]) < 3 or all(np.ptp(d) == 0 for d in data):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(data, statistic, paired=paired, vectorized=False, confidence_level=CONFIDENCE,
                              n_resamples=n_resamples, method="BCa", rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return None if not (np.isfinite(low) and np.isfinite(high)) else [float(low), float(high)]


def summary(x: np.ndarray, seed: int, n_resamples: int) -> dict:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return {"n": int(len(x)), "mean": _clean(x.mean()) if len(x) else None, "median": _clean(np.median(x)) if len(x) else None,
            "ci95": bootstrap_ci(np.mean, (x,), seed, n_resamples)}


def agreement_by_dice(agree: np.ndarray, dice: np.ndarray, threshold: float, seed: int, n_resamples: int) -> dict:
    ok = np.isfinite(agree) & np.isfinite(dice)
    high, low = agree[ok & (dice > threshold)], agree[ok & (dice <= threshold)]
    out = {"threshold": threshold, "high_dice": summary(high, seed, n_resamples), "low_dice": summary(low, seed, n_resamples),
           "mann_whitney": None}
    if len(high) and len(low):
        mw = stats.mannwhitneyu(high, low, alternative="two-sided")
        out["mann_whitney"] = {"U": float(mw.statistic), "p": _clean(mw.pvalue), "alternative": "two-sided",
                               "difference_of_means": float(high.mean() - low.mean())}
    else:
        out["note"] = f"No case on one side of Dice {threshold}: no comparison."
    return out


def _r(kind):
    return (lambda a, b: stats.pearsonr(a, b).statistic) if kind == "pearson" else (lambda a, b: stats.spearmanr(a, b).statistic)


def correlation(x: np.ndarray, y: np.ndarray, seed: int, n_resamples: int) -> dict:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, float)[ok], np.asarray(y, float)[ok]
    out = {"n": int(len(x))}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, "pearson": None, "spearman": None,
                "note": "Fewer than 3 cases, or one of the two is constant across cases: no correlation."}
    for kind, test in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        res = test(x, y)
        out[kind] = {"r": float(res.statistic), "p": _clean(res.pvalue), "ci95": bootstrap_ci(_r(kind), (x, y), seed, n_resamples, paired=True)}
    fit = stats.linregress(y, x)   # uncertainty = intercept + slope · Dice, the line drawn in the scatter plot
    out["fit_uncertainty_on_dice"] = {"slope": float(fit.slope), "intercept": float(fit.intercept)}
    return out


def top_contrast(series: pd.Series) -> dict:
    counts = series.value_counts()
    n = int(counts.sum())
    return {name: {"count": int(k), "share": k / n,
                   "ci95": list(stats.binomtest(int(k), n).proportion_ci(CONFIDENCE, method="wilson"))} for name, k in counts.items()}


def cohort_statistics(table: pd.DataFrame, threshold: float = 0.6, seed: int = 0, n_resamples: int = 2000) -> dict:
    """{architecture: {region: statistics}} over the finished cases of the table."""
    out: dict = {}
    if table.empty:
        return out
    for (arch, region), group in table.groupby(["architecture", "region"], sort=False):
        dice, tau, unc = (group[c].to_numpy(dtype=float) for c in ("dice", "kendall_tau", "uncertainty"))
        out.setdefault(arch, {})[region] = {
            "n_cases": int(len(group)),
            "dice": summary(dice, seed, n_resamples),
            "agreement": summary(tau, seed, n_resamples),
            "uncertainty": summary(unc, seed, n_resamples),
            "agreement_by_dice": agreement_by_dice(tau, dice, threshold, seed, n_resamples),
            "uncertainty_vs_dice": correlation(unc, dice, seed, n_resamples),
            "top_contrast": top_contrast(group["top_contrast"]),
        }
    return out
