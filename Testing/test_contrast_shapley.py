"""Contrast Shapley against answers fixed by the Shapley axioms, on TorchScript models built here."""

import json

import numpy as np
import pytest
import torch

from conftest import ThresholdSum, save_torchscript
from SegXAILib.request import ExplainRequest
from SegXAILib.result import read_result
from SegXAILib.run import run
from SegXAILib.volumes import Geometry, write_volume


def _request(case, out, **kw) -> ExplainRequest:
    args = dict(images=case["images"], models=[case["model"]], out=str(out), targets=["1"], roi_mask=case["roi"])
    args.update(kw)
    return ExplainRequest(**args)


def test_and_gate_gives_half_half_zero(blob_case, tmp_path):
    result = read_result(run(_request(blob_case, tmp_path / "out", ground_truth=blob_case["truth"])))
    values = {p["name"]: p["value"] for p in result["players"]}
    assert values == {"A": 0.5, "B": 0.5, "C": 0.0}  # exact: v = 1 iff both A and B are present
    assert (result["v_empty"], result["v_full"]) == (0.0, 1.0)
    assert result["efficiency_gap"] == 0.0
    assert result["ranking"][-1] == "C"
    assert result["per_model"][0]["dice_vs_ground_truth"] > 0.9
    assert {c["value"] for c in result["per_model"][0]["coalition_values"] if set(c["present"]) >= {"A", "B"}} == {1.0}
    prov = result["provenance"]
    assert prov["seed"] == 0 and prov["models"][0]["sha256"] and prov["versions"]["torch"] and prov["timings"]["total_s"] > 0
    assert set(result["maps"]) == {"roi", "prediction"}


class UsesTwo(torch.nn.Module):
    """A random conv net that reads only channels 0 and 1, through their sum (so they are exactly symmetric)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(2, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(6, 3, 3, padding=1))

    def forward(self, x):
        s = x[:, 0:1] + x[:, 1:2]
        return self.net(torch.cat([s, x[:, 3:4]], dim=1)) * 4


@pytest.mark.parametrize("value", ["soft-dice", "mean-prob", "fp"])
def test_unused_channel_is_exactly_zero_and_symmetric_channels_are_equal(tmp_path, value):
    shape = (30, 26, 22)
    geo = Geometry(shape, np.diag([1.0, 1.0, 1.0, 1.0]))
    rng = np.random.default_rng(1)
    shared = rng.normal(size=shape).astype(np.float32)
    images = [shared, shared.copy(), rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)]
    paths = [str(write_volume(im, geo, tmp_path / f"c{c}.nii.gz")) for c, im in enumerate(images)]
    roi = np.zeros(shape, np.uint8)
    roi[5:20, 6:18, 4:15] = 1
    model = save_torchscript(UsesTwo(), tmp_path / "m.pt", {"channels": ["T1", "T1c", "T2", "FLAIR"], "labels": {"bg": 0, "a": 1, "b": 2},
                                                          "window": [16, 16, 16], "overlap": 0.5})
    request = ExplainRequest(images=paths, models=[str(model)], out=str(tmp_path / "out"), targets=["1", "2"], value=value,
                             roi_mask=str(write_volume(roi, geo, tmp_path / "roi.nii.gz")), reference=None)
    out = run(request)
    index = json.loads((out / "index.json").read_text())
    assert index["results"] == ["1", "2"]
    for target in ("1", "2"):
        result = read_result(out / target)
        phi = {p["name"]: p["value"] for p in result["players"]}
        assert phi["T2"] == 0.0
        assert phi["T1"] == phi["T1c"]
        assert abs(sum(phi.values()) - (result["v_full"] - result["v_empty"])) < 1e-9
        stats = result["provenance"]["evaluator"][0]
        assert 1 < stats["windows_roi"] <= stats["windows_total"]


class FarSight(torch.nn.Module):
    """Foreground where channel 1 has evidence within a 9-voxel box: evidence outside the ROI still reaches it."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AvgPool3d(9, stride=1, padding=4, count_include_pad=True)

    def forward(self, x):
        fg = self.pool(x[:, 1:2]) * 50 - 1
        return torch.cat([torch.zeros_like(fg), fg], 1)


def test_evidence_outside_the_roi_inside_the_receptive_field_is_found(tmp_path):
    shape = (40, 24, 24)
    geo = Geometry(shape, np.eye(4))
    evidence = np.zeros(shape, np.float32)
    evidence[8:12, 10:14, 10:14] = 1.0  # outside the ROI (which starts at i = 14), within 4 voxels of it
    images = [np.ones(shape, np.float32), evidence]
    paths = [str(write_volume(im, geo, tmp_path / f"c{c}.nii.gz")) for c, im in enumerate(images)]
    roi = np.zeros(shape, np.uint8)
    roi[14:30, 4:20, 4:20] = 1
    model = save_torchscript(FarSight(), tmp_path / "far.pt", {"labels": {"bg": 0, "fg": 1}, "window": [16, 16, 16]})
    result = read_result(run(ExplainRequest(images=paths, models=[str(model)], out=str(tmp_path / "o"), targets=["1"],
                                            value="tp", roi_mask=str(write_volume(roi, geo, tmp_path / "roi.nii.gz")))))
    phi = {p["name"]: p["value"] for p in result["players"]}
    assert phi["c1"] > 0 and phi["c0"] == 0.0
    assert result["v_full"] == phi["c1"] > 0


def test_folds_give_rank_variance_and_concordance(blob_case, tmp_path):
    second = save_torchscript(ThresholdSum([1.0, 0.2, 1.0], 1.5), tmp_path / "fold1.pt",
                              {"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}})
    result = read_result(run(_request(blob_case, tmp_path / "out", models=[blob_case["model"], str(second)], value="soft-dice",
                                      clinician_ranking="A,B,C")))
    per_model = np.array([m["values"] for m in result["per_model"]])
    assert np.allclose([p["value"] for p in result["players"]], per_model.mean(0))
    assert np.allclose([p["std"] for p in result["players"]], per_model.std(0, ddof=1))
    ranks = np.array([m["ranks"] for m in result["per_model"]])
    assert np.allclose([p["rank_variance"] for p in result["players"]], ranks.var(0))
    assert result["uncertainty"]["rank_variance_mean"] > 0
    assert result["agreement"]["clinician_ranking"] == ["A", "B", "C"]
    assert len(result["agreement"]["per_model_tau"]) == 2
