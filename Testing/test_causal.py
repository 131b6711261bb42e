"""Causal ATE: regions the model cannot see and components it does not use have ATE exactly 0."""

import numpy as np
import pytest
import torch

from conftest import TwoBranch, save_torchscript
from test_contrast_shapley import FarSight
from SegXAILib.errors import ModelError
from SegXAILib.models import ModelOptions
from SegXAILib.request import CausalOptions, ExplainRequest, RegionOptions
from SegXAILib.result import read_result
from SegXAILib.run import run
from SegXAILib.volumes import Geometry, read_volume, write_volume

SHAPE = (44, 24, 24)


@pytest.fixture
def case(tmp_path):
    geo = Geometry(SHAPE, np.eye(4))
    rng = np.random.default_rng(0)
    evidence = np.zeros(SHAPE, np.float32)
    evidence[8:12, 10:14, 10:14] = 1.0
    evidence[36:42, 4:20, 4:20] = rng.random((6, 16, 16)) > 0.5  # more than 4 voxels beyond the ROI: out of FarSight's reach
    images = [str(write_volume(im, geo, tmp_path / f"c{c}.nii.gz")) for c, im in enumerate([np.ones(SHAPE, np.float32), evidence])]
    roi = np.zeros(SHAPE, np.uint8)
    roi[14:30, 4:20, 4:20] = 1
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:14, 8:16, 8:16] = 1
    labels[35:44, 2:22, 2:22] = 2
    return {"images": images, "roi": str(write_volume(roi, geo, tmp_path / "roi.nii.gz")),
            "labels": str(write_volume(labels, geo, tmp_path / "labels.nii.gz")), "dir": tmp_path, "geo": geo}


@pytest.mark.parametrize("intervention", ["baseline", "shift"])
def test_unseen_region_has_ate_exactly_zero(case, intervention):
    model = save_torchscript(FarSight(), case["dir"] / "far.pt", {"labels": {"bg": 0, "fg": 1}, "window": [16, 16, 16]})
    request = ExplainRequest(images=case["images"], models=[str(model)], out=str(case["dir"] / intervention), targets=["1"],
                             value="tp", roi_mask=case["roi"], method="causal", seed=1,
                             region=RegionOptions(features="labels", labels=case["labels"], label_names={1: "evidence", 2: "far"}),
                             causal=CausalOptions(intervention=intervention, min_samples=3, max_samples=8, tolerance=1.0))
    result = read_result(run(request))
    ate = {p["name"]: p for p in result["players"]}
    assert ate["far"]["value"] == 0.0 and ate["evidence"]["value"] < 0  # replacing the evidence loses true positives
    if intervention == "baseline":   # one deterministic sample: the effect is exact, not a zero-width "95 %" interval
        assert ate["evidence"]["n_samples"] == 1 and ate["evidence"]["value"] == -result["v_full"]
        assert ate["far"]["ci_low"] == ate["far"]["ci_high"] == 0.0 and ate["far"]["interval"].startswith("exact")
    else:
        assert ate["evidence"]["ci_low"] < ate["evidence"]["value"] < ate["evidence"]["ci_high"]
        assert ate["evidence"]["interval"] == "95% t-interval" and 3 <= ate["evidence"]["n_samples"] <= 8
        # the far region's samples all agree (exactly 0): sampled on to the cap, then no interval, said plainly
        assert ate["far"]["n_samples"] == 8 and ate["far"]["ci_low"] is None and ate["far"]["ci_high"] is None
        assert ate["far"]["interval"].startswith("none: all 8 samples identical")
    assert result["global_mask"]["players"] == ["evidence"]
    attribution, _ = read_volume(case["dir"] / intervention / result["maps"]["attribution"])
    assert attribution[9, 11, 11] == pytest.approx(ate["evidence"]["value"])


def test_unused_component_has_ate_zero(case, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "two.pt"
    torch.save(TwoBranch().state_dict(), str(weights))
    request = ExplainRequest(images=case["images"], models=[str(weights)], out=str(tmp_path / "components"), targets=["1"],
                             value="soft-dice", roi_mask=case["roi"], method="causal",
                             model_options=ModelOptions(factory="conftest:make_two_branch", labels={"bg": 0, "fg": 1}),
                             region=RegionOptions(features="lattice", cell_mm=12.0),
                             causal=CausalOptions(intervention="baseline", components=["unused", "used"], component_unit="channel"))
    result = read_result(run(request))
    rows = {(r["module"], r["channel"]): r["ate"] for r in result["components"]}
    assert all(rows[("unused", c)] == 0.0 for c in range(3))
    assert any(abs(rows[("used", c)]) > 0 for c in range(2))
    assert [abs(r["ate"]) for r in result["components"]] == sorted((abs(v) for v in rows.values()), reverse=True)


def test_torchscript_components_are_refused(case):
    model = save_torchscript(FarSight(), case["dir"] / "far.pt", {"labels": {"bg": 0, "fg": 1}})
    request = ExplainRequest(images=case["images"], models=[str(model)], out=str(case["dir"] / "x"), targets=["1"], value="tp",
                             roi_mask=case["roi"], method="causal", region=RegionOptions(features="lattice", cell_mm=12.0),
                             causal=CausalOptions(intervention="baseline", components=["pool"]))
    with pytest.raises(ModelError, match="forward hooks"):
        run(request)


class NaNWhenRemoved(torch.nn.Module):
    """FarSight whose outputs turn infinite in any window where channel 0 (all ones in the case) is removed to 0."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AvgPool3d(9, stride=1, padding=4, count_include_pad=True)

    def forward(self, x):
        fg = self.pool(x[:, 1:2]) * 50 - 1
        return torch.cat([torch.zeros_like(fg), fg], 1) + torch.log(x[:, :1].amin(dim=(2, 3, 4), keepdim=True))


def test_infinite_outputs_under_interventions_are_a_clear_error(case):
    """Finite on the case, infinite once a region is replaced by the baseline: the run stops with the same ModelError
    the other methods give (the shared check), naming the intervention, and writes nothing."""
    intervention = "baseline"
    model = save_torchscript(NaNWhenRemoved(), case["dir"] / "nan.pt", {"labels": {"bg": 0, "fg": 1}, "window": [16, 16, 16]})
    out = case["dir"] / f"nan-{intervention}"
    request = ExplainRequest(images=case["images"], models=[str(model)], out=str(out), targets=["1"], value="tp",
                             roi_mask=case["roi"], method="causal", seed=1,
                             region=RegionOptions(features="labels", labels=case["labels"], label_names={1: "evidence", 2: "far"}),
                             causal=CausalOptions(intervention=intervention, min_samples=2, max_samples=2))
    with pytest.raises(ModelError, match="NaN or infinite outputs under a causal intervention") as err:
        run(request)
    assert "--preprocess" in err.value.fix and not out.exists()
