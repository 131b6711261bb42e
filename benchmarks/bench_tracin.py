"""TracIn on a training set of hundreds of cases, on CPU: how long scoring takes, and what the random projection costs.

    python benchmarks/bench_tracin.py [--cases 200] [--projection 256] [--json PATH]

The test case is the brain demo case (fold-0 bundle, WT, the tumour box); the training set is `--cases` generated
brain cases (seeds 3000, 3001, …, none among the model's training seeds), written as a user's training folder
(one subfolder per case, uncompressed NIfTI). Three runs through `run()`, side by side in one process:
1. the default parameters (the last convolution, 436 weights): exact inner products;
2. the decoder's last four convolutions (10,824 weights), exact;
3. the same four, projected to `--projection` dimensions — wall time, and how far the ranking moved from run 2
   (Spearman's ρ over all cases, overlap of the ten top proponents).
Case generation and writing are timed apart and not counted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import timed
from scipy import stats

from SegXAILib.demo.brain import make_brain_case, write_case
from SegXAILib.demo.run_demo import DEMO_SEED, demo_models, tumour_box
from SegXAILib.models import ModelOptions
from SegXAILib.request import ExplainRequest, TracInOptions
from SegXAILib.result import read_result
from SegXAILib.run import run
from SegXAILib.volumes import Geometry, write_volume

DECODER_TAIL = ["model.1.submodule.2.0.conv", "model.1.submodule.2.1.conv.unit0.conv", "model.2.0.conv", "model.2.1.conv.unit0.conv"]
SHAPE, SPACING = (96, 112, 96), 2.0   # the demo models' training cases (training.json)


def training_folder(folder: Path, n: int) -> None:
    for i in range(n):
        case = make_brain_case(3000 + i, shape=SHAPE, spacing=SPACING)
        write_case(case, folder / f"case{i:04d}", suffix=".nii")


def tracin(work: Path, test: dict, train: Path, name: str, **options) -> tuple[dict, float]:
    request = ExplainRequest(images=test["images"], models=[str(demo_models()[0])], out=str(work / name), targets=["WT"],
                             method="tracin", value="soft-dice", roi_mask=test["roi"], model_options=ModelOptions(trust=True),
                             tracin=TracInOptions(training_dir=str(train), **options))
    folder, seconds = timed(lambda: run(request))
    return read_result(folder), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--projection", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        case = make_brain_case(DEMO_SEED, shape=SHAPE, spacing=SPACING)
        paths = write_case(case, work / "test")
        roi = write_volume(tumour_box(case.labels), Geometry(case.labels.shape, case.affine), work / "test" / "roi.nii.gz")
        test = {"images": [str(paths[c]) for c in case.channel_names], "roi": str(roi)}
        _, made_s = timed(lambda: training_folder(work / "train", args.cases))
        print(f"{args.cases} training cases generated and written in {made_s:.0f} s (not counted below)")
        runs = []
        for name, options in (("last convolution, exact", {}),
                              ("decoder tail, exact", {"layers": DECODER_TAIL, "projection_dim": 0}),
                              (f"decoder tail, projected to {args.projection}", {"layers": DECODER_TAIL, "projection_dim": args.projection})):
            result, seconds = tracin(work, test, work / "train", f"run{len(runs)}", **options)
            runs.append({"name": name, "seconds": seconds, "parameters": result["parameters"]["count"],
                         "checkpoints": len(result["checkpoints"]), "scores": {e["id"]: e["score"] for e in result["influence"]}})
            print(f"{name}: {runs[-1]['parameters']} parameters × {runs[-1]['checkpoints']} checkpoints, {args.cases} cases in "
                  f"{seconds:.0f} s = {60 * args.cases / seconds:.0f} cases per minute")
        exact, projected = runs[1], runs[2]
        ids = sorted(exact["scores"])
        rho = stats.spearmanr([exact["scores"][i] for i in ids], [projected["scores"][i] for i in ids])[0]
        top_k = min(10, len(ids))
        top = lambda run: set(sorted(ids, key=lambda i: -run["scores"][i])[:top_k])
        overlap = len(top(exact) & top(projected))
        print(f"projection to {args.projection}: {exact['seconds'] / projected['seconds']:.2f}x the exact run's speed; "
              f"Spearman rho with the exact scores {rho:.3f}; top-{top_k} proponents shared {overlap}/{top_k}")
        if args.json:
            summary = [{key: value for key, value in run.items() if key != "scores"} for run in runs]
            Path(args.json).write_text(json.dumps({"cases": args.cases, "runs": summary, "spearman": rho, "top_k": top_k,
                                                   "top_k_overlap": overlap}, indent=2))

if __name__ == "__main__":
    main()
