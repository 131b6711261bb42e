"""Region players inside the support crop: supervoxels, an FCC lattice, organs, organ-aware supervoxels, user labels.

Only input inside the support (the union of the windows that overlap the ROI) can change the output inside the
ROI, so players are built there and everything outside is never removed (-1). A player map is an int array on
the model grid: -1 = not a player, 0..P-1 = player id.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError
from .windows import WindowGrid

KINDS = ("supervoxel", "lattice", "organ", "hybrid", "labels")


@dataclasses.dataclass
class Players:
    ids: np.ndarray          # int32 on the model grid, -1 outside every player
    names: list[str]
    organ: list[int | None]  # the organ label each player lies in, when organs are known
    kind: str

    @property
    def n(self) -> int:
        return len(self.names)

    def volumes(self) -> np.ndarray:
        return np.bincount(self.ids[self.ids >= 0].ravel(), minlength=self.n)


def support_box(grid: WindowGrid, roi: np.ndarray) -> tuple[slice, ...]:
    """Bounding box (in image coordinates) of the union of the windows that overlap the ROI."""
    lo = np.array(grid.image_shape)
    hi = np.zeros(3, int)
    pad = np.array([p[0] for p in grid.pad])
    roi_p = np.pad(roi, grid.pad)
    for w in range(len(grid.starts)):
        if roi_p[grid.slices(w)].any():
            start = np.array(grid.starts[w]) - pad
            lo = np.minimum(lo, np.maximum(start, 0))
            hi = np.maximum(hi, np.minimum(start + np.array(grid.size), grid.image_shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _slic(image: np.ndarray, n_segments: int, spacing: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    from skimage.segmentation import slic

    scaled = np.moveaxis(image, 0, -1).astype(np.float64)
    scale = scaled.reshape(-1, scaled.shape[-1]).std(0)
    scaled = scaled / np.where(scale > 0, scale, 1.0)
    labels = slic(scaled, n_segments=max(1, n_segments), compactness=1.0, spacing=spacing, channel_axis=-1, start_label=1,
                  mask=mask, enforce_connectivity=True)
    return labels.astype(np.int32) - 1  # -1 where masked out


def _fcc_cells(shape: tuple[int, ...], spacing: np.ndarray, cell_mm: float) -> np.ndarray:
    """Each voxel to its nearest seed of a face-centred-cubic lattice whose cells have volume cell_mm³."""
    from scipy.spatial import cKDTree

    a = cell_mm * 4 ** (1 / 3)                     # 4 lattice points per cubic cell of side a
    extent = np.array(shape) * spacing
    base = np.stack(np.meshgrid(*[np.arange(-a, e + a, a) for e in extent], indexing="ij"), -1).reshape(-1, 3)
    offsets = np.array([[0, 0, 0], [0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    seeds = (base[:, None, :] + offsets[None]).reshape(-1, 3)
    voxels = np.indices(shape).reshape(3, -1).T * spacing
    _, nearest = cKDTree(seeds).query(voxels)
    return np.unique(nearest, return_inverse=True)[1].reshape(shape).astype(np.int32)


def _renumber(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive ids 0..P-1 for the labels >= 0, and the original label of each."""
    present = np.unique(local[local >= 0])
    lookup = np.full(int(local.max()) + 2 if local.size else 1, -1, np.int32)
    lookup[present] = np.arange(present.size)
    return np.where(local >= 0, lookup[np.maximum(local, 0)], -1).astype(np.int32), present


def build_players(kind: str, image: np.ndarray, spacing: np.ndarray, box: tuple[slice, ...], *, n_players: int = 64,
                  cell_mm: float | None = None, labels: np.ndarray | None = None, label_names: dict[int, str] | None = None) -> Players:
    """Players of `kind` inside `box` on the model grid; `labels` (same grid) are the organs or user regions."""
    if kind not in KINDS:
        raise InputError(f"Unknown player kind {kind!r}.", f"Choose --features {' | '.join(KINDS)}.")
    if kind in ("organ", "hybrid", "labels") and labels is None:
        raise InputError(f"--features {kind} needs a label map.", "Pass --labels PATH (an organ or region label volume on the image grid).")
    crop = image[(slice(None),) + box]
    shape = crop.shape[1:]
    ids = np.full(image.shape[1:], -1, np.int32)
    names: list[str]
    organ: list[int | None]
    label_names = label_names or {}
    sub = labels[box] if labels is not None else None
    if kind == "supervoxel":
        local, _ = _renumber(_slic(crop, n_players, spacing))
        names, organ = [f"supervoxel {i + 1}" for i in range(int(local.max()) + 1)], [None] * (int(local.max()) + 1)
    elif kind == "lattice":
        cell = cell_mm or float((np.prod(np.array(shape) * spacing) / max(n_players, 1)) ** (1 / 3))
        local, _ = _renumber(_fcc_cells(shape, spacing, cell))
        names, organ = [f"cell {i + 1}" for i in range(int(local.max()) + 1)], [None] * (int(local.max()) + 1)
    elif kind in ("organ", "labels"):
        source = sub.astype(np.int32) if kind == "organ" else np.where(sub > 0, sub, -1).astype(np.int32)
        local, values = _renumber(source)
        names = [label_names.get(int(v), "everything else" if v == 0 else f"label {v}") for v in values]
        organ = [int(v) for v in values]
    else:  # hybrid: supervoxels inside each organ (and in the rest), so none crosses an organ boundary
        local = np.full(shape, -1, np.int32)
        organ, names = [], []
        values, counts = np.unique(sub, return_counts=True)
        for value, count in zip(values, counts):
            share = max(1, int(round(n_players * count / sub.size)))
            part = _slic(crop, share, spacing, mask=sub == value)
            part, _ = _renumber(part)
            k = int(part.max()) + 1
            local[part >= 0] = part[part >= 0] + len(names)
            base = label_names.get(int(value), "everything else" if value == 0 else f"label {value}")
            names += [f"{base} {i + 1}" for i in range(k)]
            organ += [int(value)] * k
    if not names:
        raise InputError("No player lies in the region the model sees around the ROI.", "Check the label map overlaps the ROI, or use --features supervoxel.")
    ids[box] = local
    return Players(ids, names, organ, kind)
