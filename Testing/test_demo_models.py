"""The five shipped demo fold models: MONAI bundles that load through the bundle adapter and segment a fresh demo case."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from SegXAILib.demo import CHANNELS, LABELS, make_brain_case
from SegXAILib.errors import TrustError
from SegXAILib.models import ModelOptions, describe_model, load_models
from SegXAILib.volumes import Case, Geometry

MODELS = Path(__file__).resolve().parent.parent / "SegXAILib" / "Resources" / "demo_models"
FOLDS = [MODELS / f"fold{k}" for k in range(5)]
TRAINING = json.loads((MODELS / "training.json").read_text())
FRESH_SEED = 20261122  # the demo case (SegXAILib.demo.run_demo.DEMO_SEED); not a training seed (asserted below)


def test_five_bundles_with_metadata_and_training_record():
    assert all((f / "configs" / "inference.json").exists() and (f / "models" / "model.pt").exists() for f in FOLDS)
    for k, folder in enumerate(FOLDS):
        meta = json.loads((folder / "configs" / "metadata.json").read_text())
        image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
        assert image["num_channels"] == 4 and image["channel_def"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
        assert pred["num_channels"] == 4 and pred["channel_def"] == {"0": "background", "1": "necrosis", "2": "oedema", "3": "enhancing"}
        assert meta["version"] and set(meta["heldout_dice"]) == {"WT", "TC", "ET"}
        config = json.loads((folder / "configs" / "inference.json").read_text())
        assert config["inferer"]["_target_"].endswith("SlidingWindowInferer") and config["inferer"]["mode"] == "gaussian"
        fold = TRAINING["folds"][k]
        assert not set(fold["train_case_seeds"]) & set(fold["heldout_case_seeds"])
        assert meta["heldout_dice"]["WT"] == pytest.approx(fold["heldout_dice"]["WT"], abs=1e-4)
    heldout = [s for f in TRAINING["folds"] for s in f["heldout_case_seeds"]]
    assert sorted(heldout) == sorted(TRAINING["case_seeds"])  # every case held out exactly once
    assert FRESH_SEED not in TRAINING["case_seeds"]
    checkpoints = TRAINING["folds"][0]["checkpoints"]
    assert len(checkpoints) >= 3 and all((MODELS / c["file"]).exists() and c["learning_rate"] > 0 for c in checkpoints)
    assert {"seed", "case_shape", "case_spacing_mm", "network", "optimiser", "lr_schedule", "iterations", "loss", "versions",
            "wall_seconds", "heldout_dice_summary"} <= set(TRAINING)


def test_weights_are_small():
    total = sum(p.stat().st_size for f in FOLDS for p in f.rglob("*.pt"))
    assert total < 25 * 2**20
    assert all(v.dtype == torch.float16 for v in torch.load(str(FOLDS[0] / "models" / "model.pt"), weights_only=True).values()
               if v.is_floating_point())


def test_bundles_need_trust():
    info = describe_model(FOLDS[0])
    assert info["format"] == "monai-bundle" and info["channels"] == CHANNELS and info["needs_trust"]
    assert info["labels"] == LABELS
    with pytest.raises(TrustError):
        load_models(FOLDS[:1])


@pytest.fixture(scope="module")
def models():
    return load_models(FOLDS, ModelOptions(trust=True))


def test_bundles_load_through_the_adapter(models):
    assert len(models) == 5
    for model in models:
        assert model.format == "monai-bundle" and model.in_channels == 4 and model.channel_names == CHANNELS
        assert model.labels == LABELS and model.activation == "softmax"
        assert model.window.kind == "monai" and model.window.size == tuple(TRAINING["inferer"]["roi_size"])
        assert "NormalizeIntensity" in model.preprocessing


def test_fresh_case_reaches_the_model_card_dice(models):
    """On a case no fold trained on, the folds' whole-tumour Dice is close to the model card's held-out mean."""
    fresh = make_brain_case(FRESH_SEED)
    case = Case(fresh.images, Geometry(fresh.labels.shape, fresh.affine), list(CHANNELS), [""] * 4)
    expected = TRAINING["heldout_dice_summary"]["WT"]["mean"]
    truth = fresh.labels > 0
    scores = []
    for model in models:
        prepared = model.prepare(case)
        nonzero = prepared.image[0][fresh.images[0] != 0]
        assert abs(nonzero.mean()) < 1e-3 and abs(nonzero.std() - 1) < 1e-3  # the bundle's z-scoring ran
        w = model.window
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(prepared.image)[None], w.size, 4, model.module,
                                              overlap=w.overlap, mode=w.mode, sigma_scale=w.sigma_scale)
        pred = logits[0].argmax(0).numpy()
        scores.append(2 * np.logical_and(pred > 0, truth).sum() / ((pred > 0).sum() + truth.sum()))
    assert np.mean(scores) >= expected - 0.1 and min(scores) >= expected - 0.15, (scores, expected)
