"""The cohort table: one row per case, architecture and region, read back from the ordinary result folders.

Agreement and rank uncertainty are recomputed from each result's per-fold Shapley values with agreement.py's own
functions, so a cohort always reports them on the current definitions (the normalised uncertainty in particular),
whatever version of SegXAI wrote the folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..agreement import agreement, clinician_ranking, rank_uncertainty
from ..result import INDEX_FILE, read_result
from .cases import CohortCase
from .execute import case_folder


def _results(folder: Path) -> list[dict]:
    if (folder / INDEX_FILE).exists():
        return [read_result(folder / name) for name in json.loads((folder / INDEX_FILE).read_text())["results"]]
    return [read_result(folder)]


def case_rows(result: dict, clinician: str | None = None) -> dict:
    """The per-case figures of one contrast-Shapley result (one region)."""
    names = [p["name"] for p in sorted(result["players"], key=lambda p: p["id"])]
    phi = np.array([m["values"] for m in result["per_model"]], dtype=float)
    mean = phi.mean(axis=0)
    unc = rank_uncertainty(phi)
    agree = agreement(mean, phi, names, clinician_ranking(result["target_label"], clinician), explicit=clinician is not None)
    dice = [m.get("dice_vs_ground_truth") for m in result["per_model"]]
    known = [d for d in dice if d is not None]
    ranking = [names[c] for c in np.argsort(-mean, kind="stable")]
    return {"region": result["target_label"], "dice": float(np.mean(known)) if known else np.nan,
            **{f"dice_fold{i}": (np.nan if d is None else d) for i, d in enumerate(dice)},
            "ranking": " > ".join(ranking), "top_contrast": ranking[0],
            "kendall_tau": np.nan if agree["kendall_tau"] is None else agree["kendall_tau"],
            "spearman_rho": np.nan if agree["spearman_rho"] is None else agree["spearman_rho"],
            "rank_variance_mean": unc["rank_variance_mean"], "uncertainty": unc["normalised"],
            "kendalls_w": np.nan if unc["kendalls_w"] is None else unc["kendalls_w"], "n_folds": len(phi),
            **{f"shapley_{n}": float(v) for n, v in zip(names, mean)}}


def cohort_table(cases: list[CohortCase], architectures: list[str], out: Path, clinician: str | None = None) -> pd.DataFrame:
    """Every finished case's rows (cases still missing are simply absent), covariates from the cases table last."""
    rows = []
    for case in cases:
        for arch in architectures:
            folder = case_folder(out, case.case_id, arch)
            if not folder.exists():
                continue
            for result in _results(folder):
                rows.append({"case_id": case.case_id, "architecture": arch, **case_rows(result, clinician), **case.covariates})
    return pd.DataFrame(rows)
