"""Gradient baselines: analytic answers on a linear model, Grad-CAM on the input grid, exactness through sliding windows."""

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from conftest import save_torchscript
import test_region_shap
from SegXAILib.errors import InputError
from SegXAILib.evaluator import Evaluator
from SegXAILib.methods.gradients import attribute
from SegXAILib.models import LoadedModel
from SegXAILib.models.base import identity_prepare
from SegXAILib.players import support_box
from SegXAILib.request import ExplainRequest, GradientOptions, RegionOptions
from SegXAILib.result import read_result
from SegXAILib.run import run
from SegXAILib.targets import Target
from SegXAILib.volumes import Geometry, read_volume, write_volume
from SegXAILib.windows import WindowSpec

far_case = test_region_shap.far_case   # the fixture, shared

W = (0.5, -2.0, 0.0)   # foreground weights per channel; channel 2 unused


class Linear(torch.nn.Module):
    """1×1×1 convolution: foreground logit = Σ_c w_c x_c + 0.3, background logit = x_0."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], W]).view(2, 3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.3]))

    def forward(self, x):
        return self.conv(x)


def small_net() -> torch.nn.Module:
    """A small convolutional net with a coarse layer, for Grad-CAM (also importable as a --factory)."""
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 4, 3, padding=1, stride=2),
                               torch.nn.Tanh(), torch.nn.Upsample(scale_factor=2), torch.nn.Conv3d(4, 3, 1)).eval()


def _module_model(net, window=None) -> LoadedModel:
    spec = WindowSpec("monai", window, 0.5) if window else WindowSpec()
    return LoadedModel("net", "module", "", "", net, net, 2, None, {"bg": 0, "a": 1, "b": 2}, "softmax", spec, identity_prepare())


@pytest.fixture
def linear_case(tmp_path):
    shape = (12, 10, 8)
    geo = Geometry(shape, np.eye(4))
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 1.0, size=(3,) + shape).astype(np.float32)
    roi = np.zeros(shape, np.uint8)
    roi[3:9, 2:8, 2:6] = 1
    model = save_torchscript(Linear(), tmp_path / "linear.pt", {"channels": ["A", "B", "C"], "labels": {"bg": 0, "fg": 1}})
    return {"images": [str(write_volume(im, geo, tmp_path / f"c{c}.nii.gz")) for c, im in enumerate(images)], "x": images,
            "roi": roi.astype(bool), "roi_path": str(write_volume(roi, geo, tmp_path / "roi.nii.gz")), "model": str(model), "dir": tmp_path}


def _run(case, name, **gradients):
    request = ExplainRequest(images=case["images"], models=[case["model"]], out=str(case["dir"] / name), targets=["1"],
                             roi_mask=case["roi_path"], method="gradients", baseline="mean", gradients=GradientOptions(**gradients))
    out = run(request)
    return read_result(out), out


def test_linear_model_saliency_and_ig_are_analytic(linear_case):
    roi, x = linear_case["roi"], linear_case["x"]
    result, out = _run(linear_case, "sal", kind="saliency", per_channel=True)
    for c, name in enumerate("ABC"):
        channel, _ = read_volume(out / result["maps"][f"attribution_{name}"])
        assert np.allclose(channel[roi], abs(W[c]), atol=1e-6) and np.all(channel[~roi] == 0)  # |∂ Σ_ROI logit / ∂x_c|
    attribution, _ = read_volume(out / result["maps"]["attribution"])
    assert np.allclose(attribution[roi], sum(map(abs, W)), atol=1e-6)
    assert result["value_function"] == "roi-logit-sum" and result["ranking"][0] == "B"

    result, out = _run(linear_case, "ig", kind="integrated-gradients", n_steps=8, per_channel=True)
    mean = x.reshape(3, -1).mean(1)
    for c, name in enumerate("ABC"):
        channel, _ = read_volume(out / result["maps"][f"attribution_{name}"])
        assert np.allclose(channel[roi], (x[c][roi] - mean[c]) * W[c], atol=1e-5)  # (x − baseline)·w exactly
        assert np.all(channel[~roi] == 0)
    phi = {p["name"]: p["value"] for p in result["players"]}
    assert phi["C"] == 0.0
    assert sum(phi.values()) == pytest.approx(result["v_full"] - result["v_empty"], abs=1e-3)  # completeness
    assert result["v_full"] == pytest.approx(float((W[0] * x[0][roi] + W[1] * x[1][roi] + 0.3).sum()), rel=1e-5)
    assert result["per_model"][0]["completeness_gap"] < 1e-3


def test_gradients_through_windows_equal_monai_full_volume():
    model = _module_model(small_net(), window=(8, 8, 8))
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 22, 18, 12)).astype(np.float32)
    roi = np.zeros(image.shape[1:], bool)
    roi[3:9, 9:15, 2:7] = True
    ev = Evaluator(model, image, roi, np.arange(2).reshape(2, 1, 1, 1), 2, np.zeros((2, 1, 1, 1), np.float32), torch.device("cpu"))
    assert 1 < ev.stats.windows_roi < ev.stats.windows_total
    for output in ("logit", "prob"):
        ours, _ = attribute("saliency", model, ev, image, Target("a", (1,), "softmax", (1,)), output, None)
        x = torch.from_numpy(image)[None].requires_grad_(True)
        fused = sliding_window_inference(x, (8, 8, 8), 4, model.forward, overlap=0.5, mode="gaussian")[0]
        scores = fused[1] if output == "logit" else torch.softmax(fused, 0)[1]
        grad, = torch.autograd.grad(scores[torch.from_numpy(roi)].sum(), x)
        assert np.abs(ours - grad[0].abs().numpy()).max() <= 1e-5
    support = np.zeros(roi.shape, bool)
    support[support_box(ev.grid, roi)] = True
    assert not support.all() and np.all(ours[:, ~support] == 0)   # input no ROI window sees: exactly zero


def test_grad_cam_maps_onto_the_input_grid():
    from captum.attr import LayerAttribution, LayerGradCam

    net = small_net()
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 16, 12, 10)).astype(np.float32)
    roi = np.zeros(image.shape[1:], bool)
    roi[4:12, 3:8, 5:9] = True
    model = _module_model(net)
    ev = Evaluator(model, image, roi, np.arange(2).reshape(2, 1, 1, 1), 2, np.zeros((2, 1, 1, 1), np.float32), torch.device("cpu"))
    cam, info = attribute("grad-cam", model, ev, image, Target("a", (1,), "softmax", (1,)), "logit", None)
    assert cam.shape == (1,) + image.shape[1:] and info["layer"] == "2"   # the coarse conv: the last before the 1×1×1 head
    direct = LayerGradCam(lambda x: net(x)[:, 1][:, torch.from_numpy(roi)].sum(1), net[2]).attribute(torch.from_numpy(image)[None])
    direct = torch.relu(LayerAttribution.interpolate(direct, image.shape[1:], "trilinear"))[0].detach().numpy()
    assert np.abs(cam - direct).max() <= 1e-6 and cam.max() > 0   # one window: Captum's Grad-CAM exactly
    windowed = _module_model(net, window=(8, 8, 8))
    ev = Evaluator(windowed, image, roi, np.arange(2).reshape(2, 1, 1, 1), 2, np.zeros((2, 1, 1, 1), np.float32), torch.device("cpu"))
    cam, _ = attribute("grad-cam", windowed, ev, image, Target("a", (1,), "softmax", (1,)), "prob", None, layer="0")
    assert cam.shape == (1,) + image.shape[1:] and cam.min() >= 0 and cam.max() > 0


def test_grad_cam_on_factory_model_and_torchscript_refused(linear_case, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(small_net().state_dict(), path)
    images = [linear_case["images"][0], linear_case["images"][1]]
    request = ExplainRequest(images=images, models=[str(path)], out=str(tmp_path / "cam"), targets=["1"], roi_mask=linear_case["roi_path"],
                             method="gradients", gradients=GradientOptions(kind="grad-cam"))
    request.model_options.factory = "test_gradients:small_net"
    result = read_result(run(request))
    assert result["gradient"]["layer"] == "2" and [p["name"] for p in result["players"]] == ["layer 2"]
    cam, geo = read_volume(tmp_path / "cam" / result["maps"]["attribution"])
    assert cam.shape == geo.shape == linear_case["roi"].shape and cam.max() > 0
    with pytest.raises(InputError, match="TorchScript"):
        _run(linear_case, "refused", kind="grad-cam")


def test_occlusion_removes_one_player_at_a_time(far_case):
    request = ExplainRequest(images=far_case["images"], models=[far_case["model"]], out=str(far_case["dir"] / "occ"), targets=["1"],
                             value="tp", roi_mask=far_case["roi"], method="gradients", gradients=GradientOptions(kind="occlusion"),
                             region=RegionOptions(features="labels", labels=far_case["labels"], label_names={1: "evidence", 2: "quiet", 3: "still"}))
    result = read_result(run(request))
    values = {p["name"]: p["value"] for p in result["players"]}
    assert values["quiet"] == values["still"] == 0.0 and values["evidence"] == result["v_full"] - result["v_empty"] > 0
    assert result["ranking"][0] == "evidence" and set(result["maps"]) >= {"attribution", "players"}
