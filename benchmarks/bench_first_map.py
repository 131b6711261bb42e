"""Apply to map on screen: how long a user of the Slicer panel waits for the first region SHAP map and the final one.

    python benchmarks/bench_first_map.py [--runs 3] [--n-players 64] [--json PATH]

What the panel's Apply does, minus Qt, on a real `slicer-core` scene holding the Sample Data demo case (four
contrasts read by Slicer's own reader) and a markups ROI on the tumour box: the scene's inputs are written for the
engine (`mrml_adapter.write_case_files`), `segxai explain` starts through the non-blocking `EngineRunner`, and
`PanelRuns.poll()` (what the widget's 200 ms QTimer calls) loads each anytime `partial` result into the scene's
nodes, then the final one in place. The clock starts before the inputs are written and stops when nodes hold the
map, so process start, imports, model and case loading are all counted.

Printed per run: the first map, the final map, and when the map on screen first stayed within relative L2 0.1 of
the final one with the same five top regions ("settled"). The settings are the panel's defaults for region SHAP
(64 supervoxels, permutation-cached, the method's default budget) with fold 0 of the demo models, target WT.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegXAI"))  # the module's folder, as Slicer puts it on sys.path

from SegXAIPanel.runs import PanelRuns  # noqa: E402
from SegXAIPanel.sampledata import demo_case_files, demo_models  # noqa: E402

from SegXAILib import mrml_adapter as mrml  # noqa: E402
from SegXAILib.demo.run_demo import tumour_box  # noqa: E402
from SegXAILib.models.options import ModelOptions  # noqa: E402
from SegXAILib.request import ExplainRequest, RegionOptions  # noqa: E402
from SegXAILib.result import read_result  # noqa: E402
from SegXAILib.runner import EngineRunner, RunState, engine_environment, explain_argv  # noqa: E402

CHANNELS = ["T1", "T1c", "T2", "FLAIR"]
POLL_S = 0.2   # the widget's QTimer interval
REL_L2, TOP = 0.1, 5


def roi_corners(labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The RAS corners of the tumour box (the ROI a reader draws around the tumour)."""
    image = nib.load(str(labels_file))
    idx = np.argwhere(tumour_box(np.asarray(image.dataobj) > 0))
    corners = nib.affines.apply_affine(image.affine, np.array([idx.min(0) - 0.5, idx.max(0) + 0.5]))
    return corners.min(0), corners.max(0)


def values(run) -> np.ndarray:
    return np.array([p["value"] for p in run.result["players"]])


def settled(maps: list[tuple[float, np.ndarray]], final: np.ndarray) -> float | None:
    """The time from which every map shown was within REL_L2 of the final map with the same top five."""
    top = set(np.argsort(-final)[:TOP])
    ok = [np.linalg.norm(m - final) <= REL_L2 * np.linalg.norm(final) and set(np.argsort(-m)[:TOP]) == top for _, m in maps]
    for i in range(len(maps)):
        if all(ok[i:]):
            return maps[i][0]
    return None


def apply_once(work: Path, seed: int, n_players: int) -> dict:
    scene = mrml.new_scene(work / "cache")
    files = demo_case_files()
    nodes = [mrml.read_volume_node(scene, files[c], c) for c in CHANNELS]
    roi = mrml.add_roi_node(scene, *roi_corners(files["labels"]))
    out = work / f"region-shap-{seed}"
    t0 = time.perf_counter()   # Apply
    inputs = mrml.write_case_files(f"{out}-inputs", nodes, roi, None, CHANNELS)
    request = ExplainRequest(**inputs.request_fields(), models=[str(demo_models()[0])], out=str(out), targets=["WT"],
                             method="region-shap", seed=seed, device="cpu", region=RegionOptions(n_players=n_players),
                             model_options=ModelOptions(trust=True, channels=CHANNELS))
    runs = PanelRuns(scene, sys.executable)
    runs.start(EngineRunner(explain_argv(request), env=engine_environment()).start(), background=nodes[0])
    maps, shown = [], 0
    while runs.runner.state == RunState.RUNNING and time.perf_counter() - t0 < 600:
        runs.poll()
        if runs.partials > shown:
            shown = runs.partials
            maps.append((time.perf_counter() - t0, values(runs.run)))
        time.sleep(POLL_S)
    runs.poll()
    final_s = time.perf_counter() - t0
    if runs.runner.state != RunState.DONE:
        raise RuntimeError(f"The run ended {runs.runner.state.value}: {runs.runner.error}\n" + "\n".join(runs.runner.log[-20:]))
    final = values(runs.runs[0])
    maps.append((final_s, final))
    estimation = read_result(out)["estimation"]
    return {"first_map_s": maps[0][0], "final_s": final_s, "settled_s": settled(maps, final), "partials": len(maps) - 1,
            "players": len(final), "coalitions": estimation["evaluations"][0], "budget": estimation["budget"],
            "estimator": estimation["estimator"], "stopped": estimation["stopped"][0],
            "std_error_max": max(p["std_error"] or 0.0 for p in runs.runs[0].result["players"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-players", type=int, default=RegionOptions().n_players)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"region SHAP, {args.n_players} supervoxels, fold 0, WT, tumour box", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.runs):
            row = apply_once(Path(tmp) / str(seed), seed, args.n_players)
            rows.append(row)
            print(f"  seed {seed}: first map {row['first_map_s']:.1f} s, settled {row['settled_s'] or float('nan'):.1f} s, "
                  f"final {row['final_s']:.1f} s ({row['partials']} partial maps, {row['players']} players, "
                  f"{row['estimator']}, {row['coalitions']} of {row['budget']} coalitions, max SE {row['std_error_max']:.4f})",
                  flush=True)
    for key in ("first_map_s", "settled_s", "final_s"):
        got = [r[key] for r in rows if r[key] is not None]
        print(f"{key[:-2].replace('_', ' ')}: median {statistics.median(got):.1f} s (range {min(got):.1f}–{max(got):.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
