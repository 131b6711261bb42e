"""One interface for every model format: metadata, model-space preparation and a window forward pass.

`prepare(case)` returns the image in the model's input space (after the format's own preprocessing) together
with the geometry of that grid, so masks map in and outputs map back with one generic resampling.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..volumes import Case, Geometry
from ..windows import WindowSpec


@dataclasses.dataclass
class Prepared:
    """The case as the network sees it: `image` (C, ...) float32 on the grid `geometry`."""

    image: np.ndarray
    geometry: Geometry


@dataclasses.dataclass
class LoadedModel:
    """A segmentation network ready to run on windows.

    `forward` maps a batch (B, C, *window) to logits (B, K, *window), including any test-time mirroring the
    format applies per window. `labels` maps class names to output channels; `activation` is how logits turn
    into probabilities ("softmax" over classes, or "sigmoid" per channel for region-based models).
    """

    name: str
    format: str
    source: str
    sha256: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    module: torch.nn.Module
    in_channels: int | None
    channel_names: list[str] | None
    labels: dict[str, int]
    activation: str
    window: WindowSpec
    prepare: Callable[[Case], Prepared]
    preprocessing: str = "none"

    def to(self, device: torch.device) -> "LoadedModel":
        self.module.to(device)
        return self

    def describe(self) -> dict:
        return {"name": self.name, "format": self.format, "source": self.source, "sha256": self.sha256,
                "in_channels": self.in_channels, "channels": self.channel_names, "labels": self.labels,
                "activation": self.activation, "window": self.window.to_json(), "preprocessing": self.preprocessing}


def identity_prepare(normalise: Callable[[np.ndarray], np.ndarray] | None = None) -> Callable[[Case], Prepared]:
    """Model space = case space, optionally with an intensity normalisation (no resampling)."""

    def prepare(case: Case) -> Prepared:
        image = case.images if normalise is None else normalise(case.images)
        return Prepared(np.ascontiguousarray(image, dtype=np.float32), case.geometry)

    return prepare


def zscore(images: np.ndarray) -> np.ndarray:
    """Per-channel z-score over nonzero voxels (what nnU-Net and MONAI's NormalizeIntensity(nonzero) do for MRI)."""
    out = np.zeros_like(images, dtype=np.float32)
    for c, channel in enumerate(images):
        mask = channel != 0
        values = channel[mask] if mask.any() else channel.ravel()
        std = values.std()
        out[c][mask] = (channel[mask] - values.mean()) / (std if std > 0 else 1.0)
    return out


def ct_window(images: np.ndarray, lo: float = -1000.0, hi: float = 1000.0) -> np.ndarray:
    """CT Hounsfield units clipped to [lo, hi] and scaled to [0, 1]."""
    return ((np.clip(images, lo, hi) - lo) / (hi - lo)).astype(np.float32)


PREPROCESSORS = {"none": None, "zscore": zscore, "ct": ct_window}


def first_conv_in_channels(module: torch.nn.Module) -> int | None:
    """Input channel count read off the first 5D (Conv3d) weight, for formats that do not declare it."""
    for param in module.parameters():
        if param.ndim == 5:
            return int(param.shape[1])
    return None


def file_label(path: str | Path) -> str:
    path = Path(path)
    return path.parent.name + "/" + path.name if path.name in ("model.pt", "model.ts") else path.name
