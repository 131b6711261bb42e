"""What the benchmarks share: the generated BraTS-like case, its tumour ROI, random-weight SegResNets, a timer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import SegResNet

CHANNELS = ["T1", "T1c", "T2", "FLAIR"]
LABELS = {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3}


def tumour_roi(labels: np.ndarray, margin: int = 5) -> np.ndarray:
    """The tumour's bounding box with a margin: the ROI a reader would draw."""
    idx = np.argwhere(labels > 0)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, labels.shape)
    roi = np.zeros(labels.shape, bool)
    roi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return roi


def save_segresnet(seed: int, path: Path, window: int, overlap: float) -> Path:
    """A MONAI SegResNet with random weights as a TorchScript file with SegXAI metadata (BraTS channels and labels)."""
    torch.manual_seed(seed)
    net = SegResNet(spatial_dims=3, in_channels=4, out_channels=4, init_filters=8).eval()
    meta = {"channels": CHANNELS, "labels": LABELS, "window": [window] * 3, "overlap": overlap, "preprocess": "zscore"}
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"segxai.json": json.dumps(meta)})
    return path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
