"""Figures written beside results: the contrast bar chart (fold spread as error bars) and an axial case slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def contrast_bar_chart(results: list[dict], path: str | Path) -> Path:
    """One group of bars per target; a bar per contrast = mean Shapley value, error bar = spread across folds."""
    plt = _pyplot()
    names = [p["name"] for p in results[0]["players"]]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(results), 3.6), dpi=120)
    colours = plt.get_cmap("tab10").colors
    for c, name in enumerate(names):
        x = np.arange(len(results)) + (c - (len(names) - 1) / 2) * width
        values = [r["players"][c]["value"] for r in results]
        spread = [r["players"][c]["std"] for r in results]
        ax.bar(x, values, width, yerr=spread, capsize=3, label=name, color=colours[c % 10])
    labels = []
    for r in results:
        tau = r["agreement"].get("kendall_tau")
        labels.append(f"{r['target_label']}\nτ = {tau:+.2f}" if tau is not None else r["target_label"])
    ax.set_xticks(np.arange(len(results)), labels)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(f"Shapley value ({results[0]['value_function']})")
    ax.set_title(f"Contrast Shapley, mean ± s.d. over {len(results[0]['per_model'])} folds")
    ax.legend(frameon=False, ncol=len(names), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def case_slice(image: np.ndarray, labels: np.ndarray | None, roi: np.ndarray, prediction: np.ndarray | None, path: str | Path,
               title: str = "") -> Path:
    """The axial slice through the ROI centre: image in grey, ROI outline, segmentation in colour (arrays are (i, j, k))."""
    plt = _pyplot()
    k = int(np.round(np.argwhere(roi)[:, 2].mean()))
    panels = [("ground truth", labels), ("model (mean of folds)", prediction)]
    panels = [(name, seg) for name, seg in panels if seg is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), dpi=120, squeeze=False)
    for ax, (name, seg) in zip(axes[0], panels):
        ax.imshow(image[:, :, k].T, cmap="gray", origin="lower")
        shown = np.ma.masked_equal(seg[:, :, k].T.astype(float), 0)
        ax.imshow(shown, cmap="autumn" if name.startswith("model") else "viridis", alpha=0.55, origin="lower")
        ax.contour(roi[:, :, k].T.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
