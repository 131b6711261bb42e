"""cohort.html: the cohort statistics with their plots embedded (PNG data URIs), one self-contained file.

Figures: uncertainty vs Dice per region with the least-squares line, agreement by Dice group, and the frequency of
each contrast at the top of the ranking. The page is `report/templates/cohort.html.j2` on the single-result report's
base template, filters and embedding (`report.html`), so every SegXAI page looks and is built alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..plots import _pyplot
from ..report.html import figure_uri, write_page


def figures(table: pd.DataFrame, threshold: float) -> list[dict]:
    """The three cohort plots as {title, uri} (PNG data URIs), one panel per region."""
    plt = _pyplot()
    regions = list(dict.fromkeys(table["region"]))
    archs = list(dict.fromkeys(table["architecture"]))
    colours = plt.get_cmap("tab10").colors
    out = []
    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.4), layout="tight", squeeze=False)
    for ax, region in zip(axes[0], regions):
        for a, arch in enumerate(archs):
            g = table[(table.region == region) & (table.architecture == arch)].dropna(subset=["dice", "uncertainty"])
            ax.scatter(g.dice, g.uncertainty, s=18, color=colours[a % 10], label=arch)
            if len(g) >= 2 and np.ptp(g.dice) > 0:
                slope, intercept = np.polyfit(g.dice, g.uncertainty, 1)
                xs = np.linspace(g.dice.min(), g.dice.max(), 2)
                ax.plot(xs, intercept + slope * xs, color=colours[a % 10], lw=1)
        ax.set(title=region, xlabel="Dice (mean over folds)")
    axes[0][0].set_ylabel("uncertainty (normalised rank variance)")
    axes[0][0].legend(fontsize=7)
    out.append({"title": "Uncertainty vs Dice (line: least-squares fit)", "uri": figure_uri(fig)})

    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.4), layout="tight", squeeze=False)
    for ax, region in zip(axes[0], regions):
        g = table[table.region == region].dropna(subset=["dice", "kendall_tau"])
        groups = [g[g.dice > threshold].kendall_tau, g[g.dice <= threshold].kendall_tau]
        ax.boxplot([list(x) for x in groups], showfliers=False)
        ax.set_xticks([1, 2], [f"Dice > {threshold}\n(n={len(groups[0])})", f"Dice ≤ {threshold}\n(n={len(groups[1])})"])
        rng = np.random.default_rng(0)
        for i, x in enumerate(groups):
            ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(x)), x, s=14, alpha=0.7)
        ax.set(title=region, ylim=(-1.05, 1.05))
    axes[0][0].set_ylabel("agreement with clinician (Kendall τ)")
    out.append({"title": "Agreement with the clinician by Dice group", "uri": figure_uri(fig)})

    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.0), layout="tight", squeeze=False)
    for ax, region in zip(axes[0], regions):
        counts = table[table.region == region].groupby(["top_contrast", "architecture"]).size().unstack(fill_value=0)
        counts.plot.bar(ax=ax, rot=0, legend=False)
        ax.set(title=region, xlabel="top-ranked contrast")
    axes[0][0].set_ylabel("cases")
    axes[0][0].legend(fontsize=7)
    out.append({"title": "Top-ranked contrast", "uri": figure_uri(fig)})
    return out


def write_html(path: Path, table: pd.DataFrame, doc: dict) -> Path:
    """cohort.html from the case table and cohort.json's document; per-fold and per-contrast columns stay in the CSV."""
    shown = table.drop(columns=[c for c in table.columns if c.startswith("dice_fold") or c.startswith("shapley_")])
    return write_page(
        path, "cohort.html.j2", title=f"SegXAI cohort: {doc['title']}", n_cases=doc["n_cases"], failures=doc["failures"],
        architectures=doc["architectures"], threshold=doc["dice_threshold"], n_resamples=doc["bootstrap_resamples"],
        seed=doc["seed"], statistics=doc["statistics"],
        figures=figures(table, doc["dice_threshold"]) if not table.empty else [],
        version=doc["provenance"]["versions"].get("segxai", "?"),
        table_html=shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="—", border=0, classes="cases"))
