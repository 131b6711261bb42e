"""`segxai` command line: explain, describe-model, evaluate, report, view, demo, cohort, demo-cohort.

Exit codes: 0 done, 2 bad input, 3 model problem, 4 not enough memory, 130 cancelled (Ctrl-C / SIGTERM).
With `--progress json` the machine-readable `SEGXAI_EVENT` lines go to stderr (started, progress, partial, done,
error), which is what the Slicer runner and the web front end read. `explain` writes anytime results into
OUT/partial/ while a long estimate runs (the terminal shows the current top regions).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .errors import Cancelled, InputError, MemoryBudgetError, ModelError, SegXAIError
from .models import ModelOptions, describe_model
from .progress import JsonLinesProgress, TerminalProgress, format_event, no_progress
from .estimators import APPROXIMATORS
from .window_games import ESTIMATORS as CACHE_ESTIMATORS
from .players import KINDS
from .request import CausalOptions, ExplainRequest, GradientOptions, RegionOptions, TracInOptions

EXIT_CODES = {InputError: 2, ModelError: 3, MemoryBudgetError: 4, Cancelled: 130}


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--trust", action="store_true", help="allow model formats whose loading executes code (pickles, bundle expressions, nnU-Net checkpoints)")
    g.add_argument("--channels", help="input channel names in order, e.g. T1,T1c,T2,FLAIR (default: from the model)")
    g.add_argument("--preprocess", choices=["none", "zscore", "ct"], default="none", help="TorchScript / factory models: intensity preprocessing (default none: images as given)")
    g.add_argument("--region-labels", type=json.loads, metavar="JSON",
                   help='region-based (sigmoid) models: the label values each output stands for in a reference / ground-truth map, '
                        'e.g. \'{"tumor core": [2, 3]}\' (default: from the model\'s metadata)')
    g.add_argument("--window", type=int, nargs=3, metavar=("X", "Y", "Z"), help="sliding-window size (default: the model's own, or the whole volume)")
    g.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's own, else 0.5)")
    g.add_argument("--factory", help="package.module:function building the network for a state-dict --model")
    g.add_argument("--factory-kwargs", type=json.loads, help="JSON keyword arguments for --factory")
    g.add_argument("--folds", help="nnU-Net folds to use, e.g. 0,1,2 (default: all found)")
    g.add_argument("--checkpoint", default="checkpoint_final.pth", help="nnU-Net checkpoint file name")
    g.add_argument("--no-mirroring", action="store_true", help="nnU-Net: no test-time mirroring")


def _model_options(args) -> ModelOptions:
    return ModelOptions(trust=args.trust, channels=args.channels.split(",") if args.channels else None, preprocess=args.preprocess,
                        regions=args.region_labels,
                        window=tuple(args.window) if args.window else None, overlap=args.overlap, factory=args.factory,
                        factory_kwargs=args.factory_kwargs, folds=args.folds.split(",") if args.folds else None,
                        checkpoint=args.checkpoint, mirroring=not args.no_mirroring)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segxai", description="Explain 3D medical image segmentation models.")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="explain a model's segmentation inside an ROI; writes a result folder")
    e.add_argument("--image", action="append", required=True, help="one per model input channel, in order (or one 4D file)")
    e.add_argument("--model", action="append", required=True, help="one per fold / ensemble member; an nnU-Net folder gives all its folds")
    roi = e.add_mutually_exclusive_group(required=True)
    roi.add_argument("--roi-mask", help="nonzero voxels = ROI, on the grid of the first image")
    roi.add_argument("--roi-box", type=float, nargs=6, metavar=("R1", "A1", "S1", "R2", "A2", "S2"), help="axis-aligned ROI box in RAS mm")
    e.add_argument("--target-label", action="append", required=True, help="label, label set (1,3), name, or BraTS region WT/TC/ET; repeat for several")
    e.add_argument("--method", default="contrast-shapley", choices=["contrast-shapley", "region-shap", "causal", "gradients", "tracin"])
    e.add_argument("--value", default="dice", help="dice, soft-dice, tp, fp, tp-rate, fp-rate, mean-prob")
    e.add_argument("--out", required=True, help="result folder (must not exist yet)")
    e.add_argument("--reference", help="reference segmentation (default: the model's own prediction)")
    e.add_argument("--ground-truth", help="ground-truth labels: each model's Dice inside the ROI is reported")
    e.add_argument("--budget", type=int, help="coalition budget for approximate methods")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    e.add_argument("--baseline", default="zero", choices=["zero", "mean", "min"], help="what replaces a removed contrast, in model input space")
    e.add_argument("--clinician-ranking", help="e.g. FLAIR,T2,T1c,T1 or a JSON table (default: Resources/clinician_rankings.json)")
    e.add_argument("--batch-size", type=int, help="windows per forward pass (default: from free memory)")
    e.add_argument("--resample", action="store_true", help="resample images/masks on another grid onto the first image (never silent)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier SegXAI result in --out")
    e.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    r = e.add_argument_group("region SHAP")
    r.add_argument("--features", default="supervoxel", choices=list(KINDS), help="player kind")
    r.add_argument("--labels", help="organ / region label map on the image grid (organ, hybrid, labels players)")
    r.add_argument("--label-names", type=json.loads, help='JSON {"1": "liver", ...} naming the label map\'s values')
    size = r.add_mutually_exclusive_group()
    size.add_argument("--n-players", type=int, default=64, help="number of supervoxels (approximate)")
    size.add_argument("--cell-mm", type=float, help="lattice cell size in mm")
    r.add_argument("--estimator", default=RegionOptions.estimator, choices=list(APPROXIMATORS) + list(CACHE_ESTIMATORS),
                   help="when not exact: permutation-cached (default; antithetic permutations that re-run only the windows a "
                        "step changes), window-games (exact, for values summed over voxels), or a shapiq approximator")
    r.add_argument("--mask-share", type=float, default=0.8, help="share of positive attribution the global mask holds")
    r.add_argument("--top-k", type=int, default=10)
    c = e.add_argument_group("causal ATE (regions as for region SHAP)")
    c.add_argument("--intervention", default="shift", choices=["shift", "baseline"], help="in-distribution (tissue from elsewhere in the case) or the baseline")
    c.add_argument("--min-samples", type=int, default=3)
    c.add_argument("--max-samples", type=int, default=30)
    e.add_argument("--tolerance", type=float, help="stop early once precise enough (the budget stays an upper bound). Region SHAP: "
                   "once every standard error is at most this (default: spend the budget); causal: once a region's 95%% "
                   "interval half-width is below this (default 0.01)")
    c.add_argument("--components", help="network modules to switch to their mean activation, comma-separated (see describe-model)")
    c.add_argument("--component-unit", default="channel", choices=["channel", "block"])
    g = e.add_argument_group("gradient baselines (occlusion: regions as for region SHAP)")
    g.add_argument("--gradient", default="integrated-gradients", choices=["saliency", "integrated-gradients", "grad-cam", "occlusion"])
    g.add_argument("--gradient-output", default="logit", choices=["logit", "prob"], help="the target's logit or probability, summed over the ROI")
    g.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients path steps")
    g.add_argument("--gradcam-layer", help="Grad-CAM layer (module name; default the last Conv3d before the head)")
    g.add_argument("--per-channel-maps", action="store_true", help="also write one attribution map per input channel")
    t = e.add_argument_group("TracIn (training-data influence)")
    t.add_argument("--training-dir", help="training cases: DIR/cases.json or one subfolder per case (images named by channel, labels.nii.gz); "
                   "default: the demo bundle's regenerated training cases")
    t.add_argument("--tracin-checkpoint", action="append", metavar="PATH:LR",
                   help="a state dict saved during training and its learning rate; repeat per checkpoint (default: checkpoints/checkpoints.json in the model folder)")
    t.add_argument("--tracin-layers", help="modules whose parameters are differentiated, comma-separated (default: the last convolution)")
    t.add_argument("--projection-dim", type=int, help="random projection dimension (default: exact up to 16384 parameters, else 2048; 0: exact)")
    t.add_argument("--train-region", default="crop", choices=["crop", "full"], help="training loss on one window-sized crop centred on the target, or the whole case")
    t.add_argument("--train-patches", type=int, default=0, metavar="G", help="also score a G×G×G grid of patches within each training case")
    t.add_argument("--max-train-cases", type=int, help="score only the first N training cases")
    t.add_argument("--influence-score", default="raw", choices=["raw", "cosine"],
                   help="rank by TracIn's raw gradient inner product or by the gradient cosine (both are reported)")
    t.add_argument("--influence-top-k", type=int, default=5, help="proponents and opponents listed")
    e.add_argument("--evaluate", action="store_true", help="run segxai evaluate on the result once it is written")
    e.add_argument("--report", action="store_true", help="write report.html beside the result once it is written (after --evaluate)")
    _model_arguments(e)

    d = sub.add_parser("describe-model", help="what a model takes and gives (channels, labels, window)")
    d.add_argument("model")
    d.add_argument("--json", action="store_true")
    _model_arguments(d)

    v = sub.add_parser("evaluate", help="faithfulness and sanity of a result folder; writes evaluation.json and plots beside it")
    v.add_argument("result", help="a result folder written by segxai explain")
    v.add_argument("--steps", type=int, default=20, help="points on the removal curves (voxel maps: rank chunks)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--value", dest="eval_value", help="value function for the curves (default: the result's own)")
    v.add_argument("--samples", type=int, default=32, help="random subsets for the faithfulness correlation (0: skip it)")
    v.add_argument("--road-steps", type=int, default=6, help="points on the ROAD curves, each a fresh imputation (0: skip them)")
    v.add_argument("--sanity-steps", type=int, default=4, help="depths of the model-randomisation check (0: skip it)")
    v.add_argument("--progress", choices=["bar", "json", "none"], default="bar")

    rep = sub.add_parser("report", help="one self-contained HTML page of a result folder (offline, e-mailable)")
    rep.add_argument("result", help="a result folder written by segxai explain")
    rep.add_argument("--out", help="the HTML file to write (default RESULT/report.html)")

    view = sub.add_parser("view", help="a result in Slicer's own views in the browser (trame-slicer)")
    view.add_argument("result", nargs="?", help="a result folder written by segxai explain")
    view.add_argument("--demo", nargs="?", const="demo-output", metavar="DIR", help="open the demo's results (default demo-output)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    view.add_argument("--port", type=int, default=8080)
    view.add_argument("--exit-after", type=float, metavar="SECONDS", help="stop the server by itself after this long")

    demo = sub.add_parser("demo", help="generate the demo case and explain the shipped demo models")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--progress", choices=["bar", "json", "none"], default="bar")

    from .cohort.cli import add_parsers

    add_parsers(sub, _model_arguments)
    return parser


def _request(args) -> ExplainRequest:
    return ExplainRequest(images=args.image, models=args.model, out=args.out, targets=args.target_label, method=args.method,
                          value=args.value, roi_mask=args.roi_mask, roi_box=args.roi_box, reference=args.reference,
                          ground_truth=args.ground_truth, seed=args.seed, budget=args.budget, device=args.device,
                          baseline=args.baseline, resample=args.resample, overwrite=args.overwrite,
                          clinician_ranking=args.clinician_ranking, batch_size=args.batch_size, model_options=_model_options(args),
                          region=RegionOptions(features=args.features, labels=args.labels, n_players=args.n_players, cell_mm=args.cell_mm,
                                               label_names={int(k): v for k, v in (args.label_names or {}).items()} or None,
                                               estimator=args.estimator, mask_share=args.mask_share, top_k=args.top_k,
                                               tolerance=args.tolerance if args.method == "region-shap" else None),
                          causal=CausalOptions(intervention=args.intervention, min_samples=args.min_samples, max_samples=args.max_samples,
                                               tolerance=args.tolerance if args.method == "causal" and args.tolerance is not None
                                               else CausalOptions.tolerance, mask_share=args.mask_share,
                                               components=args.components.split(",") if args.components else None,
                                               component_unit=args.component_unit),
                          gradients=GradientOptions(kind=args.gradient, output=args.gradient_output, n_steps=args.ig_steps,
                                                    layer=args.gradcam_layer, per_channel=args.per_channel_maps),
                          tracin=TracInOptions(training_dir=args.training_dir, checkpoints=args.tracin_checkpoint or [],
                                               layers=args.tracin_layers.split(",") if args.tracin_layers else None,
                                               projection_dim=args.projection_dim, train_region=args.train_region,
                                               patches=args.train_patches, max_cases=args.max_train_cases,
                                               score=args.influence_score, top_k=args.influence_top_k))


def _cancel_on_signals() -> threading.Event:
    """SIGTERM (the Slicer runner's cancel) and Ctrl-C set the token; the engine stops between batches."""
    cancel = threading.Event()

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return cancel


def _progress(kind: str):
    return {"json": JsonLinesProgress(), "bar": TerminalProgress(), "none": no_progress}[kind]


def _explain(args) -> int:
    from .run import run

    request = _request(args)
    if args.progress == "json":
        print(format_event("started", method=request.method, targets=request.targets, out=request.out), file=sys.stderr, flush=True)
    out = run(request, _progress(args.progress), _cancel_on_signals(), partial=True)
    if args.progress == "json":
        print(format_event("done", out=str(out)), file=sys.stderr, flush=True)
    print(f"Result written to {out}")
    if args.evaluate:
        _run_evaluation(out, args)
    if args.report:
        _write_report(out)
    return 0


def _write_report(folder, out=None) -> None:
    from .report import write_report

    print(f"Report written to {write_report(folder, out)}")


def _report(args) -> int:
    _write_report(args.result, args.out)
    return 0


def _view(args) -> int:
    from .viewer import view_result_folders

    if bool(args.result) == bool(args.demo):
        raise InputError("segxai view needs one result folder, or --demo.", "Run `segxai view RESULT_DIR` or `segxai view --demo [DIR]`.")
    view_result_folders(args.result or args.demo, demo=bool(args.demo), host=args.host, port=args.port, exit_after=args.exit_after)
    return 0


def _run_evaluation(folder, args) -> None:
    from .evaluate import evaluate

    for path in evaluate(folder, steps=getattr(args, "steps", 20), seed=args.seed, value=getattr(args, "eval_value", None),
                         samples=getattr(args, "samples", 32), sanity_steps=getattr(args, "sanity_steps", 4),
                         road_steps=getattr(args, "road_steps", 6),
                         progress=_progress(args.progress), cancel=_cancel_on_signals()):
        print(f"Evaluation written to {path}")


def _evaluate(args) -> int:
    _run_evaluation(args.result, args)
    return 0


def _describe(args) -> int:
    info = describe_model(args.model, _model_options(args))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>12}: {value}")
    return 0


def _demo(args) -> int:
    from .demo.run_demo import run_demo

    run_demo(args.out, overwrite=args.overwrite, progress=_progress(args.progress), cancel=_cancel_on_signals())
    return 0


def _cohort(args) -> int:
    from .cohort.cli import cohort_command

    return cohort_command(args, _model_options, _cancel_on_signals())


def _demo_cohort(args) -> int:
    from .cohort.cli import demo_cohort_command

    return demo_cohort_command(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_events = getattr(args, "progress", None) == "json"
    try:
        return {"explain": _explain, "describe-model": _describe, "evaluate": _evaluate, "report": _report, "view": _view,
                "demo": _demo,
                "cohort": _cohort, "demo-cohort": _demo_cohort}[args.command](args)
    except SegXAIError as exc:
        code = next((c for cls, c in EXIT_CODES.items() if isinstance(exc, cls)), 1)
        if json_events:
            print(format_event("error", kind=type(exc).__name__, problem=exc.problem, fix=exc.fix), file=sys.stderr, flush=True)
        problem, fix = (" ".join(str(t).split()) for t in (exc.problem, exc.fix))  # one paragraph, whatever a library said
        print(f"segxai: {problem}" + (f"\n  Fix: {fix}" if fix else ""), file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("segxai: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
