"""Faithfulness and sanity: removal curves on a model whose ordering is known, ROAD imputation, correlation,
the cascading randomisation check (a degenerate explainer is flagged), and `segxai evaluate` end to end."""

import json

import numpy as np
import pytest
import torch

import test_gradients
import test_region_shap
from test_gradients import _module_model, small_net
from SegXAILib import faithfulness as fm
from SegXAILib.cli import main
from SegXAILib.evaluator import Evaluator
from SegXAILib.methods.gradients import VALUES, attribute
from SegXAILib.models import LoadedModel
from SegXAILib.models.base import identity_prepare
from SegXAILib.targets import Target
from SegXAILib.windows import WindowSpec

TARGET = Target("fg", (1,), "softmax", (1,))
far_case, linear_case = test_region_shap.far_case, test_gradients.linear_case   # the fixtures, shared


class Passthrough(torch.nn.Module):
    """Foreground logit = channel 0, background 0: the ROI logit sum is the sum of the input."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], 1)


@pytest.fixture
def slab_game():
    """Four slabs along i holding 1, 2, 3, 4 per voxel: removing a slab lowers the value by exactly its sum."""
    image = np.repeat(np.arange(1, 5, dtype=np.float32), 3).reshape(1, 12, 1, 1) * np.ones((1, 12, 6, 5), np.float32)
    ids = (np.indices(image.shape[1:])[0] // 3)[None]
    net = Passthrough()
    model = LoadedModel("pass", "module", "", "", net, net, 1, None, {"bg": 0, "fg": 1}, "softmax", WindowSpec(), identity_prepare())
    ev = Evaluator(model, image, np.ones(image.shape[1:], bool), ids, 4, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"))
    value = lambda z: VALUES["roi-logit-sum"](z, TARGET, None)
    return {"game": lambda c: ev.evaluate(c, lambda z: [value(z)])[:, 0], "ids": ids, "contributions": np.arange(1, 5) * 90.0,
            "evaluator": ev, "value": value, "image": image}


def test_deletion_curves_follow_the_known_ordering(slab_game):
    units = fm.ranked_units(slab_game["ids"], slab_game["contributions"], "players")
    curves = fm.removal_curves(slab_game["game"], units, steps=10)
    total = slab_game["contributions"].sum()
    assert curves["v_full"] == pytest.approx(total) and curves["v_empty"] == 0.0
    expected = 1 - np.concatenate([[0], np.cumsum([360, 270, 180, 90])]) / total
    assert np.allclose(curves["deletion_morf"]["normalised"], expected, atol=1e-6)
    assert np.allclose(curves["deletion_morf"]["fraction"], [0, 0.25, 0.5, 0.75, 1])
    assert curves["deletion_morf"]["auc"] < curves["deletion_lerf"]["auc"]
    assert curves["insertion_morf"]["auc"] > curves["insertion_lerf"]["auc"]
    assert curves["aopc_morf"] > curves["aopc_lerf"]
    wrong = fm.removal_curves(slab_game["game"], fm.ranked_units(slab_game["ids"], -slab_game["contributions"], "players"), steps=10)
    assert wrong["deletion_morf"]["auc"] == pytest.approx(curves["deletion_lerf"]["auc"])   # a reversed map ranks worst
    corr = fm.faithfulness_correlation(slab_game["game"], units, samples=32, share=0.25, rng=np.random.default_rng(0))
    assert corr["n_subsets"] == 14 and corr["pearson"] == pytest.approx(1.0)   # drop = attribution sum, exactly
    additive = fm.interaction_share(slab_game["game"], 4)
    assert additive["share"] == pytest.approx(0.0, abs=1e-9) and np.allclose(additive["leave_one_out"], slab_game["contributions"])


def test_interaction_share_of_known_games():
    assert fm.interaction_share(lambda c: c.any(1).astype(float), 3)["share"] == 1.0    # any one suffices: pure redundancy
    assert fm.interaction_share(lambda c: c.all(1).astype(float), 3)["share"] == -2.0   # all needed: each removal loses all
    assert fm.interaction_share(lambda c: np.zeros(len(c)), 3)["share"] is None


def test_road_follows_the_known_ordering():
    """Four blobs of height 1..4 on a zero background, model = the sum of its input: ROAD's imputation fills a removed
    blob from its zero surroundings, so each removal drops the value by that blob's sum and the normalised MoRF
    curve is known exactly (up to the 1 % imputation noise); the right ranking falls fastest, a reversed one slowest."""
    image = np.zeros((1, 24, 8, 8), np.float32)
    ids = np.full(image.shape, -1, np.int64)
    for u, h in enumerate([2.0, 4.0, 1.0, 3.0]):
        image[0, 6 * u + 1:6 * u + 5, 2:6, 2:6] = h
        ids[0, 6 * u + 1:6 * u + 5, 2:6, 2:6] = u
    heights = np.array([2.0, 4.0, 1.0, 3.0])
    net = Passthrough()
    model = LoadedModel("pass", "module", "", "", net, net, 1, None, {"bg": 0, "fg": 1}, "softmax", WindowSpec(), identity_prepare())
    baseline = np.zeros((1, 1, 1, 1), np.float32)
    ev = Evaluator(model, image, np.ones(image.shape[1:], bool), ids, 4, baseline, torch.device("cpu"))
    value = lambda z: VALUES["roi-logit-sum"](z, TARGET, None)
    road = lambda scores: fm.road_curves(ev, value, image, baseline, fm.ranked_units(ids, scores, "players"), 4, 0.01,
                                         np.random.default_rng(0))
    right, reversed_ = road(heights), road(-heights)
    expected = 1 - np.concatenate([[0], np.cumsum(np.sort(heights)[::-1])]) / heights.sum()
    assert np.allclose(right["morf"]["normalised"], expected, atol=2e-3)
    assert np.allclose(right["lerf"]["normalised"], 1 - np.concatenate([[0], np.cumsum(np.sort(heights))]) / heights.sum(), atol=2e-3)
    assert right["morf"]["auc"] == pytest.approx(0.5 * (1 + 2 * (0.6 + 0.3 + 0.1)) / 4, abs=2e-3)
    assert right["morf"]["auc"] < right["lerf"]["auc"] and reversed_["morf"]["auc"] == pytest.approx(right["lerf"]["auc"], abs=2e-3)


def test_road_imputation_continues_the_surroundings():
    i, j, k = np.indices((40, 36, 30)).astype(np.float32)
    ramp = np.stack([2 * i - j + 0.5 * k, np.full(i.shape, 3.0, np.float32)])
    removed = np.zeros(i.shape, bool)
    removed[4:36, 3:33, 2:27] = True
    removed[1, 1, 1] = True
    filled = fm.noisy_linear_impute(ramp, removed, 0.0, np.random.default_rng(0))
    assert np.abs(filled - ramp).max() < 5e-3 * ramp[0].std()   # a linear field is harmonic: no edge marks the hole
    noisy = fm.noisy_linear_impute(ramp, removed, 0.1, np.random.default_rng(0))
    assert np.array_equal(noisy[:, ~removed], ramp[:, ~removed]) and 0 < np.abs(noisy - ramp)[:, removed].std()
    everything = fm.noisy_linear_impute(ramp, np.ones(i.shape, bool), 0.0, np.random.default_rng(0))
    assert np.allclose(everything, ramp.mean((1, 2, 3))[:, None, None, None])   # no boundary: the channel mean


def _ig_setup():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 16, 12, 10)).astype(np.float32)
    roi = np.zeros(image.shape[1:], bool)
    roi[4:12, 3:8, 5:9] = True

    def integrated_gradients(models, replicate=0):
        m = models[0]
        ev = Evaluator(m, image, roi, np.arange(2).reshape(2, 1, 1, 1), 2, np.zeros((2, 1, 1, 1), np.float32), torch.device("cpu"))
        return attribute("integrated-gradients", m, ev, image, TARGET, "logit", np.zeros((2, 1, 1, 1), np.float32), n_steps=8)[0].ravel()

    probe = lambda m: m.forward(torch.from_numpy(image[None]))
    return image, integrated_gradients, probe


def test_model_randomisation_lowers_correlation_and_flags_a_degenerate_explainer():
    image, integrated_gradients, probe = _ig_setup()
    model = _module_model(small_net())
    before = model.module[0].weight.detach().clone()
    real = fm.cascading_randomisation([model], integrated_gradients, integrated_gradients([model]), steps=3, probe=probe)
    rho = [row["spearman"] for row in real["curve"]]
    assert real["n_layers"] == 3 and rho[-1] < fm.SANITY_THRESHOLD and rho[-1] < rho[0] and real["passed"] is True
    assert real["layer_order"] == "execution" and real["reproducibility"] == 1.0 and real["curve"][0]["layer"] == "5"
    assert torch.equal(model.module[0].weight, before)   # randomised copies only
    degenerate = fm.cascading_randomisation([model], lambda models, _: image.ravel(), image.ravel(), steps=3)
    assert [row["spearman"] for row in degenerate["curve"]] == [1.0, 1.0, 1.0] and degenerate["passed"] is False


class HeadFirst(torch.nn.Module):
    """Registers its output head before the body that feeds it: registration order reversed would start at the body."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.head = torch.nn.Conv3d(4, 3, 1)
        self.body = torch.nn.Conv3d(2, 4, 3, padding=1)
        self.norm = torch.nn.InstanceNorm3d(4, affine=True)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.body(x))))


def test_randomisation_starts_at_the_output_end_in_execution_order():
    image, integrated_gradients, probe = _ig_setup()
    model = _module_model(HeadFirst().eval())
    result = fm.cascading_randomisation([model], integrated_gradients, integrated_gradients([model]), steps=3, probe=probe)
    assert [row["layer"] for row in result["curve"]] == ["head", "norm", "body"] and result["layer_order"] == "execution"
    assert fm.layer_order(model.module, None) == (["norm", "body", "head"], "registration")   # what a probe avoids


def test_random_maps_fail_the_sanity_check_and_a_real_map_passes():
    """The false-pass rate of the threshold: an explainer returning a fresh random map over 16 units each call shares
    nothing with itself under another seed, so it must fail in most seeds (it would pass a test of the randomised
    correlation alone every time); IG on a real model passes."""
    image, integrated_gradients, probe = _ig_setup()
    model = _module_model(small_net())
    passed = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        noise = lambda models, replicate: rng.normal(size=16)
        passed.append(fm.cascading_randomisation([model], noise, noise([model], 0), steps=1, seed=seed)["passed"])
    assert None not in passed and np.mean(passed) < 0.1
    assert fm.cascading_randomisation([model], integrated_gradients, integrated_gradients([model]), steps=1, probe=probe)["passed"] is True


def _explain_args(case, out, *extra):
    return ["explain", "--image", case["images"][0], "--image", case["images"][1], "--model", case["model"], "--roi-mask", case["roi"],
            "--target-label", "1", "--value", "tp", "--progress", "none", "--out", str(out), *extra]


def test_evaluate_region_shap_result_end_to_end(far_case):
    out = far_case["dir"] / "shap"
    assert main(_explain_args(far_case, out, "--method", "region-shap", "--features", "labels", "--labels", far_case["labels"],
                              "--label-names", '{"1": "evidence", "2": "quiet", "3": "still"}')) == 0
    result_bytes = (out / "result.json").read_bytes()
    assert main(["evaluate", str(out), "--steps", "5", "--progress", "none"]) == 0
    assert (out / "result.json").read_bytes() == result_bytes   # the result itself is never touched
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["units"] == "players" and ev["n_units"] == 3 and ev["value_function"] == "tp"
    assert ev["deletion_morf"]["auc"] < ev["deletion_lerf"]["auc"] and ev["deletion_morf"]["normalised"][1] == 0.0
    assert ev["road"]["morf"]["auc"] <= ev["road"]["lerf"]["auc"]
    assert ev["correlation"]["pearson"] == pytest.approx(1.0)   # only the evidence matters, and it holds all the value
    assert ev["sanity"]["passed"] is None   # FarSight has no parameters to randomise
    assert all((out / name).stat().st_size > 0 for name in ev["figures"].values())


def test_evaluate_ranks_causal_regions_by_negative_ate(far_case):
    out = far_case["dir"] / "causal"
    assert main(_explain_args(far_case, out, "--method", "causal", "--features", "labels", "--labels", far_case["labels"],
                              "--intervention", "baseline", "--min-samples", "2", "--max-samples", "2", "--evaluate")) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["relevance_sign"] == -1 and result["ranking"][0] == "label 1" and result["top_k"][0]["value"] < 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["deletion_morf"]["normalised"][1] == 0.0 and ev["deletion_morf"]["auc"] < ev["deletion_lerf"]["auc"]
    assert ev["correlation"]["pearson"] == pytest.approx(1.0)   # relevance = −ATE = the drop when the evidence goes


def test_explain_evaluate_on_a_gradient_map(linear_case):
    out = linear_case["dir"] / "ig"
    assert main(["explain", *[a for im in linear_case["images"] for a in ("--image", im)], "--model", linear_case["model"],
                 "--roi-mask", linear_case["roi_path"], "--target-label", "1", "--progress", "none", "--out", str(out),
                 "--method", "gradients", "--gradient", "integrated-gradients", "--ig-steps", "4", "--evaluate"]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["units"] == "voxels" and ev["value_function"] == "roi-logit-sum"
    assert ev["deletion_morf"]["auc"] < ev["deletion_lerf"]["auc"] and ev["insertion_morf"]["auc"] > ev["insertion_lerf"]["auc"]
    assert ev["correlation"]["pearson"] == pytest.approx(1.0)   # linear model: the drop is the IG sum of the removed voxels
    assert ev["sanity"]["curve"][-1]["layers_randomised"] == 1 and set(ev["figures"]) == {"curves", "correlation", "sanity"}
