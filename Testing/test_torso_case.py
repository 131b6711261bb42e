"""The synthetic torso CT generator and the shipped demo CT model (liver + lesion)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from SegXAILib.demo.torso import ORGANS, make_torso_case, torso_affine, write_torso_case
from SegXAILib.volumes import Case, Geometry, read_volume

DEMO_MODELS = Path(__file__).resolve().parents[1] / "SegXAILib" / "Resources" / "demo_models"
MODEL = DEMO_MODELS / "ct_liver.ts"
TEST_SEED = 4242   # in neither the training nor the held-out seeds of ct_training.json (checked below)


@pytest.fixture(scope="module")
def case():
    return make_torso_case(11)


def test_deterministic_per_seed():
    a, b, c = make_torso_case(3), make_torso_case(3), make_torso_case(4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.organs, b.organs) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.organs, c.organs)
    assert a.seed == 3 and a.channel_names == ["CT"]


def test_arrays_and_labels(case):
    assert case.images.shape == (1, 96, 80, 64) and case.images.dtype == np.float32
    assert case.organs.shape == case.labels.shape == (96, 80, 64)
    assert case.organs.dtype == np.int16 and case.labels.dtype == np.int16
    assert set(np.unique(case.organs)) == {0, *ORGANS}          # one label map: organs are disjoint by construction
    assert set(np.unique(case.labels)) == {0, 1, 2}
    np.testing.assert_array_equal(case.labels == 1, case.organs == 1)
    np.testing.assert_array_equal(case.labels == 2, case.organs == 7)
    np.testing.assert_allclose(np.diag(case.affine)[:3], (3.0, 3.0, 4.0))
    centre = case.affine @ np.array([*(np.array(case.labels.shape) - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0, atol=1e-6)


@pytest.mark.parametrize("seed", [11, 12])
def test_hounsfield_units_by_construction(seed):
    c = make_torso_case(seed)
    hu, org = c.images[0], c.organs
    liver, lesion, spine = hu[org == 1], hu[org == 7], hu[org == 5]
    assert 50 < liver.mean() < 70
    assert 15 < lesion.mean() < 40
    assert liver.mean() - lesion.mean() > 15
    assert spine.mean() > 400 and np.percentile(spine, 5) > 300
    assert 30 < hu[org == 2].mean() < 60                              # spleen
    for kidney in (3, 4):
        assert 15 < hu[org == kidney].mean() < 45
    assert 25 < hu[org == 6].mean() < 55                              # aorta, unenhanced
    corners = np.concatenate([hu[:3, :3].ravel(), hu[-3:, -3:].ravel(), hu[:3, -3:].ravel(), hu[-3:, :3].ravel()])
    assert corners.max() < -900                                       # air around the body
    top = hu[:, :, -2:]
    assert (top < -700).mean() > 0.1 and (top[top > -700] > -200).any()   # lung bases at the top, inside a body
    body = hu > -500
    assert np.median(hu[body & (org == 0)]) < 50                      # soft tissue / fat elsewhere


def test_lesions_lie_inside_the_liver():
    for seed in (11, 12, 13):
        c = make_torso_case(seed)
        lesion, liver = c.organs == 7, c.organs == 1
        assert lesion.any() and c.lesions
        grown = ndimage.binary_dilation(lesion)
        assert np.all(liver[grown & ~lesion]), f"seed {seed}: a lesion touches something other than liver"


@pytest.mark.parametrize("shape,spacing", [((48, 40, 32), (6.0, 6.0, 8.0)), ((64, 64, 48), (2.5, 2.5, 3.0)),
                                           ((100, 90, 70), (3.2, 2.9, 3.5))])
def test_other_grids(shape, spacing):
    c = make_torso_case(5, shape, spacing)
    assert c.images.shape == (1, *shape) and c.organs.shape == shape
    np.testing.assert_allclose(c.affine, torso_affine(shape, spacing))
    assert (c.organs == 1).any() and (c.organs == 5).any()
    assert c.images.min() >= -1024 and np.isfinite(c.images).all()


def test_same_anatomy_on_a_finer_grid():
    """Organ layout is laid out in millimetres: the liver's volume is close on a coarse and on a fine grid."""
    coarse, fine = make_torso_case(6), make_torso_case(6, (120, 100, 80), (2.4, 2.4, 3.2))
    v_coarse = (coarse.organs == 1).sum() * 36.0
    v_fine = (fine.organs == 1).sum() * 2.4 * 2.4 * 3.2
    assert abs(v_coarse - v_fine) / v_coarse < 0.05


def test_write_torso_case(tmp_path, case):
    paths = write_torso_case(case, tmp_path / "ct")
    assert set(paths) == {"CT", "organs", "labels"}
    ct, geo = read_volume(paths["CT"])
    organs, geo_o = read_volume(paths["organs"])
    labels, _ = read_volume(paths["labels"])
    assert geo.differences(Geometry(case.labels.shape, case.affine)) == [] and geo_o.differences(geo) == []
    np.testing.assert_allclose(ct, case.images[0], atol=1e-3)
    np.testing.assert_array_equal(organs, case.organs)
    np.testing.assert_array_equal(labels, case.labels)


def test_shipped_ct_model_loads_and_segments():
    import torch
    from monai.inferers import sliding_window_inference

    from SegXAILib.models import load_models

    assert MODEL.is_file(), "SegXAILib/Resources/demo_models/ct_liver.ts is missing: run scripts/train_ct_model.py"
    assert MODEL.stat().st_size < 3_000_000
    record = json.loads((DEMO_MODELS / "ct_training.json").read_text())
    assert TEST_SEED not in record["data"]["train_seeds"] + record["data"]["val_seeds"]

    (model,) = load_models([MODEL])
    assert model.format == "torchscript" and model.channel_names == ["CT"] and model.preprocessing == "ct"
    assert model.in_channels == 1 and model.activation == "softmax"
    assert model.labels == {"background": 0, "liver": 1, "lesion": 2}

    c = make_torso_case(TEST_SEED)
    prepared = model.prepare(Case(c.images, Geometry(c.labels.shape, c.affine), ["CT"], ["generated"]))
    assert 0.0 <= prepared.image.min() and prepared.image.max() <= 1.0       # clipped to [-1000, 1000] HU and scaled
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # a slim net on small windows: one thread is fastest on a shared 2-core machine
    try:
        with torch.no_grad():
            x = torch.from_numpy(prepared.image[None])
            if model.window.size:
                logits = sliding_window_inference(x, model.window.size, 1, model.forward, overlap=model.window.overlap, mode="gaussian")
            else:
                logits = model.forward(x)
    finally:
        torch.set_num_threads(threads)
    pred = logits[0].argmax(0).numpy()
    truth = c.labels
    dice_liver = 2 * ((pred == 1) & (truth == 1)).sum() / ((pred == 1).sum() + (truth == 1).sum())
    assert dice_liver >= record["held_out_dice"]["liver"] - 0.1, (dice_liver, record["held_out_dice"])
    assert (pred == 2).any()                                                  # it finds lesion voxels
