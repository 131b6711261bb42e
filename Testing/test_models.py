"""Every model format from real files: TorchScript, pickled module, state dict + factory, MONAI bundle, nnU-Net."""

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import SegResNet

from conftest import SEGRESNET, ThresholdSum, save_torchscript, write_bundle
from SegXAILib.errors import ModelError, TrustError
from SegXAILib.evaluator import Evaluator
from SegXAILib.models import ModelOptions, describe_model, load_models
from SegXAILib.volumes import Case, Geometry

def test_torchscript_metadata_and_options(tmp_path):
    path = save_torchscript(ThresholdSum([1.0, 1.0], 1.0), tmp_path / "m.pt",
                            {"channels": ["T2", "FLAIR"], "labels": {"background": 0, "lesion": 1}, "window": [8, 8, 8], "preprocess": "zscore"})
    model, = load_models([path])
    assert (model.format, model.in_channels, model.channel_names, model.labels) == ("torchscript", 2, ["T2", "FLAIR"], {"background": 0, "lesion": 1})
    assert model.window.size == (8, 8, 8) and model.preprocessing == "zscore"
    info = describe_model(path)
    assert info["needs_trust"] is False and info["channels"] == ["T2", "FLAIR"]
    model, = load_models([path], ModelOptions(channels=["a", "b"], window=(6, 6, 6)))
    assert model.channel_names == ["a", "b"] and model.window.size == (6, 6, 6)


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(ThresholdSum([1.0], 0.5), str(path))
    with pytest.raises(TrustError, match="--trust"):
        load_models([path])
    model, = load_models([path], ModelOptions(trust=True))
    assert model.format == "pickled-module" and model.in_channels == 1


def test_state_dict_with_factory_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    net = SegResNet(**SEGRESNET)
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), str(path))
    with pytest.raises(ModelError, match="--factory"):
        load_models([path])
    model, = load_models([path], ModelOptions(factory="monai.networks.nets:SegResNet", factory_kwargs=SEGRESNET))
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.forward(x), net.eval()(x))
    with pytest.raises(ModelError, match="factory-kwargs"):
        load_models([path], ModelOptions(factory="monai.networks.nets:SegResNet", factory_kwargs={**SEGRESNET, "init_filters": 16}))


def test_unreadable_model_is_a_model_error(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        load_models([bad], ModelOptions(trust=True))
    with pytest.raises(ModelError, match="does not exist"):
        load_models([tmp_path / "missing.pt"])


@pytest.fixture
def bundle(tmp_path):
    return write_bundle(tmp_path / "bundle")


def test_monai_bundle_needs_trust_then_matches_monai(bundle):
    root, config = bundle
    info = describe_model(root)
    assert info["format"] == "monai-bundle" and info["channels"] == ["T1c", "FLAIR"] and info["needs_trust"]
    with pytest.raises(TrustError):
        load_models([root])
    model, = load_models([root], ModelOptions(trust=True))
    assert model.window.size == (16, 16, 16) and model.window.overlap == 0.25 and model.labels["oedema"] == 2
    assert "NormalizeIntensity" in model.preprocessing
    rng = np.random.default_rng(2)
    images = np.abs(rng.normal(size=(2, 30, 26, 20))).astype(np.float32) * 100
    prepared = model.prepare(Case(images, Geometry(images.shape[1:], np.eye(4)), ["T1c", "FLAIR"], ["", ""]))
    assert abs(prepared.image[0][images[0] != 0].mean()) < 1e-4  # the bundle's own z-scoring ran
    roi = np.zeros(images.shape[1:], bool)
    roi[3:12, 4:20, 2:9] = True
    ev = Evaluator(model, prepared.image, roi, np.arange(2).reshape(2, 1, 1, 1), 2, np.zeros((2, 1, 1, 1), np.float32), torch.device("cpu"))
    parser = ConfigParser(config)
    inferer = parser.get_parsed_content("inferer")
    with torch.inference_mode():
        full = inferer(torch.from_numpy(prepared.image)[None], model.module)[0].numpy()
    assert np.abs(ev.full_logits().numpy() - full[:, roi]).max() <= 1e-5


def test_nnunet_folder(nnunet_folder):
    info = describe_model(nnunet_folder)
    assert info["format"] == "nnunet-v2" and info["channels"] == ["T1", "FLAIR"] and info["folds"] == ["0"] and info["needs_trust"]
    with pytest.raises(TrustError, match="--trust"):
        load_models([nnunet_folder])
    model, = load_models([nnunet_folder], ModelOptions(trust=True))
    assert model.format == "nnunet-v2" and model.window.kind == "nnunet" and model.labels == {"background": 0, "lesion": 1}
    json.loads((nnunet_folder / "plans.json").read_text())  # written by nnU-Net itself


def test_channel_count_from_the_user_or_a_forward_pass_not_the_first_convolution(blob_case, tmp_path, capsys):
    """A network that picks its 4th input before its first convolution (which takes 1 channel) takes 4 images."""
    from test_bad_inputs import PicksFourth, torchscript

    from SegXAILib.cli import main
    from SegXAILib.volumes import write_volume

    path = torchscript(tmp_path, PicksFourth(), None)
    model, = load_models([path])
    assert (model.in_channels, model.in_channels_source) == (4, "forward pass")
    assert describe_model(path)["in_channels"] == 4
    model, = load_models([path], ModelOptions(channels=["T1", "T1c", "T2", "FLAIR"]))
    assert (model.in_channels, model.in_channels_source) == (4, "user")
    fourth = str(write_volume(blob_case["blob"] * 3.0, blob_case["geometry"], tmp_path / "fourth.nii.gz"))
    args = ["explain", *sum((["--image", p] for p in [*blob_case["images"], fourth]), []), "--model", path, "--channels", "T1,T1c,T2,FLAIR",
            "--roi-mask", blob_case["roi"], "--target-label", "1", "--out", str(tmp_path / "out"), "--progress", "none"]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [p["name"] for p in result["players"]] == ["T1", "T1c", "T2", "FLAIR"]
    assert [p["value"] == 0 for p in result["players"]] == [True, True, True, False]  # only the 4th is read
