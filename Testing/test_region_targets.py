"""Region-based (sigmoid) targets read their label values from the model's own metadata, never from a convention.

The model is a region-based nnU-Net v2 results folder written by nnU-Net's own code, whose dataset.json says (as
nnU-Net's BraTS conversion does) that the tumour core is labels 2 and 3 — not BraTS's 1 and 3, which SegXAI
assumed before for any target called TC.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import save_torchscript, write_bundle
from SegXAILib.cli import main
from SegXAILib.errors import InputError
from SegXAILib.models import ModelOptions, describe_model, load_models
from SegXAILib.targets import parse_target


class TwoRegions(torch.nn.Module):
    """Two sigmoid outputs from one 1-channel input (region-based, no softmax)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x):
        return self.conv(x)


def _case(folder):
    raw = folder.parents[1].parent / "raw" / "Dataset043_TinyRegions"
    images = [str(raw / "imagesTr" / f"tiny_000_{c:04d}.nii.gz") for c in range(2)]
    return images, raw / "labelsTr" / "tiny_000.nii.gz"


def _explain(folder, out, target, *extra):
    images, _ = _case(folder)
    args = ["explain", "--image", images[0], "--image", images[1], "--model", str(folder), "--trust", "--no-mirroring",
            "--roi-mask", str(out.parent / "roi.nii.gz"), "--target-label", target, "--out", str(out), "--progress", "none"]
    return main(args + list(extra))


def test_region_nnunet_targets_come_from_dataset_json(nnunet_region_folder, tmp_path):
    folder = nnunet_region_folder
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"]["tumor core"] == [2, 3] and dataset["regions_class_order"] == [1, 2, 3]
    info = describe_model(folder)
    assert info["regions"] == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    model, = load_models([folder], ModelOptions(trust=True, mirroring=False))
    assert model.activation == "sigmoid" and model.labels == {"whole tumor": 0, "tumor core": 1, "enhancing tumor": 2}
    for spec in ("TC", "tumor core", "2,3"):
        target = parse_target(spec, model.labels, model.activation, 3, model.regions)
        assert (target.channels, target.ref_labels) == ((1,), (2, 3)), spec

    # Ground truth = the model's own tumour-core answer written in the data set's labels (2 and 3 inside, 1 = oedema
    # around it): Dice against it is 1 exactly when TC is read as labels {2, 3}, not under BraTS's {1, 3} or {2}.
    images, _ = _case(folder)
    ref = nib.load(images[0])
    roi = np.zeros(ref.shape, np.uint8)
    roi[6:30, 8:32, 4:24] = 1
    nib.save(nib.Nifti1Image(roi, ref.affine), str(tmp_path / "roi.nii.gz"))
    assert _explain(folder, tmp_path / "own", "TC") == 0
    own = json.loads((tmp_path / "own" / "result.json").read_text())
    assert own["target"]["labels"] == [2, 3] and own["target"]["output_channels"] == [1]
    core = nib.load(str(tmp_path / "own" / "prediction.nii.gz")).get_fdata() > 0.5
    assert 0 < (core & (roi > 0)).sum() < (roi > 0).sum()  # the random-weight model draws a partial core
    truth = np.where(core, 2 + np.indices(core.shape)[0] % 2, 1).astype(np.uint8)
    nib.save(nib.Nifti1Image(truth, ref.affine), str(tmp_path / "truth.nii.gz"))
    truth_path = str(tmp_path / "truth.nii.gz")
    assert _explain(folder, tmp_path / "gt", "TC", "--ground-truth", truth_path, "--reference", truth_path) == 0
    result = json.loads((tmp_path / "gt" / "result.json").read_text())
    assert result["per_model"][0]["dice_vs_ground_truth"] == pytest.approx(1.0)
    assert result["v_full"] == pytest.approx(1.0)  # Dice of the full coalition against the reference


def test_region_labels_from_torchscript_metadata_or_the_user(tmp_path):
    path = save_torchscript(TwoRegions(), tmp_path / "regions.pt",
                            {"channels": ["FLAIR"], "labels": {"WT": 0, "ET": 1}, "activation": "sigmoid",
                             "regions": {"WT": [1, 2, 4], "ET": [4]}})
    model, = load_models([path])
    target = parse_target("ET", model.labels, model.activation, 2, model.regions)
    assert target.ref_labels == (4,)  # BraTS 2018 labels, as the metadata says, not the BraTS 2021 (3,)
    assert target.in_reference(np.array([1, 3, 4])).tolist() == [False, False, True]
    model, = load_models([path], ModelOptions(regions={"ET": [3]}))
    assert parse_target("ET", model.labels, model.activation, 2, model.regions).ref_labels == (3,)
    silent = save_torchscript(TwoRegions(), tmp_path / "silent.pt", {"labels": {"WT": 0, "ET": 1}, "activation": "sigmoid"})
    model, = load_models([silent])
    target = parse_target("ET", model.labels, model.activation, 2, model.regions)
    assert target.ref_labels is None
    with pytest.raises(InputError, match="region-labels"):
        target.in_reference(np.array([1, 3]))
    with pytest.raises(InputError, match="gives 2 output channels"):
        parse_target("5", {}, "sigmoid", 2)


def test_region_labels_from_bundle_metadata(tmp_path):
    """A sigmoid MONAI bundle states its regions' label values in outputs.pred.region_labels (keyed like channel_def)."""
    root, _ = write_bundle(tmp_path / "bundle")
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"].update(
        channel_def={"0": "TC", "1": "WT", "2": "ET"}, region_labels={"0": [1, 4], "1": [1, 2, 4], "2": [4]})
    meta_file.write_text(json.dumps(meta))
    assert describe_model(root)["regions"] == {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
    model, = load_models([root], ModelOptions(trust=True))
    assert model.activation == "sigmoid"
    target = parse_target("TC", model.labels, model.activation, 3, model.regions)
    assert (target.channels, target.ref_labels) == ((0,), (1, 4))
