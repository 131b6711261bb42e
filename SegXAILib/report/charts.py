"""matplotlib charts for the report: ranking with calibrated error bars only, colour legend, faithfulness curves."""

from __future__ import annotations

import numpy as np

from ..colormap import RED, BLUE, matplotlib_colormap
from ..plots import _pyplot
from .html import figure_uri


def ranking_chart(rows: list[dict], title: str, ylabel: str, max_bars: int = 30) -> str:
    """Bars of each player's value in ranking order, red for / blue against; an error bar only where the row has a
    calibrated one (`err_low`, `err_high`); the per-model (fold) values as dots where there are several."""
    plt = _pyplot()
    rows = rows[:max_bars]
    x = np.arange(len(rows))
    values = np.array([r["value"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * len(rows) + 1.5), 3.4))
    ax.bar(x, values, color=[tuple(RED) if v >= 0 else tuple(BLUE) for v in values], width=0.7)
    with_bars = [i for i, r in enumerate(rows) if r.get("err_low") is not None]
    if with_bars:
        low = np.array([values[i] - rows[i]["err_low"] for i in with_bars])
        high = np.array([rows[i]["err_high"] - values[i] for i in with_bars])
        ax.errorbar(x[with_bars], values[with_bars], yerr=[low, high], fmt="none", ecolor="black", capsize=3, linewidth=1,
                    label=rows[with_bars[0]]["err_label"])
    folds = [(i, m) for i, r in enumerate(rows) if len(r.get("per_model") or []) > 1 for m in r["per_model"]]
    if folds:
        ax.plot([i for i, _ in folds], [m for _, m in folds], "o", color="0.25", markersize=3, label="each model (fold)")
    if with_bars or folds:
        ax.legend(frameon=False, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, [r["name"] for r in rows], rotation=45 if len(rows) > 6 else 0, ha="right" if len(rows) > 6 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return figure_uri(fig)


def colour_legend(top: float, label: str) -> str:
    """The overlay's colour bar over the fixed symmetric range [-top, top]."""
    plt = _pyplot()
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(4.2, 0.75))
    bar = ColorbarBase(ax, cmap=matplotlib_colormap(), norm=Normalize(-top, top), orientation="horizontal")
    bar.set_ticks([-top, 0, top])
    bar.set_ticklabels([f"{-top:+.3g}", "0", f"{top:+.3g}"])
    bar.set_label(label, fontsize=8)
    fig.subplots_adjust(bottom=0.55, top=0.95, left=0.05, right=0.95)
    return figure_uri(fig)


def faithfulness_curves(evaluation: dict) -> str | None:
    """Deletion and insertion curves (most / least relevant first) from evaluation.json."""
    curves = [(k, evaluation[k]) for k in ("deletion_morf", "deletion_lerf", "insertion_morf", "insertion_lerf")
              if isinstance(evaluation.get(k), dict)]
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for key, curve in curves:
        ax = axes[0 if key.startswith("deletion") else 1]
        auc = curve.get("auc")
        label = ("most relevant first" if key.endswith("morf") else "least relevant first") + (f" (AUC {auc:.3f})" if auc is not None else "")
        ax.plot(curve["fraction"], curve["value"], "o-" if key.endswith("morf") else "s--", markersize=3, label=label)
    for ax, name in zip(axes, ("deletion", "insertion")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"fraction of {evaluation.get('units', 'units')} removed" if name == "deletion" else "fraction inserted")
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel(str(evaluation.get("value_function", "value")))
    fig.tight_layout()
    return figure_uri(fig)
