"""ROI-restricted evaluation equals full-volume sliding-window inference inside the ROI."""

import threading

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet

from SegXAILib.errors import Cancelled
from SegXAILib.evaluator import Evaluator
from SegXAILib.models import LoadedModel, ModelOptions, load_models
from SegXAILib.models.base import identity_prepare
from SegXAILib.volumes import Case, Geometry
from SegXAILib.windows import WindowSpec


def _segresnet_model(window=(24, 24, 24), overlap=0.5) -> LoadedModel:
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=8, blocks_down=(1, 2), blocks_up=(1,)).eval()
    return LoadedModel("segresnet", "module", "", "", net, net, 4, None, {"bg": 0, "a": 1, "b": 2}, "softmax",
                       WindowSpec("monai", window, overlap, "gaussian", 0.125), identity_prepare())


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 64, 56, 40)).astype(np.float32)


def _roi(shape):
    roi = np.zeros(shape, bool)
    roi[10:20, 30:40, 5:12] = True
    return roi


def _monai(model, image):
    with torch.inference_mode():
        return sliding_window_inference(torch.from_numpy(image)[None], model.window.size, 3, model.forward,
                                        overlap=model.window.overlap, mode="gaussian")[0].numpy()


def test_roi_restricted_equals_monai_full_volume(image):
    model = _segresnet_model()
    roi = _roi(image.shape[1:])
    players = np.arange(4).reshape(4, 1, 1, 1)
    ev = Evaluator(model, image, roi, players, 4, np.zeros((4, 1, 1, 1), np.float32), torch.device("cpu"), batch_size=3)
    assert ev.stats.windows_roi < ev.stats.windows_total
    full = _monai(model, image)
    assert np.abs(ev.full_logits().numpy() - full[:, roi]).max() <= 1e-5
    # a coalition without channel 2: the cached delta update equals running MONAI on the ablated image
    ablated = image.copy()
    ablated[2] = 0
    got = ev.evaluate(np.array([[True, True, False, True]]), lambda z: [z.numpy()])
    ref = _monai(model, ablated)[:, roi]
    assert np.abs(np.asarray(got[0][0]) - ref).max() <= 1e-5


def test_batch_size_and_cache_do_not_change_values(image):
    model = _segresnet_model()
    roi = _roi(image.shape[1:])
    region = np.full((1,) + image.shape[1:], -1)
    region[0, 12:18, 32:38, 6:10] = 0       # one region player near the ROI, the rest never removed
    region[0, 54:62, 0:8, 30:38] = 1        # one far away: windows over the ROI never see it
    coalitions = np.array([[True, True], [False, True], [True, False], [False, False]])
    runs = []
    for batch in (1, 5):
        ev = Evaluator(model, image, roi, region, 2, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"), batch_size=batch)
        runs.append(ev.evaluate(coalitions, lambda z: [float(z.double().sum())]))
        assert ev.stats.window_reuses > 0
    assert np.allclose(runs[0], runs[1], rtol=1e-6, atol=0)  # batching changes float32 summation order only
    assert runs[0][1] != runs[0][0] and runs[0][2] == runs[0][0]  # the far player cannot change the ROI


def test_groups_shrink_to_their_memory_and_keep_the_values(image):
    """Exact enumeration evaluates all 2^n coalitions in one call: one float64 accumulator per coalition of a group
    must fit `group_bytes`. With room for one and no memo, nothing is shared, and the values stay the same."""
    model = _segresnet_model()
    roi = _roi(image.shape[1:])
    region = np.full((1,) + image.shape[1:], -1)
    region[0, 12:18, 32:38, 6:10] = 0
    region[0, 54:62, 0:8, 30:38] = 1
    coalitions = np.array([[False, True], [False, True]])    # in one group, the second copy's windows are shared
    runs, evaluators = [], []
    for memo, group in ((1 << 30, 1 << 30), (0, 1)):
        ev = Evaluator(model, image, roi, region, 2, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"),
                       batch_size=2, memo_bytes=memo, group_bytes=group)
        runs.append(ev.evaluate(coalitions, lambda z: [float(z.double().sum())], group=len(coalitions)))
        evaluators.append(ev)
    shared, alone = (e.stats.window_evaluations - e.stats.windows_roi for e in evaluators)   # less the full pass
    affected = evaluators[1].affected(coalitions).sum(1)
    assert alone == affected.sum() and shared == affected[0] > 0
    assert np.allclose(runs[0], runs[1], rtol=1e-6, atol=0)


def test_progress_and_cancel(image):
    model = _segresnet_model()
    roi = _roi(image.shape[1:])
    seen = []
    ev = Evaluator(model, image, roi, np.arange(4).reshape(4, 1, 1, 1), 4, np.zeros((4, 1, 1, 1), np.float32),
                   torch.device("cpu"), batch_size=2, progress=lambda d, t, s: seen.append((d, t)))
    ev.evaluate(np.array([[False, True, True, True]]), lambda z: [0.0])
    assert seen[-1][0] == seen[-1][1] > 0
    cancel = threading.Event()
    cancel.set()
    ev.cancel = cancel
    with pytest.raises(Cancelled):
        ev.evaluate(np.array([[False, True, True, True]]), lambda z: [0.0])


def test_nnunet_grid_matches_nnunet_sliding_window(nnunet_folder):
    """On nnU-Net's grid and Gaussian the ROI-restricted output matches nnU-Net's own prediction (which fuses in fp16)."""
    model = load_models([nnunet_folder], ModelOptions(trust=True, mirroring=False))[0]
    rng = np.random.default_rng(5)
    shape = (70, 64, 48)  # larger than the patch: several windows
    images = rng.normal(size=(2,) + shape).astype(np.float32)
    images[:, 20:40, 20:40, 10:30] += 3
    prepared = model.prepare(Case(images, Geometry(shape, np.diag([1.2, 1.0, 1.5, 1.0])), ["T1", "FLAIR"], ["", ""]))
    roi = np.zeros(prepared.image.shape[1:], bool)
    roi[5:25, 10:30, 8:20] = True
    ev = Evaluator(model, prepared.image, roi, np.arange(2).reshape(2, 1, 1, 1), 2, np.zeros((2, 1, 1, 1), np.float32),
                   torch.device("cpu"), batch_size=2)
    assert 1 < ev.stats.windows_roi < ev.stats.windows_total
    predictor = model.forward.__self__
    with torch.inference_mode():
        full = predictor.predict_sliding_window_return_logits(torch.from_numpy(prepared.image)).float().numpy()
    ours = ev.full_logits().numpy()
    ref = full[:, roi]
    assert np.abs(ours - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("kind", ["zero", "mean", "min"])
def test_every_baseline_on_padded_windows_equals_monai_on_the_ablated_image(kind):
    """The volume is thinner than the window along j, so MONAI pads it: the padding of the *ablated* image is 0."""
    from SegXAILib.methods.base import baseline_values

    model = _segresnet_model()
    rng = np.random.default_rng(3)
    image = (rng.normal(size=(4, 40, 18, 30)) + 2.0).astype(np.float32)  # mean and min far from 0
    roi = np.zeros(image.shape[1:], bool)
    roi[8:30, 2:16, 5:25] = True
    baseline = baseline_values(image, kind)
    contrasts = Evaluator(model, image, roi, np.arange(4).reshape(4, 1, 1, 1), 4, baseline, torch.device("cpu"), batch_size=4)
    assert any(a or b for a, b in contrasts.grid.pad)
    region = np.full((1,) + image.shape[1:], -1)
    region[0, 10:20, :, 8:16] = 0
    regions = Evaluator(model, image, roi, region, 1, baseline, torch.device("cpu"), batch_size=4)
    cases = [(contrasts, np.array([True, False, True, False]), lambda a: a.__setitem__((slice(1, 4, 2),), baseline[1::2])),
             (regions, np.array([False]), lambda a: a.__setitem__((slice(None), slice(10, 20), slice(None), slice(8, 16)),
                                                                   np.broadcast_to(baseline, (4, 10, 18, 8))))]
    for ev, coalition, ablate in cases:
        ablated = image.copy()
        ablate(ablated)
        got = ev.evaluate(coalition[None], lambda z: [z.numpy()])[0][0]
        ref = _monai(model, ablated)[:, roi]
        assert np.abs(np.asarray(got) - ref).max() <= 1e-5, kind
