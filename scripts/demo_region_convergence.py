"""How large a budget the demo's brain region SHAP needs: its map at each budget against a much larger budget.

The game (fold 0, WT, soft Dice, the demo's supervoxels) is evaluated once per distinct coalition and shared by every
estimate, so the reference costs what it costs once. Per budget and seed it prints the relative L2 error of the
values, Spearman's ρ and the deletion AUC (MoRF, as `segxai evaluate` computes it on the same game) against the
reference. It also measures the interaction share the README's comparison of methods rests on:
1 − Σ_i (v(N) − v(N ∖ i)) / (v(N) − v(∅)) — 0 for an additive game, where leave-one-out effects (what deletion
and single-region interventions see) and Shapley values agree.

    PYTHONPATH=. python scripts/demo_region_convergence.py --reference 4096 --budgets 40 100 200 400 --seeds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from SegXAILib import faithfulness as fm
from SegXAILib.demo.brain import CHANNELS, make_brain_case, write_case
from SegXAILib.demo.run_demo import DEMO_SEED, demo_models, tumour_box
from SegXAILib.estimators import RecordingGame, estimate_shapley
from SegXAILib.methods.gradients import value_game
from SegXAILib.methods.region_shap import region_players
from SegXAILib.models import ModelOptions
from SegXAILib.progress import no_progress
from SegXAILib.request import ExplainRequest, RegionOptions
from SegXAILib.run import load_inputs
from SegXAILib.volumes import Geometry, write_volume


def demo_game(folder: Path, n_players: int, shape, spacing):
    case = make_brain_case(DEMO_SEED, shape=shape, spacing=spacing)
    paths = write_case(case, folder)
    roi = write_volume(tumour_box(case.labels), Geometry(case.labels.shape, case.affine), folder / "roi.nii.gz")
    request = ExplainRequest(images=[str(paths[c]) for c in CHANNELS], models=[str(demo_models()[0])], out=str(folder / "x"),
                             targets=["WT"], method="region-shap", value="soft-dice", roi_mask=str(roi),
                             model_options=ModelOptions(trust=True), region=RegionOptions(features="supervoxel", n_players=n_players))
    inputs = load_inputs(request)
    first, players = region_players(inputs)
    evaluator, _, vf = value_game(inputs, inputs.models[0], first, players.ids[None], players.n, "soft-dice", "WT", no_progress, None)
    return RecordingGame(lambda c: evaluator.evaluate(c, lambda z: [vf(z)])[:, 0], players.n), players


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=int, default=4096)
    ap.add_argument("--budgets", type=int, nargs="+", default=[40, 100, 200, 400])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-players", type=int, default=24)
    ap.add_argument("--small", action="store_true", help="the reduced case of the tests (64×72×64 at 3 mm)")
    args = ap.parse_args()
    shape, spacing = ((64, 72, 64), 3.0) if args.small else ((96, 112, 96), 2.0)
    with tempfile.TemporaryDirectory() as tmp:
        game, players = demo_game(Path(tmp), args.n_players, shape, spacing)
        n = players.n
        t0 = time.perf_counter()
        ref = estimate_shapley(game, n, args.reference, "kernelshap", seed=1000)["values"]
        print(f"{n} players; reference: kernelshap, budget {args.reference}, {len(game.cache)} coalitions in "
              f"{time.perf_counter() - t0:.0f} s")
        units = lambda values: fm.ranked_units(players.ids[None], values, "players")
        auc = lambda values: fm.removal_curves(game, units(values), 20)["deletion_morf"]["auc"]
        ref_auc = auc(ref)
        print(f"reference deletion MoRF AUC {ref_auc:.3f}")
        for budget in args.budgets:
            rows = []
            for seed in range(args.seeds):
                phi = estimate_shapley(game, n, budget, "kernelshap", seed=seed)["values"]
                rows.append((np.linalg.norm(phi - ref) / np.linalg.norm(ref), stats.spearmanr(phi, ref).statistic, auc(phi)))
            err, rho, a = np.array(rows).T
            print(f"budget {budget:>5}: rel. L2 error {err.mean():.3f} (max {err.max():.3f})   Spearman {rho.mean():.3f} "
                  f"(min {rho.min():.3f})   deletion AUC {a.mean():.3f} (max |Δ| vs reference {np.abs(a - ref_auc).max():.3f})")
        full, empty = game(np.array([np.ones(n, bool), np.zeros(n, bool)]))
        loo = full - game(~np.eye(n, dtype=bool))
        print(f"v(N) {full:.3f}, v(∅) {empty:.3f}; Σ leave-one-out effects {loo.sum():.3f}; interaction share "
              f"1 − Σ LOO / (v(N) − v(∅)) = {1 - loo.sum() / (full - empty):.3f}; deletion MoRF AUC ranked by LOO "
              f"{auc(loo):.3f} vs by the reference Shapley values {ref_auc:.3f}")


if __name__ == "__main__":
    main()
