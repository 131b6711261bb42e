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

from ..errors import ModelError
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
    into probabilities ("softmax" over classes, or "sigmoid" per channel for region-based models). `regions` gives,
    for a region-based model, the label values in a label map that each named output stands for (from its metadata).
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
    regions: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    in_channels_source: str = "metadata"  # "user" (--channels), "metadata", or "forward pass" (found by probe_in_channels)

    def to(self, device: torch.device) -> "LoadedModel":
        self.module.to(device)
        return self

    def describe(self) -> dict:
        return {"name": self.name, "format": self.format, "source": self.source, "sha256": self.sha256,
                "in_channels": self.in_channels, "channels": self.channel_names, "labels": self.labels,
                "activation": self.activation, "regions": {k: list(v) for k, v in self.regions.items()},
                "window": self.window.to_json(), "preprocessing": self.preprocessing}


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


def runs_on(module: torch.nn.Module, channels: int, size: tuple[int, ...]) -> bool:
    """Whether the network runs on a (1, channels, *size) input of zeros."""
    try:
        with torch.inference_mode():
            module(torch.zeros((1, channels, *size)))
        return True
    except Exception:  # any failure means "not this input"; the real forward pass reports its own error
        return False


def probe_in_channels(module: torch.nn.Module, window: tuple[int, ...] | None, most: int = 8) -> int | None:
    """The fewest input channels the network runs on, found by forward passes on a tiny input.

    Reading the first convolution's weight is wrong for a network that selects or reorders channels before it, so
    a model that declares nothing is asked instead. The input is its own window when known (some networks need it).
    """
    size = tuple(window) if window else (32, 32, 32)
    return next((c for c in range(1, most + 1) if runs_on(module, c, size)), None)


def file_label(path: str | Path) -> str:
    path = Path(path)
    return path.parent.name + "/" + path.name if path.name in ("model.pt", "model.ts") else path.name


def region_labels(labels: dict[str, int], given, source: str, error=None) -> dict[str, tuple[int, ...]]:
    """Output name (or channel number) -> the label values it stands for, checked against the model's outputs."""
    error = error or ModelError
    if not given:
        return {}
    if not isinstance(given, dict):
        raise error(f"{source}: the region label sets must be a JSON object like {{\"tumor core\": [2, 3]}}, not {given!r}.",
                    "Key each region by the model's output name and give its label values as a list of integers.")
    by_channel = {str(v): k for k, v in labels.items()}
    out = {}
    for key, values in given.items():
        name = key if key in labels else by_channel.get(str(key), str(key) if str(key).isdigit() else None)
        if name is None:
            raise error(f"{source} gives label values for {key!r}, which is not one of the model's outputs ({', '.join(labels) or 'none named'}).",
                        "Key the region label sets by the model's output names or channel numbers (describe-model lists them).")
        values = [values] if isinstance(values, int) and not isinstance(values, bool) else values
        if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise error(f"{source}: the label values of region {key!r} must be a list of integers, not {values!r}.",
                        "Give each region's label values as a list of integers, e.g. [2, 3].")
        out[name] = tuple(int(v) for v in values)
    return out
