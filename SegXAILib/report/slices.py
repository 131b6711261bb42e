"""Slices of the case with the result's overlays, composed pixel for pixel (no resampling, no plotting library).

Volumes are reoriented to RAS axes first, then shown as the Slicer slice views show them: axial and coronal with
the patient's right on the screen's left, sagittal with anterior on the left, superior / anterior up. Each voxel
becomes an integer block of pixels scaled by its spacing, so a pixel maps back to exactly one voxel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..colormap import FOREGROUND_OPACITY, to_rgba
from ..volumes import Geometry

VIEWS = ("axial", "coronal", "sagittal")
ROI_COLOUR = (0.95, 0.85, 0.2)          # as the Slicer panel's ROI segment
PREDICTION_COLOUR = (0.9, 0.5, 0.1)     # as its prediction segment
REGION_COLOUR = (0.0, 0.9, 0.9)         # outline of the region the slices go through


@dataclasses.dataclass
class Oriented:
    """Arrays on RAS-ordered axes (index increases with R, A, S) and the voxel size along each."""

    spacing: np.ndarray
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def of(cls, geometry: Geometry) -> "Oriented":
        matrix = np.asarray(geometry.affine, dtype=float)[:3, :3]
        axis_of = [int(np.argmax(np.abs(matrix[ras]))) for ras in range(3)]  # voxel axis closest to R, A, S
        if sorted(axis_of) != [0, 1, 2]:
            axis_of = [0, 1, 2]  # strongly oblique: show voxel axes as they are
        flips = tuple(bool(matrix[ras, axis_of[ras]] < 0) for ras in range(3))
        spacing = np.linalg.norm(matrix, axis=0)[axis_of]
        return cls(spacing, tuple(axis_of), flips)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.permutation)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return out

    def ras_index(self, ijk, shape) -> np.ndarray:
        """A voxel index (i, j, k) of the original array (of `shape`) → its index on the RAS-ordered axes."""
        out = np.array([ijk[axis] for axis in self.permutation])
        for ras, axis in enumerate(self.permutation):
            if self.flips[ras]:
                out[ras] = shape[axis] - 1 - out[ras]
        return out


def view_plane(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice of a RAS-ordered volume as screen rows × columns (row 0 at the top)."""
    if view == "axial":       # rows: A (top = anterior), columns: R reversed
        plane = volume[:, :, index]
    elif view == "coronal":   # rows: S, columns: R reversed
        plane = volume[:, index, :]
    else:                     # sagittal; rows: S, columns: A reversed (anterior on the left)
        plane = volume[index, :, :]
    return np.flipud(plane.T)[:, ::-1]


def view_axis(view: str) -> int:
    return {"axial": 2, "coronal": 1, "sagittal": 0}[view]


def pixel_scale(spacing: np.ndarray, view: str, base: int = 3) -> tuple[int, int]:
    """Pixels per voxel (rows, columns) for a view, proportional to the in-plane spacing."""
    rows_axis, cols_axis = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[view]
    smallest = float(min(spacing))
    return (max(1, int(round(base * spacing[rows_axis] / smallest))), max(1, int(round(base * spacing[cols_axis] / smallest))))


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def compose(image: np.ndarray | None, attribution: np.ndarray | None, top: float, roi: np.ndarray | None,
            prediction: np.ndarray | None, region: np.ndarray | None, scale: tuple[int, int]) -> np.ndarray:
    """One view's RGB picture from 2D planes: grey case, attribution at the panel's opacity, outlines on top."""
    shape = next(p.shape for p in (image, attribution, roi, prediction, region) if p is not None)
    if image is not None:
        lo, hi = np.percentile(image, [1, 99.5])
        grey = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    else:
        grey = np.zeros(shape)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if attribution is not None:
        rgba = to_rgba(attribution, top)
        alpha = rgba[..., 3:4] * FOREGROUND_OPACITY
        rgb = rgb * (1 - alpha) + rgba[..., :3] * alpha
    rgb = np.kron(rgb, np.ones(scale + (1,)))  # each voxel an integer block of pixels; outlines drawn on the blocks
    for mask, colour in ((prediction, PREDICTION_COLOUR), (roi, ROI_COLOUR), (region, REGION_COLOUR)):
        if mask is not None:
            edge = _outline(np.kron(mask.astype(bool), np.ones(scale, bool)))
            rgb[edge] = colour
    return rgb


def region_centre(mask: np.ndarray) -> np.ndarray:
    """The voxel of a region closest to its centroid (the centroid of a curved region may lie outside it)."""
    idx = np.argwhere(mask)
    return idx[np.argmin(((idx - idx.mean(0)) ** 2).sum(1))]
