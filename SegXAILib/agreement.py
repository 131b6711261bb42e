"""Rankings of players across models (folds), their agreement with a clinician's ranking, and their uncertainty.

Definitions (Ren et al. 2025, made exact here):
- rank: per model, players ranked by Shapley value, 1 = most important; ties share the mean rank.
- mean_rank, rank_variance: mean and population variance (ddof = 0) of a player's rank across models.
- uncertainty: the mean rank variance over players; `normalised` divides by (P² − 1) / 12, the largest mean
  (ddof = 0) variance P ranks can have: each fold's ranks are a permutation of 1..P, so the variances add up to
  Σr² − Σ mean_rank² ≤ P(P+1)(2P+1)/6 − P((P+1)/2)² = P(P² − 1)/12, reached when every mean rank is (P+1)/2
  (e.g. two folds in reverse order). 0 = every fold ranks alike, 1 = folds as far apart as possible (an odd number
  of folds cannot always reach 1: three folds of two players top out at 8/9);
  `kendalls_w` is Kendall's coefficient of concordance of the fold rankings (1 = identical; None for one model).
- agreement: Kendall's τ_b (and Spearman's ρ) between the mean Shapley values and the clinician's priority
  (P for the first-ranked contrast down to 1), over the contrasts the clinician ranked; `per_model_tau` the
  same per fold. +1 = the model ranks the contrasts as the clinician does, −1 = the reverse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from .errors import InputError

DEFAULT_TABLE = Path(__file__).parent / "Resources" / "clinician_rankings.json"


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (1 = largest value) along the last axis, ties averaged."""
    return np.apply_along_axis(lambda v: stats.rankdata(-v, method="average"), -1, np.atleast_2d(values))


def rank_uncertainty(per_model: np.ndarray) -> dict:
    """per_model: (M, P) Shapley values. Mean rank, rank variance per player and the summary figures."""
    r = ranks(per_model)
    m, p = r.shape
    variance = r.var(axis=0)
    mean_var = float(variance.mean())
    max_var = (p ** 2 - 1) / 12 if p > 1 else 1.0   # see the module docstring; ddof = 0 as `variance`
    w = None
    if m > 1 and p > 1:
        totals = r.sum(axis=0)
        w = float(12 * ((totals - totals.mean()) ** 2).sum() / (m ** 2 * (p ** 3 - p)))
    return {"ranks": r.tolist(), "mean_rank": r.mean(axis=0).tolist(), "rank_variance": variance.tolist(),
            "rank_variance_mean": mean_var, "normalised": mean_var / max_var, "kendalls_w": w, "n_models": m}


def _table(path: str | Path | None) -> dict:
    """The clinician ranking table, checked: {"rankings": {target: [contrast, ...]}, "aliases": {name: [alias, ...]}}."""
    source = DEFAULT_TABLE if path is None else Path(path)
    fix = "Give a JSON file shaped like SegXAILib/Resources/clinician_rankings.json: {\"rankings\": {\"WT\": [\"FLAIR\", \"T2\", ...]}}."
    try:
        table = json.loads(source.read_text())
    except OSError as exc:
        raise InputError(f"Cannot read the clinician ranking file {source}: {exc.strerror or exc}.", fix) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"The clinician ranking file {source} is not valid JSON: {' '.join(str(exc).split())[:200]}.", fix) from exc
    rankings = table.get("rankings") if isinstance(table, dict) else None
    aliases = table.get("aliases", {}) if isinstance(table, dict) else None
    if not isinstance(rankings, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in rankings.values()):
        raise InputError(f"The clinician ranking file {source} has no \"rankings\" object mapping each target to a list of contrast names.", fix)
    if not isinstance(aliases, dict) or not all(isinstance(v, list) for v in aliases.values()):
        raise InputError(f"The clinician ranking file {source} has an \"aliases\" entry that is not an object of name lists.", fix)
    return table


def canonical(name: str, aliases: dict[str, list[str]]) -> str:
    for key, names in aliases.items():
        if name == key or name in names or name.lower() in (n.lower() for n in names):
            return key
    return name


def clinician_ranking(target: str, spec: str | None = None) -> list[str] | None:
    """The clinician ranking for a target: from `spec` ("FLAIR,T2,T1c,T1", or a JSON file), else the default table."""
    if spec and not spec.lower().endswith(".json"):
        return [s.strip() for s in spec.split(",") if s.strip()]
    table = _table(spec)
    return table["rankings"].get(str(target)) or table["rankings"].get(str(target).upper())


def _none(ranking, note: str) -> dict:
    return {"clinician_ranking": ranking, "kendall_tau": None, "spearman_rho": None, "per_model_tau": None, "note": note}


def agreement(mean_values: np.ndarray, per_model: np.ndarray, channel_names: list[str], ranking: list[str] | None,
              explicit: bool = False) -> dict:
    """Kendall τ_b / Spearman ρ between model and clinician, or the reason there is none.

    A ranking the user gave (`explicit`) must name the model's channels; the default table simply does not apply
    to models whose channels it does not know (e.g. CT).
    """
    if not ranking:
        return _none(None, "No clinician ranking for this target; pass --clinician-ranking.")
    aliases = _table(None)["aliases"]
    canon = [canonical(n, aliases) for n in channel_names]
    wanted = [canonical(n, aliases) for n in ranking]
    missing = [n for n in wanted if n not in canon]
    if missing and not explicit:
        return _none(None, f"The default clinician ranking names {ranking}, not this model's channels {channel_names}; pass --clinician-ranking.")
    if missing:
        raise InputError(f"The clinician ranking names {missing}, which the model's channels {channel_names} do not include.",
                         "Name the model's channels in the ranking (aliases such as T1ce/T1Gd for T1c are understood), or set --channels.")
    index = [canon.index(n) for n in wanted]
    priority = np.arange(len(index), 0, -1, dtype=float)
    if len(index) < 2:
        return _none(ranking, "Agreement needs at least two ranked contrasts.")

    def tau(values: np.ndarray) -> float | None:
        t = stats.kendalltau(values[index], priority).statistic
        return None if np.isnan(t) else float(t)

    rho = stats.spearmanr(mean_values[index], priority).statistic
    return {"clinician_ranking": ranking, "kendall_tau": tau(mean_values),
            "spearman_rho": None if np.isnan(rho) else float(rho),
            "per_model_tau": [tau(v) for v in per_model]}
