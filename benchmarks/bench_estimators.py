"""Region-SHAP estimators at equal budget: error against exact Shapley values, and coverage of φ̂ ± 1.96·SE.

    python benchmarks/bench_estimators.py [--seeds 10] [--games 3]

Each estimator runs as `segxai explain` runs it (SegXAILib.estimators.estimate_shapley: replicates sharing the
budget, value = their mean, SE = sd/√R). Games with exactly known values (Testing/test_estimators.py): a 27-player
game of interactions up to order 4 (the demo brain case's supervoxel count) at budgets 512 and 2048, and a
10-player table game enumerated exactly at budget 256. Prints the mean relative L2 error and the coverage per
estimator; the winner among the calibrated estimators is the default (estimators.DEFAULT_ESTIMATOR).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))
from test_estimators import table_game, unanimity_game  # noqa: E402

from SegXAILib.estimators import APPROXIMATOR_SPECS, estimate_shapley  # noqa: E402

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--games", type=int, default=3, help="random instances of each game")
    args = parser.parse_args()
    cases = [("interactions, 27 players", lambda g: unanimity_game(27, g), 27, 512),
             ("interactions, 27 players", lambda g: unanimity_game(27, g), 27, 2048),
             ("table, 10 players", lambda g: table_game(10, g), 10, 256)]
    print(f"{'game':26s} {'budget':>6s} {'estimator':22s} {'rel L2':>7s} {'coverage':>8s} {'replicates':>10s} {'cpu s':>6s}")
    for title, make, n, budget in cases:
        for name, (_, _, calibrated) in APPROXIMATOR_SPECS.items():
            errors, hits, reps = [], [], []
            t = time.process_time()
            for g in range(args.games):
                game, phi = make(100 + g)
                for seed in range(args.seeds):
                    est = estimate_shapley(game, n, budget, name, seed)
                    errors.append(np.linalg.norm(est["values"] - phi) / np.linalg.norm(phi))
                    reps.append(est["replicates"])
                    if est["std_error"] is not None:
                        hits.append(np.abs(est["values"] - phi) <= 1.96 * est["std_error"])
            cover = f"{np.mean(hits):.3f}" if hits else "null"
            print(f"{title:26s} {budget:6d} {name:22s} {np.mean(errors):7.3f} {cover:>8s} {np.mean(reps):10.1f} "
                  f"{time.process_time() - t:6.1f}", flush=True)


if __name__ == "__main__":
    main()
