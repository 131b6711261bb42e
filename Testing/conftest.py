"""Fixtures shared by the tests: small TorchScript models whose answers the Shapley axioms fix, and cases on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from SegXAILib.volumes import Geometry, write_volume


class ThresholdSum(torch.nn.Module):
    """Foreground logit = Σ_c w_c · (3×3×3 box mean of channel c) − bias; background logit 0.

    With w = (1, 1, 0) and bias 1.5 on a case whose channels 0 and 1 hold the same blob, the foreground needs both
    channels: v(S) = Dice is 1 for S ⊇ {0, 1} and 0 otherwise, so φ = (½, ½, 0) exactly.
    """

    def __init__(self, weights, bias: float):
        super().__init__()
        c = len(weights)
        self.conv = torch.nn.Conv3d(c, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(1, c, 1, 1, 1).expand(1, c, 3, 3, 3) / 27)
        self.bias = float(bias)

    def forward(self, x):
        fg = self.conv(x) - self.bias
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def save_torchscript(module: torch.nn.Module, path: Path, meta: dict | None = None) -> Path:
    scripted = torch.jit.script(module.eval())
    torch.jit.save(scripted, str(path), _extra_files={"segxai.json": json.dumps(meta or {})})
    return path


def affine(spacing=(1.5, 1.5, 2.0), origin=(-20.0, 10.0, 5.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


@pytest.fixture
def blob_case(tmp_path):
    """Three channels on a 24×20×16 grid: 0 and 1 hold the same bright blob, 2 is noise; plus ROI and truth files."""
    shape = (24, 20, 16)
    geo = Geometry(shape, affine())
    i, j, k = np.indices(shape)
    blob = (((i - 12) / 5.0) ** 2 + ((j - 10) / 4.0) ** 2 + ((k - 8) / 3.0) ** 2 <= 1).astype(np.float32)
    rng = np.random.default_rng(0)
    images = [blob * 2.0, blob * 2.0, rng.normal(size=shape).astype(np.float32)]
    paths = [write_volume(im, geo, tmp_path / f"c{n}.nii.gz") for n, im in enumerate(images)]
    roi = np.zeros(shape, np.uint8)
    roi[4:20, 3:17, 2:14] = 1
    roi_path = write_volume(roi, geo, tmp_path / "roi.nii.gz")
    truth_path = write_volume(blob.astype(np.uint8), geo, tmp_path / "truth.nii.gz")
    model = save_torchscript(ThresholdSum([1.0, 1.0, 0.0], 1.5), tmp_path / "model.pt",
                             {"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}})
    return {"images": [str(p) for p in paths], "roi": str(roi_path), "truth": str(truth_path), "model": str(model),
            "geometry": geo, "blob": blob, "dir": tmp_path}


@pytest.fixture(scope="session")
def nnunet_folder(tmp_path_factory) -> Path:
    """A real nnU-Net v2 results folder (plans, dataset.json, fold_0 checkpoint) written by nnU-Net's own code."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("nnunet")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("nnunet_results.py")), str(work)],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


class TwoBranch(torch.nn.Module):
    """An eager network with a branch whose output is computed and thrown away (its ATE must be 0)."""

    def __init__(self):
        super().__init__()
        self.used = torch.nn.Conv3d(2, 2, 3, padding=1)
        self.unused = torch.nn.Conv3d(2, 3, 1)

    def forward(self, x):
        self.unused(x)
        return self.used(x)


def make_two_branch() -> TwoBranch:
    """Factory for `--factory conftest:make_two_branch` in the tests."""
    return TwoBranch()


@pytest.fixture(scope="session")
def method_results(tmp_path_factory) -> dict:
    """One small real result folder per method (see result_folders.py), shared by the report and viewer tests."""
    from result_folders import make_results

    return make_results(tmp_path_factory.mktemp("methods"))
