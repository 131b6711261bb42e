"""Cohort wall time with 1 vs 2 (or N) embedded Dask workers on the same demo cases, side by side in one process.

    python benchmarks/bench_cohort.py [--cases 6] [--crop 64] [--folds 5] [--workers 1 2] [--json PATH]

Each setting runs `run_cohort` on a fresh output folder (so nothing is skipped), including the LocalCluster's
start-up and the per-worker model loading; with W workers on C cores each worker gets C // W torch threads, so
every setting uses the whole machine. Prints wall times, the ratio to the first setting, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from SegXAILib.cohort.cases import read_cases
from SegXAILib.cohort.pipeline import run_cohort
from SegXAILib.demo.cohort import write_demo_cohort
from SegXAILib.demo.run_demo import demo_models
from SegXAILib.models import ModelOptions
from SegXAILib.request import ExplainRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--crop", type=int, default=64, help="0: whole 96×112×96 heads")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segxai-bench-cohort-"))
    cases = read_cases(write_demo_cohort(args.cases, work / "cases", crop=args.crop or None), None)
    archs = {"demo-unet": [str(p) for p in demo_models()[:args.folds]]}
    template = ExplainRequest(images=[], models=[], out="", targets=["WT", "TC", "ET"], model_options=ModelOptions(trust=True))
    rows = []
    for n in args.workers:
        load = os.getloadavg()
        t0 = time.perf_counter()
        doc = run_cohort(cases, archs, template, work / f"out-{n}", workers=n, n_resamples=200)
        wall = time.perf_counter() - t0
        assert doc["run"]["computed"] == args.cases, doc["failures"]
        rows.append({"workers": n, "wall_s": round(wall, 1), "torch_threads_per_worker": doc["run"]["torch_threads_per_worker"],
                     "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()]})
        print(f"{n} worker(s): {wall:7.1f} s  ({doc['run']['torch_threads_per_worker']} torch threads each; "
              f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f})", flush=True)
    for r in rows:
        r["ratio_to_first"] = round(rows[0]["wall_s"] / r["wall_s"], 2)
    print(f"{args.cases} cases, {args.folds} folds, crop {args.crop or 'none'}, {os.cpu_count()} cores: "
          + ", ".join(f"{rows[0]['workers']} → {r['workers']} workers speed-up ×{r['ratio_to_first']:.2f}" for r in rows[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": args.cases, "folds": args.folds, "crop": args.crop, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
