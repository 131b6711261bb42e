"""The catalogue of bad input: every entry goes through the `segxai` command and must end in one clear paragraph.

Each row builds one bad input beside a valid case and runs `segxai explain` into an output folder that already holds
an earlier SegXAI result and a file of the user's (with --overwrite, so that the bad input, not the folder, is what
stops the run). It must exit with the row's code, print `segxai: <problem>` and `Fix: <fix>` on at most two lines
naming the problem, print no traceback, and leave every file in the output folder as it was.

To add an entry, append a Row: `build(case, tmp)` returns the argument list (without --out), writing whatever bad
files it needs under `tmp`; `base(case, ...)` gives the valid arguments with any of them replaced.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import SEGRESNET, ThresholdSum, make_blob_case, save_torchscript, write_bundle
from SegXAILib.cli import main
from SegXAILib.volumes import Geometry, write_volume


def base(case: dict, *, images=None, model=None, roi=("--roi-mask", None), target="1", extra=()) -> list[str]:
    """The valid explain arguments for the blob case, with the given parts replaced."""
    args = ["explain"]
    for path in images if images is not None else case["images"]:
        args += ["--image", str(path)]
    roi_flag, roi_value = roi
    return args + ["--model", str(model or case["model"]), roi_flag, *([roi_value or case["roi"]] if roi_flag == "--roi-mask" else roi_value),
                   "--target-label", target, "--progress", "none", *extra]


def volume(case: dict, tmp: Path, name: str, array: np.ndarray, geometry: Geometry | None = None) -> str:
    return str(write_volume(array, geometry or case["geometry"], tmp / f"{name}.nii.gz"))


class PicksFourth(torch.nn.Module):
    """Reads only its 4th input channel: its first convolution takes 1 channel, the model takes 4."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x[:, 3:4])


class Pooled(torch.nn.Module):
    """Returns logits at half the input resolution: not a segmentation of its window."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 2, 2, stride=2)

    def forward(self, x):
        return self.conv(x)


class InfiniteWithoutBlob(torch.nn.Module):
    """ThresholdSum's answer plus log(max of channel 0 in the window): finite on the case (the blob is 2 there), −inf
    once a causal intervention replaces the blob by the baseline 0."""

    def __init__(self):
        super().__init__()
        self.inner = ThresholdSum([1.0, 1.0, 0.0], 1.5)

    def forward(self, x):
        return self.inner(x) + torch.log(x[:, :1].amax(dim=(2, 3, 4), keepdim=True))


def torchscript(tmp: Path, module: torch.nn.Module, metadata: str | None) -> str:
    path = tmp / "model.pt"
    torch.jit.save(torch.jit.script(module.eval()), str(path), _extra_files={"segxai.json": metadata} if metadata is not None else {})
    return str(path)


def blob_model(tmp: Path, meta: dict) -> str:
    return blob_model_of(tmp, ThresholdSum([1.0, 1.0, 0.0], 1.5), meta)


def blob_model_of(tmp: Path, module: torch.nn.Module, meta: dict | None = None) -> str:
    return str(save_torchscript(module, tmp / "model.pt", {"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}, **(meta or {})}))


def shifted(case, tmp):
    a = case["geometry"].affine.copy()
    a[:3, 3] += 3.0
    return volume(case, tmp, "shifted", np.ones(case["geometry"].shape, np.float32), Geometry(case["geometry"].shape, a))


def not_a_model_zip(case, tmp):
    path = tmp / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes/readme.txt", "holiday photos")
    return base(case, model=path)


def bundle_with(case, tmp, edit: Callable[[Path], None]):
    root, _ = write_bundle(tmp / "bundle")
    edit(root)
    return base(case, model=root, extra=["--trust"])


def wrong_weights(root: Path):
    from monai.networks.nets import SegResNet

    torch.save(SegResNet(**{**SEGRESNET, "init_filters": 16}).state_dict(), str(root / "models" / "model.pt"))


def nnunet_with(case, tmp, dataset: str, plans: str):
    folder = tmp / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(dataset)
    (folder / "plans.json").write_text(plans)
    return base(case, model=folder, extra=["--trust"])


def ranking_file(case, tmp, text: str):
    (tmp / "ranking.json").write_text(text)
    return base(case, extra=["--clinician-ranking", str(tmp / "ranking.json")])


SIGMOID = {"labels": {"blob": 1}, "activation": "sigmoid"}


@dataclasses.dataclass
class Row:
    name: str
    build: Callable[[dict, Path], list[str]]
    code: int            # 2 bad input, 3 model problem
    words: str           # must appear in the message
    overwrite: bool = True


CATALOGUE = [
    # --- images, masks and options -------------------------------------------------------------------------------
    Row("image on another grid", lambda c, t: base(c, images=[shifted(c, t), *c["images"][1:]]), 2, "origin"),
    Row("NaN in an image", lambda c, t: base(c, images=[volume(c, t, "nan", np.full(c["geometry"].shape, np.nan, np.float32)),
                                                        *c["images"][1:]]), 2, "NaN"),
    Row("too few images for the model", lambda c, t: base(c, images=c["images"][:2]), 2, "3 input channels"),
    Row("empty ROI mask", lambda c, t: base(c, roi=("--roi-mask", volume(c, t, "roi", np.zeros(c["geometry"].shape, np.uint8)))),
        2, "no nonzero voxel"),
    Row("ROI mask on another grid", lambda c, t: base(c, roi=("--roi-mask", volume(c, t, "roi", np.ones((5, 5, 5), np.uint8),
                                                                                  Geometry((5, 5, 5), c["geometry"].affine)))),
        2, "not on the image grid"),
    Row("ROI box outside the image", lambda c, t: base(c, roi=("--roi-box", ["500", "500", "500", "600", "600", "600"])),
        2, "outside the image"),
    Row("reference empty inside the ROI", lambda c, t: base(c, extra=["--reference", volume(c, t, "ref", np.zeros(c["geometry"].shape, np.uint8))]),
        2, "has no voxel inside the ROI"),
    Row("target label the model does not predict", lambda c, t: base(c, target="7"), 2, "foreground labels are 1..1"),
    Row("output folder exists (no --overwrite)", lambda c, t: base(c), 2, "already exists", overwrite=False),
    Row("malformed clinician-ranking file", lambda c, t: ranking_file(c, t, '{"rankings": {"1": ["A", "B"'), 2, "not valid JSON"),
    Row("clinician-ranking file without rankings", lambda c, t: ranking_file(c, t, '{"rankings": ["A", "B"]}'), 2, '"rankings" object'),
    # --- model files -----------------------------------------------------------------------------------------------
    Row("model path missing", lambda c, t: base(c, model=t / "missing.pt"), 3, "does not exist"),
    Row("pickled model without --trust", lambda c, t: (torch.save(ThresholdSum([1.0, 1.0, 0.0], 1.5), str(t / "whole.pt")),
                                                       base(c, model=t / "whole.pt"))[1], 3, "--trust"),
    Row("state dict without --factory", lambda c, t: (torch.save(ThresholdSum([1.0, 1.0, 0.0], 1.5).state_dict(), str(t / "w.pt")),
                                                      base(c, model=t / "w.pt"))[1], 3, "--factory"),
    Row("zip file that is not a model", not_a_model_zip, 3, "not a model file SegXAI can read"),
    Row("segxai.json that is not JSON", lambda c, t: base(c, model=torchscript(t, ThresholdSum([1.0, 1.0, 0.0], 1.5), '{"channels": [')),
        3, "not valid JSON"),
    Row("segxai.json with malformed entries", lambda c, t: base(c, model=blob_model(t, {"channels": "ABC", "window": [0, 8]})),
        3, "malformed entries: channels='ABC'; window=[0, 8]"),
    Row("unknown preprocess in segxai.json", lambda c, t: base(c, model=blob_model(t, {"preprocess": "histogram"})), 2,
        "Unknown preprocessing 'histogram'"),
    Row("model reads a 4th channel (found by a trial forward pass)", lambda c, t: base(c, model=torchscript(t, PicksFourth(), None)),
        2, "takes 4 input channels (found by a trial forward pass"),
    Row("model's own forward pass fails on the input", lambda c, t: base(c, model=torchscript(t, PicksFourth(), None),
                                                                         extra=["--channels", "A,B,C"]),
        3, "was given a batch of shape (1, 3, 24, 20, 16)"),
    Row("model outputs infinite under a causal intervention",
        lambda c, t: base(c, model=blob_model_of(t, InfiniteWithoutBlob()),
                          extra=["--method", "causal", "--intervention", "baseline", "--features", "labels", "--labels", c["truth"],
                                 "--value", "tp"]), 3, "NaN or infinite outputs under a causal intervention"),
    Row("model output is not a segmentation of its input", lambda c, t: base(c, model=torchscript(t, Pooled(), None)),
        3, "returned (1, 2, 12, 10, 8), not (windows, classes, *window)"),
    Row("region-based model whose metadata gives no region labels, with --ground-truth",
        lambda c, t: base(c, model=blob_model(t, SIGMOID), target="blob", extra=["--ground-truth", c["truth"]]), 2,
        "does not say which label values"),
    Row("--region-labels naming an output the model lacks",
        lambda c, t: base(c, model=blob_model(t, SIGMOID), target="blob", extra=["--region-labels", '{"tumour": [1]}']), 2,
        "not one of the model's outputs (blob)"),
    Row("target that is not an output of a region-based model", lambda c, t: base(c, model=blob_model(t, SIGMOID), target="core"),
        2, "not an output of this region-based model"),
    Row("bundle metadata.json that is not JSON",
        lambda c, t: bundle_with(c, t, lambda r: (r / "configs" / "metadata.json").write_text('{"network_data_format": {')), 3,
        "metadata.json as JSON"),
    Row("bundle metadata.json with a malformed channel_def",
        lambda c, t: bundle_with(c, t, lambda r: (r / "configs" / "metadata.json").write_text(
            json.dumps({"network_data_format": {"inputs": {"image": {"channel_def": ["T1c", "FLAIR"]}}}}))), 3,
        "metadata.json is malformed"),
    Row("bundle weights that do not fit network_def", lambda c, t: bundle_with(c, t, wrong_weights), 3,
        "do not fit the bundle's network_def (SegResNet)"),
    Row("nnU-Net dataset.json that is not JSON", lambda c, t: nnunet_with(c, t, '{"labels": ', "{}"), 3, "dataset.json as JSON"),
    Row("nnU-Net plans.json without configurations",
        lambda c, t: nnunet_with(c, t, json.dumps({"channel_names": {"0": "A"}, "labels": {"background": 0, "x": 1}}), "{}"), 3,
        "not what nnU-Net v2 writes"),
    Row("nnU-Net dataset.json without a background label",
        lambda c, t: nnunet_with(c, t, json.dumps({"channel_names": {"0": "A"}, "labels": {"x": 1}}),
                                 json.dumps({"configurations": {"3d_fullres": {"patch_size": [8, 8, 8]}}})), 3,
        "Background label not declared"),
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The blob case and an earlier SegXAI result written by the command itself."""
    folder = tmp_path_factory.mktemp("catalogue")
    case = make_blob_case(folder)
    case["earlier"] = folder / "earlier"
    assert main(base(case) + ["--out", str(case["earlier"])]) == 0
    (case["earlier"] / "my notes.txt").write_text("the user's own file")
    return case


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check(row: Row, code: int, err: str, out: str, before: dict, folder: Path) -> None:
    assert code == row.code, err
    assert "Traceback" not in err + out and "Error:" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("segxai: ") and lines[1].startswith("  Fix: ") and len(lines) == 2, err
    assert row.words in err, err
    assert _snapshot(folder) == before


@pytest.mark.parametrize("row", CATALOGUE, ids=[r.name for r in CATALOGUE])
def test_bad_input(row: Row, case, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(case["earlier"], out)
    before = _snapshot(out)
    args = row.build(case, tmp_path) + ["--out", str(out)] + (["--overwrite"] if row.overwrite else [])
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    _check(row, code, captured.err, captured.out, before, out)


@pytest.mark.parametrize("name", ["zip file that is not a model", "model's own forward pass fails on the input"])
def test_bad_input_as_a_command(name, case, tmp_path):
    """The same through a real `python -m SegXAILib.cli` process: no traceback reaches the terminal."""
    row = next(r for r in CATALOGUE if r.name == name)
    out = tmp_path / "out"
    shutil.copytree(case["earlier"], out)
    before = _snapshot(out)
    args = row.build(case, tmp_path) + ["--out", str(out), "--overwrite"]
    done = subprocess.run([sys.executable, "-m", "SegXAILib.cli", *args], capture_output=True, text=True, timeout=300)
    _check(row, done.returncode, done.stderr, done.stdout, before, out)
