"""One small result folder per method (contrast Shapley, region SHAP, causal, gradients, TracIn) for the front-end
tests: real runs through `run()` on a tiny case, seconds each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SegXAILib.request import CausalOptions, ExplainRequest, GradientOptions, RegionOptions
from SegXAILib.run import run
from SegXAILib.volumes import Geometry, write_volume

SHAPE = (32, 28, 20)


def brain_like_case(folder: Path) -> dict:
    """Three channels: 0 and 1 hold a bright blob (the target) inside a dimmer 'head', 2 is noise; ROI around the blob."""
    from conftest import ThresholdSum, affine, save_torchscript

    folder.mkdir(parents=True, exist_ok=True)
    geo = Geometry(SHAPE, affine(spacing=(2.0, 2.0, 3.0)))
    i, j, k = np.indices(SHAPE)
    head = (((i - 16) / 14.0) ** 2 + ((j - 14) / 12.0) ** 2 + ((k - 10) / 9.0) ** 2 <= 1).astype(np.float32)
    blob = (((i - 18) / 5.0) ** 2 + ((j - 12) / 4.0) ** 2 + ((k - 10) / 3.0) ** 2 <= 1).astype(np.float32)
    rng = np.random.default_rng(0)
    images = [blob * 2.0 + head * 0.3, blob * 2.0 + head * 0.2, rng.normal(size=SHAPE).astype(np.float32) * head]
    paths = [str(write_volume(im, geo, folder / f"{name}.nii.gz")) for name, im in zip("ABC", images)]
    roi = np.zeros(SHAPE, np.uint8)
    roi[13:23, 8:16, 8:13] = 1
    # 8³ windows without overlap: the receptive-field support (windows touching the ROI) is a part of the case
    meta = {"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}, "window": [8, 8, 8], "overlap": 0.0}
    models = [str(save_torchscript(ThresholdSum(w, b), folder / f"fold{n}.pt", meta))
              for n, (w, b) in enumerate((([1.0, 1.0, 0.0], 1.5), ([1.2, 0.8, 0.0], 1.4)))]
    return {"images": paths, "models": models, "roi": str(write_volume(roi, geo, folder / "roi.nii.gz")),
            "truth": str(write_volume(blob.astype(np.uint8), geo, folder / "truth.nii.gz")), "blob": blob, "geometry": geo}


def make_results(folder: Path) -> dict[str, Path]:
    """{method: result folder}; the region methods share one supervoxel partition of the case."""
    import test_tracin as tr

    case = brain_like_case(folder / "case")
    common = dict(images=case["images"], targets=["1"], roi_mask=case["roi"], device="cpu", seed=0)
    region = RegionOptions(features="supervoxel", n_players=24)
    requests = {
        "contrast-shapley": ExplainRequest(models=case["models"], method="contrast-shapley", value="dice",
                                           ground_truth=case["truth"], out=str(folder / "contrast"), **common),
        # budget 400 = 8 antithetic permutation pairs of 24 players: enough for a calibrated standard error
        "region-shap": ExplainRequest(models=case["models"][:1], method="region-shap", value="soft-dice", budget=400, region=region,
                                      out=str(folder / "region"), **common),
        "causal": ExplainRequest(models=case["models"][:1], method="causal", value="soft-dice", region=region,
                                 causal=CausalOptions(min_samples=2, max_samples=3), out=str(folder / "causal"), **common),
        "gradients": ExplainRequest(models=case["models"][:1], method="gradients", gradients=GradientOptions(n_steps=4),
                                    out=str(folder / "gradients"), **common),
    }
    out = {name: run(request) for name, request in requests.items()}
    scenario = tr.scenario(folder / "tracin-case", tr.A_CASES + [tr.blob_case(1, (1, 2, 6))], ["a1", "a2", "a3", "a4", "decisive"],
                           tr.TEST_B)
    out["tracin"] = run(tr.request(scenario, "tracin", top_k=2))
    return out
