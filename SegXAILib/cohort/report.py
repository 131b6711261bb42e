"""cohort.html: the cohort statistics with their plots embedded (PNG data URIs), one self-contained file.

Figures: uncertainty vs Dice per region with the least-squares line, agreement by Dice group, and the frequency of
each contrast at the top of the ranking. Template and embedding are small and local on purpose; they are the
candidates to merge with the single-result report's helpers.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, select_autoescape

from ..plots import _pyplot

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SegXAI cohort: {{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%}.note{color:#666}</style></head><body>
<h1>SegXAI cohort: {{ title }}</h1>
<p>{{ n_cases }} cases finished{% if failures %}, <b>{{ failures|length }} failed</b>{% endif %}; {{ architectures|join(", ") }};
Dice threshold {{ threshold }}; bootstrap 95 % intervals (BCa, {{ n_resamples }} resamples, seed {{ seed }}).</p>
{% for arch, regions in statistics.items() %}<h2>{{ arch }}</h2>
<table><tr><th class="l">region</th><th>cases</th><th>Dice mean [95 % CI]</th><th>agreement τ, Dice &gt; {{ threshold }}</th>
<th>agreement τ, Dice ≤ {{ threshold }}</th><th>Mann–Whitney U (p)</th><th>Pearson r uncertainty–Dice [95 % CI] (p)</th>
<th>Spearman r [95 % CI] (p)</th><th class="l">top contrast</th></tr>
{% for region, s in regions.items() %}{% set g = s.agreement_by_dice %}{% set c = s.uncertainty_vs_dice %}<tr>
<td class="l">{{ region }}</td><td>{{ s.n_cases }}</td><td>{{ s.dice.mean|f }} {{ s.dice.ci95|ci }}</td>
<td>{{ g.high_dice.mean|f }} {{ g.high_dice.ci95|ci }} (n={{ g.high_dice.n }})</td>
<td>{{ g.low_dice.mean|f }} {{ g.low_dice.ci95|ci }} (n={{ g.low_dice.n }})</td>
<td>{% if g.mann_whitney %}{{ g.mann_whitney.U|f(1) }} ({{ g.mann_whitney.p|f(3) }}){% else %}<span class="note">{{ g.note }}</span>{% endif %}</td>
{% for k in ("pearson", "spearman") %}<td>{% if c[k] %}{{ c[k].r|f }} {{ c[k].ci95|ci }} ({{ c[k].p|f(3) }}){% else %}<span class="note">{{ c.note }}</span>{% endif %}</td>{% endfor %}
<td class="l">{% for name, t in s.top_contrast.items() %}{{ name }} {{ t.count }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% endfor %}
{% for fig in figures %}<h3>{{ fig.title }}</h3><img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.png }}">{% endfor %}
{% if failures %}<h2>Failed cases</h2><table><tr><th class="l">case</th><th class="l">architecture</th><th class="l">error</th></tr>
{% for f in failures %}<tr><td class="l">{{ f.case_id }}</td><td class="l">{{ f.architecture }}</td><td class="l">{{ f.error }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Cases</h2>{{ table_html|safe }}
<p class="note">Agreement: Kendall τ between the mean contrast Shapley values and the clinician's ranking. Uncertainty: mean
rank variance across folds on the normalised scale (0 = folds agree). Written by SegXAI {{ version }}.</p>
</body></html>
"""


def _png(fig) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figures(table: pd.DataFrame, threshold: float) -> list[dict]:
    plt = _pyplot()
    regions = list(dict.fromkeys(table["region"]))
    archs = list(dict.fromkeys(table["architecture"]))
    colours = plt.get_cmap("tab10").colors
    out = []
    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.4), dpi=100, squeeze=False)
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
    out.append({"title": "Uncertainty vs Dice (line: least-squares fit)", "png": _png(fig)})

    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.4), dpi=100, squeeze=False)
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
    out.append({"title": "Agreement with the clinician by Dice group", "png": _png(fig)})

    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.0), dpi=100, squeeze=False)
    for ax, region in zip(axes[0], regions):
        counts = table[table.region == region].groupby(["top_contrast", "architecture"]).size().unstack(fill_value=0)
        counts.plot.bar(ax=ax, rot=0, legend=False)
        ax.set(title=region, xlabel="top-ranked contrast")
    axes[0][0].set_ylabel("cases")
    axes[0][0].legend(fontsize=7)
    out.append({"title": "Top-ranked contrast", "png": _png(fig)})
    return out


def _f(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def write_html(path: Path, table: pd.DataFrame, doc: dict) -> Path:
    env = Environment(autoescape=select_autoescape(default=True))
    env.filters["f"] = _f
    env.filters["ci"] = lambda ci: "" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
    shown = table.drop(columns=[c for c in table.columns if c.startswith("dice_fold") or c.startswith("shapley_")])
    html = env.from_string(TEMPLATE).render(
        title=doc["title"], n_cases=doc["n_cases"], failures=doc["failures"], architectures=doc["architectures"],
        threshold=doc["dice_threshold"], n_resamples=doc["bootstrap_resamples"], seed=doc["seed"], statistics=doc["statistics"],
        figures=figures(table, doc["dice_threshold"]) if not table.empty else [], version=doc["provenance"]["versions"].get("segxai", "?"),
        table_html=shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0))
    path.write_text(html)
    return path
