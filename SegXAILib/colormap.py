"""The attribution colour map and display range, shared by every front end (Slicer panel, HTML report, web viewer).

Signed attribution is shown blue (against the target) - white - red (for it) over a symmetric, fixed range
[-top, top] with top = max |value|, so zero is always the white centre and two views of one map agree; values
within `TRANSPARENT_BAND` × top of zero are see-through, so the overlay never tints the case outside the support.
"""

from __future__ import annotations

import numpy as np

BLUE = np.array([0.13, 0.40, 0.67])
WHITE = np.array([0.97, 0.97, 0.97])
RED = np.array([0.70, 0.09, 0.17])
N_COLORS = 256
TRANSPARENT_BAND = 0.03   # |value| below this fraction of the display range is see-through (the table's centre)
FOREGROUND_OPACITY = 0.4  # attribution layer over the case


def diverging_table(n: int = N_COLORS) -> np.ndarray:
    """(n, 4) RGBA rows from -top to +top; the centre rows (|t| < TRANSPARENT_BAND) have alpha 0."""
    t = (np.arange(n) + 0.5) / n * 2 - 1
    rgb = np.where(t[:, None] >= 0, WHITE + (RED - WHITE) * t[:, None], WHITE + (BLUE - WHITE) * -t[:, None])
    alpha = (np.abs(t) >= TRANSPARENT_BAND).astype(float)
    return np.column_stack([rgb, alpha])


def symmetric_range(values: np.ndarray) -> float:
    """top of the fixed display range [-top, top]: the largest finite |value| (1 for an all-zero map)."""
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def to_rgba(values: np.ndarray, top: float, n: int = N_COLORS) -> np.ndarray:
    """Each value's table row (values.shape + (4,)), indexed as a lookup table over [-top, top] indexes it."""
    index = np.floor((np.asarray(values, dtype=float) + top) / (2 * top) * n)
    return diverging_table(n)[np.clip(np.nan_to_num(index, nan=n // 2), 0, n - 1).astype(int)]


def matplotlib_colormap(n: int = N_COLORS):
    """The same table as a matplotlib colour map (opaque, for legends and charts)."""
    from matplotlib.colors import ListedColormap

    table = diverging_table(n)
    table[:, 3] = 1.0
    return ListedColormap(table, name="segxai-diverging")
