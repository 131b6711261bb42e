"""Region SHAP against the naive way, side by side in one process, at equal budget.

    python benchmarks/bench_region_shap.py [--budget 32] [--players 24] [--skip-brats] [--json PATH]

1. Speed, on the brain demo case (shipped fold-0 model) and on a BraTS-sized case (4 × 240×240×155 at 1 mm,
   random-weight SegResNet, 96³ windows; ROI = the tumour box, and a focal 24 mm cube on the enhancing tumour): SegXAI's region SHAP (ROI-restricted windows, memoised window logits,
   shapiq KernelSHAP) vs Captum's `KernelShap` with the same players as `feature_mask` over the full volume, each
   coalition through MONAI's full-volume `sliding_window_inference` — wall time and ratio, and the share of
   (coalition, window) evaluations the cache saved.
2. Accuracy, on a 12-supervoxel game from the demo case: max |error| against exact enumeration at equal numbers of
   model evaluations, shapiq KernelSHAP (ours) vs Captum KernelShap, both on the very same game.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from captum.attr import KernelShap
from common import CHANNELS, save_segresnet, timed, tumour_roi
from monai.inferers import sliding_window_inference

from SegXAILib.demo.brain import make_brain_case
from SegXAILib.demo.run_demo import demo_models
from SegXAILib.estimators import estimate_shapley
from SegXAILib.evaluator import Evaluator
from SegXAILib.models import ModelOptions, load_models
from SegXAILib.players import build_players, support_box
from SegXAILib.targets import parse_target
from SegXAILib.values import soft_dice
from SegXAILib.volumes import Case, Geometry
from SegXAILib.windows import make_grid

warnings.filterwarnings("ignore", category=UserWarning)


def focal_roi(labels: np.ndarray, size: int) -> np.ndarray:
    """A small cube (`size` voxels) centred on the enhancing tumour: the spot a reader questions."""
    centre = np.round(np.argwhere(labels == 3).mean(0)).astype(int)
    lo = np.clip(centre - size // 2, 0, np.array(labels.shape) - size)
    roi = np.zeros(labels.shape, bool)
    roi[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return roi


def setup(model, case, players_wanted: int, kind: str = "supervoxel", roi: np.ndarray | None = None):
    """Model-space image, ROI (default: the tumour box), players in the support crop, and the WT target."""
    prepared = model.prepare(Case(case.images, Geometry(case.labels.shape, case.affine), list(CHANNELS), [""] * 4))
    roi = tumour_roi(case.labels) if roi is None else roi
    box = support_box(make_grid(model.window, roi.shape), roi)
    players = build_players(kind, prepared.image, prepared.geometry.spacing, box, n_players=players_wanted)
    return prepared.image, roi, players, parse_target("WT", model.labels, model.activation, 4)


def ours(model, image, roi, players, target, budget: int, seed: int):
    ev = Evaluator(model, image, roi, players.ids[None], players.n, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"))
    ref = target.hard(ev.full_logits())
    est = estimate_shapley(lambda c: ev.evaluate(c, lambda z: [soft_dice(z, target, ref)])[:, 0], players.n, budget, "kernelshap", seed)
    return est, ev


def naive(model, image, roi, players, target, budget: int, batch: int, seed: int):
    """Captum KernelShap over the full volume, each perturbation through full-volume sliding-window inference."""
    x = torch.from_numpy(image)[None]
    with torch.inference_mode():
        full = sliding_window_inference(x, model.window.size, batch, model.module, overlap=model.window.overlap, mode=model.window.mode)
    ref = target.hard(full[0][:, torch.from_numpy(roi)])
    roi_t = torch.from_numpy(roi)
    calls = [0]

    def forward(batch_x):
        calls[0] += batch_x.shape[0]
        with torch.inference_mode():
            out = sliding_window_inference(batch_x, model.window.size, batch, model.module, overlap=model.window.overlap, mode=model.window.mode)
        return torch.tensor([soft_dice(o[:, roi_t], target, ref) for o in out])

    mask = torch.from_numpy(np.where(players.ids >= 0, players.ids, players.n))[None, None]  # outside the crop: one more feature
    torch.manual_seed(seed)
    phi = KernelShap(forward).attribute(x, baselines=0.0, feature_mask=mask, n_samples=budget, perturbations_per_eval=batch)
    return phi, calls[0]


def speed(name: str, model, case, budget: int, n_players: int, seed: int, roi: np.ndarray | None = None) -> dict:
    image, roi, players, target = setup(model, case, n_players, roi=roi)
    (est, ev), ours_s = timed(lambda: ours(model, image, roi, players, target, budget, seed))
    (_, calls), naive_s = timed(lambda: naive(model, image, roi, players, target, budget, ev.batch_size, seed))
    stats = ev.stats.to_json()
    row = {"case": name, "shape": list(image.shape), "roi_voxels": int(roi.sum()), "players": players.n, "budget": budget, "ours_s": ours_s, "naive_s": naive_s,
           "speedup": naive_s / ours_s, "naive_model_calls": calls, "ours_coalitions": est["evaluations"],
           "windows_total": stats["windows_total"], "windows_roi": stats["windows_roi"],
           "window_evaluations": stats["window_evaluations"], "cache_saving": stats["cache_saving"]}
    print(f"{name}, ROI {int(roi.sum())} voxels: {players.n} supervoxels, budget {budget}: ours {ours_s:.1f} s vs Captum+MONAI full volume {naive_s:.1f} s "
          f"-> {naive_s / ours_s:.1f}x; windows over ROI {stats['windows_roi']}/{stats['windows_total']}; "
          f"cache saved {100 * stats['cache_saving']:.1f} % of (coalition, window) evaluations")
    return row


def accuracy(model, case, seed: int, budgets=(32, 64, 128, 256)) -> list[dict]:
    image, roi, players, target = setup(model, case, 12)
    ev = Evaluator(model, image, roi, players.ids[None], players.n, np.zeros((1, 1, 1, 1), np.float32), torch.device("cpu"))
    ref = target.hard(ev.full_logits())
    game = lambda c: ev.evaluate(np.atleast_2d(c), lambda z: [soft_dice(z, target, ref)])[:, 0]
    exact = estimate_shapley(game, players.n, None)
    scale = max(abs(exact["v_full"] - exact["v_empty"]), 1e-12)
    rows = []
    for budget in budgets:
        mine = estimate_shapley(game, players.n, budget, "kernelshap", seed)["values"]
        torch.manual_seed(seed)
        forward = lambda x: torch.from_numpy(game(x.numpy() > 0.5))
        theirs = KernelShap(forward).attribute(torch.ones(1, players.n, dtype=torch.float64), baselines=0.0, n_samples=budget,
                                               perturbations_per_eval=64)[0].numpy()
        rows.append({"budget": budget, "ours_error": float(np.abs(mine - exact["values"]).max() / scale),
                     "captum_error": float(np.abs(theirs - exact["values"]).max() / scale)})
        print(f"   budget {budget:4d}: max |error| / |v_full - v_empty|  ours {rows[-1]['ours_error']:.4f}   Captum {rows[-1]['captum_error']:.4f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--players", type=int, default=24, help="supervoxels wanted (SLIC may give a few more); keep them "
                        "below the budget, as `segxai explain` requires")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-brats", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    figures = {"speed": [], "accuracy": None}
    demo_model = load_models([demo_models()[0]], ModelOptions(trust=True))[0]
    demo_case = make_brain_case(11)
    figures["speed"].append(speed("brain demo case (fold 0)", demo_model, demo_case, args.budget, args.players, args.seed))
    if not args.skip_brats:
        with tempfile.TemporaryDirectory() as work:
            model = load_models([save_segresnet(0, Path(work) / "segresnet.pt", 96, 0.25)])[0]
            brats = make_brain_case(7, shape=(240, 240, 155), spacing=1.0)
            for label, roi in (("tumour box", None), ("focal 24 mm cube", focal_roi(brats.labels, 24))):
                figures["speed"].append(speed(f"BraTS-sized case (SegResNet, 96³ windows), {label}", model, brats, args.budget,
                                              args.players, args.seed, roi))
    print("estimator error vs exact enumeration (12 supervoxels, demo case), equal model evaluations:")
    figures["accuracy"] = accuracy(demo_model, demo_case, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
