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


def make_blob_case(folder: Path) -> dict:
    """Three channels on a 24×20×16 grid: 0 and 1 hold the same bright blob, 2 is noise; plus ROI and truth files."""
    shape = (24, 20, 16)
    geo = Geometry(shape, affine())
    i, j, k = np.indices(shape)
    blob = (((i - 12) / 5.0) ** 2 + ((j - 10) / 4.0) ** 2 + ((k - 8) / 3.0) ** 2 <= 1).astype(np.float32)
    rng = np.random.default_rng(0)
    images = [blob * 2.0, blob * 2.0, rng.normal(size=shape).astype(np.float32)]
    paths = [write_volume(im, geo, folder / f"c{n}.nii.gz") for n, im in enumerate(images)]
    roi = np.zeros(shape, np.uint8)
    roi[4:20, 3:17, 2:14] = 1
    roi_path = write_volume(roi, geo, folder / "roi.nii.gz")
    truth_path = write_volume(blob.astype(np.uint8), geo, folder / "truth.nii.gz")
    model = save_torchscript(ThresholdSum([1.0, 1.0, 0.0], 1.5), folder / "model.pt",
                             {"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}})
    return {"images": [str(p) for p in paths], "roi": str(roi_path), "truth": str(truth_path), "model": str(model),
            "geometry": geo, "blob": blob, "dir": folder}


@pytest.fixture
def blob_case(tmp_path):
    return make_blob_case(tmp_path)


SEGRESNET = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}


def write_bundle(root: Path) -> tuple[Path, dict]:
    """A MONAI bundle written with MONAI's own config tooling: network_def, inferer, preprocessing, metadata, weights."""
    from monai.bundle import ConfigParser
    from monai.networks.nets import SegResNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {
        "network_def": {"_target_": "SegResNet", **SEGRESNET},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
        "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
    }
    ConfigParser.export_config_file(config, str(root / "configs" / "inference.json"))
    meta = {"version": "0.1", "network_data_format": {
        "inputs": {"image": {"num_channels": 2, "channel_def": {"0": "T1c", "1": "FLAIR"}}},
        "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "core", "2": "oedema"}}}}}
    ConfigParser.export_config_file(meta, str(root / "configs" / "metadata.json"))
    torch.manual_seed(1)
    net = SegResNet(**SEGRESNET)
    torch.save({k: v.half() for k, v in net.state_dict().items()}, str(root / "models" / "model.pt"))
    return root, config


def _nnunet_results(work: Path, *flags: str) -> Path:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(Path(__file__).with_name("nnunet_results.py")), str(work), *flags],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def nnunet_folder(tmp_path_factory) -> Path:
    """A real nnU-Net v2 results folder (plans, dataset.json, fold_0 checkpoint) written by nnU-Net's own code."""
    return _nnunet_results(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="session")
def nnunet_region_folder(tmp_path_factory) -> Path:
    """A region-based nnU-Net v2 results folder (BraTS-style label tuples and regions_class_order), by nnU-Net's code.
    Its raw training images lie in WORK/raw/Dataset043_TinyRegions."""
    return _nnunet_results(tmp_path_factory.mktemp("nnunet_regions"), "--regions")


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
