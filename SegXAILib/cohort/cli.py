"""The `segxai cohort` and `segxai demo-cohort` subcommands (argument parsing and progress display only)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from ..progress import format_event

DEFAULT_ARCHITECTURE = "demo-unet"


def add_parsers(sub, model_arguments) -> None:
    c = sub.add_parser("cohort", help="contrast Shapley over many cases on Dask, with the cohort statistics and report")
    c.add_argument("--cases", required=True, help="CSV (case_id, image_<channel>..., roi_mask, ground_truth) or a folder of case folders")
    c.add_argument("--out", required=True, help="cohort folder; an earlier run's folder is resumed (finished cases are skipped)")
    c.add_argument("--model", action="append", help="one per fold of a single architecture (default: the five demo fold models)")
    c.add_argument("--models", action="append", metavar="NAME=PATH[,PATH...]", help="an architecture and its fold models; repeat per architecture")
    c.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: an embedded LocalCluster)")
    c.add_argument("--workers", type=int, help="embedded cluster: worker processes (default: one per core)")
    c.add_argument("--target-label", action="append", help="regions (default WT, TC, ET)")
    c.add_argument("--value", default="dice")
    c.add_argument("--reference", choices=["prediction", "ground-truth"], default="prediction",
                   help="what the value compares against: each model's own prediction (as segxai explain), or the case's ground truth")
    c.add_argument("--baseline", default="zero", choices=["zero", "mean", "min"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    c.add_argument("--clinician-ranking", help="e.g. FLAIR,T2,T1c,T1 or a JSON table (default: Resources/clinician_rankings.json)")
    c.add_argument("--batch-size", type=int)
    c.add_argument("--resample", action="store_true")
    c.add_argument("--dice-threshold", type=float, default=0.6, help="agreement is compared between cases above and at/below it")
    c.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95 %% intervals")
    c.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    model_arguments(c)

    d = sub.add_parser("demo-cohort", help="write N BraTS-like cases of graded difficulty and their cases.csv")
    d.add_argument("--cases", type=int, default=20)
    d.add_argument("--out", required=True)
    d.add_argument("--crop", type=int, help="keep a CROP³ block around each tumour (64: one model window, ~8× faster cohorts)")


def architectures(args) -> tuple[dict[str, list[str]], bool]:
    """{name: model paths} and whether they are the shipped demo models (which are trusted)."""
    archs: dict[str, list[str]] = {}
    for spec in args.models or []:
        name, sep, paths = spec.partition("=")
        if not sep or not name or not paths:
            raise InputError(f"--models {spec!r} is not NAME=PATH[,PATH...].", "Write e.g. --models unet=f0.pt,f1.pt,f2.pt.")
        archs[name] = paths.split(",")
    if args.model:
        archs["model"] = list(args.model)
    if archs:
        return archs, False
    from ..demo.run_demo import demo_models

    return {DEFAULT_ARCHITECTURE: [str(p) for p in demo_models()]}, True


def progress_printer(kind: str):
    def show(event: dict) -> None:
        if kind == "json":
            if event["event"] == "cohort-done":
                print(format_event("done", out=event["out"]), file=sys.stderr, flush=True)
            else:
                print(format_event("progress", stage="cohort", done=event["computed"] + event["failed"],
                                   total=event["computed"] + event["failed"] + event["remaining"],
                                   **{k: event[k] for k in ("failed", "skipped", "remaining", "elapsed_s", "eta_s")}), file=sys.stderr, flush=True)
        elif kind == "bar" and event["event"] != "cohort-done":
            eta = "" if event["eta_s"] is None else f", ETA {event['eta_s']:.0f} s"
            print(f"cohort: {event['done']}/{event['total']} done ({event['skipped']} from earlier runs), {event['failed']} failed, "
                  f"{event['remaining']} remaining, {event['elapsed_s']:.0f} s{eta}", file=sys.stderr, flush=True)
    return show


def cohort_command(args, model_options, cancel) -> int:
    import dataclasses

    from ..models import describe_model
    from ..request import ExplainRequest
    from .cases import read_cases
    from .pipeline import run_cohort

    archs, demo = architectures(args)
    options = model_options(args)
    if demo:
        options = dataclasses.replace(options, trust=True)
    first = next(iter(archs.values()))[0]
    channels = options.channels or describe_model(first, options).get("channels")
    cases = read_cases(args.cases, channels)
    template = ExplainRequest(images=[], models=[], out="", targets=args.target_label or ["WT", "TC", "ET"], value=args.value,
                              seed=args.seed, device=args.device, baseline=args.baseline, resample=args.resample,
                              clinician_ranking=args.clinician_ranking, batch_size=args.batch_size, model_options=options)
    if args.progress == "json":
        print(format_event("started", method="cohort", out=args.out, cases=len(cases), architectures=list(archs)), file=sys.stderr, flush=True)
    doc = run_cohort(cases, archs, template, args.out, args.scheduler, args.workers, args.dice_threshold, args.bootstrap,
                     progress_printer(args.progress), cancel, args.reference == "ground-truth")
    run = doc["run"]
    print(f"Cohort: {doc['n_cases']} cases finished ({run['computed']} computed now, {run['skipped']} earlier), {len(doc['failures'])} failed.")
    print(f"Written: {Path(args.out) / 'cohort.csv'}, cohort.json, cohort.html")
    return 0 if not doc["failures"] else 1


def demo_cohort_command(args) -> int:
    from ..demo.cohort import write_demo_cohort

    print(f"Cases table written to {write_demo_cohort(args.cases, args.out, crop=args.crop)}")
    return 0
