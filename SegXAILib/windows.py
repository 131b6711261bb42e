"""Sliding-window grids and fusion weights, reproduced from the library each model comes from.

ROI-restricted inference is exact only if it uses the very grid (padding, window starts) and the very
importance weights of full-volume inference; so each grid calls the owning library's own functions
(MONAI's `dense_patch_slices` / `compute_importance_map`, nnU-Net's `compute_steps_for_sliding_window` /
`compute_gaussian`) instead of re-deriving them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class WindowGrid:
    """Windows over a padded volume: `pad[d]` = (before, after); `starts` index the padded volume."""

    image_shape: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    size: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    importance: np.ndarray  # float32, shape `size`

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + a + b for s, (a, b) in zip(self.image_shape, self.pad))

    def slices(self, index: int) -> tuple[slice, ...]:
        return tuple(slice(s, s + w) for s, w in zip(self.starts[index], self.size))


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How a model wants to be tiled: `kind` is "monai", "nnunet" or "single" (whole volume as one window)."""

    kind: str = "single"
    size: tuple[int, ...] | None = None
    overlap: float = 0.5  # MONAI overlap; nnU-Net's tile_step_size = 1 - overlap
    mode: str = "gaussian"
    sigma_scale: float = 0.125

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def make_grid(spec: WindowSpec, image_shape: Sequence[int]) -> WindowGrid:
    image_shape = tuple(int(s) for s in image_shape)
    if spec.kind == "single" or spec.size is None:
        return WindowGrid(image_shape, tuple((0, 0) for _ in image_shape), image_shape, (tuple(0 for _ in image_shape),),
                          np.ones(image_shape, dtype=np.float32))
    if spec.kind == "monai":
        return _monai_grid(spec, image_shape)
    if spec.kind == "nnunet":
        return _nnunet_grid(spec, image_shape)
    raise ValueError(f"unknown window kind {spec.kind!r}")


def _monai_grid(spec: WindowSpec, image_shape: tuple[int, ...]) -> WindowGrid:
    from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
    from monai.inferers.utils import _get_scan_interval

    roi = tuple(int(r) if r > 0 else s for r, s in zip(spec.size, image_shape))
    padded = tuple(max(s, r) for s, r in zip(image_shape, roi))
    pad = tuple(((r - s) // 2, (r - s) - (r - s) // 2) if r > s else (0, 0) for s, r in zip(image_shape, roi))
    interval = _get_scan_interval(padded, roi, len(roi), (spec.overlap,) * len(roi))
    slices = dense_patch_slices(padded, roi, interval)
    starts = tuple(tuple(sl.start for sl in s) for s in slices)
    size = get_valid_patch_size(padded, roi)
    importance = compute_importance_map(size, mode=spec.mode, sigma_scale=spec.sigma_scale, device="cpu", dtype=None)
    return WindowGrid(image_shape, pad, tuple(size), starts, importance.float().numpy())


def _nnunet_grid(spec: WindowSpec, image_shape: tuple[int, ...]) -> WindowGrid:
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    size = tuple(int(s) for s in spec.size)
    # acvl_utils.pad_nd_image pads to at least the patch size, splitting the difference as below.
    pad = tuple(((p - s) // 2, (p - s) - (p - s) // 2) if p > s else (0, 0) for s, p in zip(image_shape, size))
    padded = tuple(s + a + b for s, (a, b) in zip(image_shape, pad))
    steps = compute_steps_for_sliding_window(padded, size, 1.0 - spec.overlap)
    starts = tuple(itertools.product(*steps))
    if spec.mode == "gaussian":
        # nnU-Net fuses with an fp16 Gaussian scaled to 10; the scale cancels in the fusion, the fp16 rounding does not.
        importance = compute_gaussian(size, sigma_scale=spec.sigma_scale, value_scaling_factor=10, dtype=torch.float16,
                                      device=torch.device("cpu")).float().numpy()
    else:
        importance = np.ones(size, dtype=np.float32)
    return WindowGrid(image_shape, pad, size, starts, importance)
