"""`segxai demo`: the generated demo case, the five shipped fold models, exact contrast Shapley for WT / TC / ET.

Everything goes through the same `run()` and result folders as `segxai explain`; the demo adds the case, the
summary on the terminal and two figures.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ..models import ModelOptions
from ..progress import CancelToken, ProgressFn, no_progress
from ..request import CausalOptions, ExplainRequest, GradientOptions, RegionOptions
from ..errors import InputError
from ..result import read_result
from ..run import run
from ..volumes import Geometry, write_volume
from .brain import CHANNELS, make_brain_case, write_case
from .torso import ORGANS, make_torso_case, write_torso_case

DEMO_MODELS = Path(__file__).resolve().parent.parent / "Resources" / "demo_models"
CT_MODEL = DEMO_MODELS / "ct_liver.ts"
DEMO_SEED = 20261122   # not among the training seeds recorded in demo_models/training.json
REGIONS = ("WT", "TC", "ET")
BRAIN_PLAYERS = 8   # supervoxels of the brain's region methods: 2^8 coalitions, so region SHAP is exact (converged by
                    # construction); KernelSHAP over the 27 of --n-players 24 was far from converged at the old budget 40
MARKER = ".segxai-demo"


def demo_models() -> list[Path]:
    return sorted(p for p in DEMO_MODELS.glob("fold*") if (p / "configs").is_dir())


def tumour_box(labels: np.ndarray, margin: int = 4) -> np.ndarray:
    """The ROI a reader would draw: the bounding box of the nonzero labels with a small margin."""
    idx = np.argwhere(labels > 0)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, labels.shape)
    roi = np.zeros(labels.shape, np.uint8)
    roi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return roi


def _fresh_folder(out: Path, overwrite: bool) -> Path:
    """A new demo folder; --overwrite replaces only a folder an earlier demo made (it carries MARKER)."""
    if out.exists() and any(out.iterdir()):
        if not (overwrite and (out / MARKER).exists()):
            raise InputError(f"The demo output folder {out} already exists and is not empty.",
                             "Pass --out NEW_FOLDER, or --overwrite to replace an earlier demo's folder.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by segxai demo\n")
    return out


def summary(results: list[dict]) -> str:
    lines = []
    for r in results:
        ranking = " > ".join(r["ranking"])
        values = ", ".join(f"{p['name']} {p['value']:+.3f}±{p['std']:.3f}" for p in sorted(r["players"], key=lambda p: -p["value"]))
        a, u = r["agreement"], r["uncertainty"]
        tau = "n/a" if a["kendall_tau"] is None else f"{a['kendall_tau']:+.2f}"
        clinician = " > ".join(a["clinician_ranking"] or [])
        dice = " ".join(f"{m['dice_vs_ground_truth']:.2f}" for m in r["per_model"] if m["dice_vs_ground_truth"] is not None)
        lines += [f"{r['target_label']}: {ranking}",
                  f"    Shapley ({r['value_function']}, mean±s.d. over folds): {values}",
                  f"    agreement with clinician ({clinician}): Kendall tau {tau}",
                  f"    uncertainty: mean rank variance {u['rank_variance_mean']:.3f} (normalised {u['normalised']:.3f})",
                  f"    fold Dice vs ground truth in ROI: {dice}"]
    return "\n".join(lines)


def region_summary(title: str, result: dict, k: int = 4) -> str:
    top = ", ".join(f"{p['name']} {p['value']:+.3f}" for p in result["top_k"][:k])
    est = result["estimation"]
    how = "exact" if est["exact"] else f"{est['estimator']}, budget {est['budget']}"
    saving = result["provenance"]["evaluator"][0]["cache_saving"]
    return (f"{title}: {result['features']['n_players']} {result['features']['kind']} players ({how}), "
            f"{result['value_function']} {result['v_full']:.2f} with all, {result['v_empty']:.2f} with none\n"
            f"    top: {top}\n    global mask: {', '.join(result['global_mask']['players'][:6])}"
            f"{' …' if len(result['global_mask']['players']) > 6 else ''}; cache saved {100 * saving:.0f} % of window evaluations")


def region_demos(out: Path, brain_paths: dict, roi_path: Path, fold0: Path, progress, cancel, budget: int | None) -> list[str]:
    """Region SHAP on the brain case (supervoxels, fold 0) and on the torso CT (organs); exact unless a budget is given."""
    brain = ExplainRequest(images=[str(brain_paths[c]) for c in CHANNELS], models=[str(fold0)], out=str(out / "region-shap-brain"),
                           targets=["WT"], method="region-shap", value="soft-dice", roi_mask=str(roi_path), budget=budget,
                           model_options=ModelOptions(trust=True), region=RegionOptions(features="supervoxel", n_players=BRAIN_PLAYERS))
    torso = make_torso_case(DEMO_SEED)
    ct_paths = write_torso_case(torso, out / "ct-case")
    ct_roi = write_volume(tumour_box((torso.labels == 2).astype(np.uint8)), torso.geometry, out / "ct-case" / "roi.nii.gz")
    ct = ExplainRequest(images=[str(ct_paths["CT"])], models=[str(CT_MODEL)], out=str(out / "region-shap-ct"), targets=["lesion"],
                        method="region-shap", value="soft-dice", roi_mask=str(ct_roi), budget=budget,
                        region=RegionOptions(features="organ", labels=str(ct_paths["organs"]), label_names=dict(ORGANS)))
    return [region_summary("Region SHAP, brain WT (fold 0)", read_result(run(brain, progress, cancel))),
            region_summary("Region SHAP, torso CT liver lesion (organs)", read_result(run(ct, progress, cancel)))]


def method_comparison(out: Path, brain_paths: dict, roi_path: Path, fold0: Path, progress, cancel, players: int) -> list[str]:
    """Causal ATE, Integrated Gradients and TracIn on the brain case (fold 0, WT), and the deletion AUCs of the map methods."""
    from ..evaluate import evaluate
    from ..methods.tracin import tracin_demo

    images = [str(brain_paths[c]) for c in CHANNELS]
    common = dict(images=images, models=[str(fold0)], targets=["WT"], value="soft-dice", roi_mask=str(roi_path),
                  model_options=ModelOptions(trust=True), region=RegionOptions(features="supervoxel", n_players=players))
    causal = run(ExplainRequest(out=str(out / "causal-brain"), method="causal",
                                causal=CausalOptions(intervention="shift", min_samples=2, max_samples=4, tolerance=0.02), **common),
                 progress, cancel)
    grads = run(ExplainRequest(out=str(out / "gradients-brain"), method="gradients", gradients=GradientOptions(n_steps=8), **common),
                progress, cancel)
    _, tracin_text = tracin_demo(out / "tracin-brain", images, str(roi_path), fold0, progress, cancel, threads=1)
    causal_doc = read_result(causal)
    top = ", ".join(f"{p['name']} {p['value']:+.3f} " + (f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" if p["ci_low"] is not None
                                                         else f"(no interval: {p['n_samples']} identical samples)")
                    for p in causal_doc["top_k"][:3])
    lines = [f"Causal ATE, brain WT (fold 0, {causal_doc['interventions']['total']} shift interventions): {top}", tracin_text,
             "Deletion (most relevant first; lower = more faithful) vs least relevant first, soft Dice, fold 0 WT:"]
    interactions: list[str] = []
    for name, folder in (("region SHAP", out / "region-shap-brain"), ("causal ATE", causal), ("integrated gradients", grads)):
        ev = json.loads(evaluate(folder, steps=players, value="soft-dice", samples=8, sanity_steps=0, road_steps=0, progress=progress,
                                 cancel=cancel)[0].read_text())
        lines.append(f"    {name:<22} MoRF AUC {ev['deletion_morf']['auc']:.3f}   LeRF AUC {ev['deletion_lerf']['auc']:.3f}   "
                     f"AOPC {ev['aopc_morf']:.3f}   ({ev['timings']['total_s']:.0f} s)")
        share = (ev.get("interactions") or {}).get("share")
        if name == "region SHAP" and share is not None:
            interactions.append(f"    interaction share of the supervoxel game 1 − Σ leave-one-out / (v(N) − v(∅)) = {share:+.3f} "
                            f"(0 = additive: single-region removals, deletion's view, would equal the Shapley values)")
    return lines + interactions


def run_times(out: Path) -> str:
    """Each explanation's own run time (load + explain), from its result's provenance."""
    names = {"contrast-shapley/WT": "contrast Shapley (5 folds × 3 regions)", "region-shap-brain": "region SHAP brain",
             "region-shap-ct": "region SHAP CT", "causal-brain": "causal ATE", "gradients-brain": "integrated gradients",
             "tracin-brain": "TracIn"}
    parts = [f"{label} {read_result(out / key)['provenance']['timings']['total_s']:.0f} s" for key, label in names.items()
             if (out / key / "result.json").exists()]
    return "Run times: " + ", ".join(parts)


RUN_LABELS = {"contrast-shapley": "Contrast Shapley, 5 folds (WT, TC, ET)", "region-shap-brain": "Region SHAP, brain WT (fold 0)",
              "region-shap-ct": "Region SHAP, torso CT liver lesion (organs)", "causal-brain": "Causal ATE, brain WT (fold 0)",
              "gradients-brain": "Integrated Gradients, brain WT (fold 0)", "tracin-brain": "TracIn training-case influence, brain WT (fold 0)"}


def write_reports(out: Path, summary_text: str) -> Path:
    """report.html beside every run's result and OUT/index.html linking them all."""
    from ..report import write_index, write_report

    reports = [(label, write_report(out / name)) for name, label in RUN_LABELS.items() if (out / name).is_dir()]
    return write_index(out, reports, title="SegXAI demo", summary=summary_text)


def run_demo(out: str | Path, overwrite: bool = False, progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
             shape: tuple[int, int, int] = (96, 112, 96), spacing: float = 2.0, models: list[Path] | None = None,
             stream=None, regions: bool = True, budget: int | None = None, methods: bool = True) -> Path:
    stream = stream or sys.stdout
    out = _fresh_folder(Path(out), overwrite)
    case = make_brain_case(DEMO_SEED, shape=shape, spacing=spacing)
    paths = write_case(case, out / "case")
    geometry = Geometry(case.labels.shape, case.affine)
    roi = tumour_box(case.labels)
    roi_path = write_volume(roi, geometry, out / "case" / "roi.nii.gz")
    request = ExplainRequest(images=[str(paths[c]) for c in CHANNELS], models=[str(m) for m in (models or demo_models())],
                             out=str(out / "contrast-shapley"), targets=list(REGIONS), value="dice", roi_mask=str(roi_path),
                             ground_truth=str(paths["labels"]), model_options=ModelOptions(trust=True))
    print(f"SegXAI demo: case seed {DEMO_SEED}, {len(request.models)} fold models, exact contrast Shapley for WT, TC, ET",
          file=stream, flush=True)
    folder = run(request, progress, cancel)
    results = [read_result(folder / region) for region in REGIONS]
    from ..plots import case_slice, contrast_bar_chart

    chart = contrast_bar_chart(results, out / "contrast_shapley.png")
    from ..volumes import read_volume

    prediction, _ = read_volume(folder / "WT" / results[0]["maps"]["prediction"])
    flair = case.images[CHANNELS.index("FLAIR")]
    slice_png = case_slice(flair, case.labels, roi.astype(bool), (prediction >= 0.5).astype(np.uint8), out / "case_slice.png",
                           "FLAIR, ROI (cyan), whole tumour")
    text = summary(results)
    if regions:
        text += "\n" + "\n".join(region_demos(out, paths, roi_path, Path(request.models[0]), progress, cancel, budget))
        if methods:
            text += "\n" + "\n".join(method_comparison(out, paths, roi_path, Path(request.models[0]), progress, cancel, BRAIN_PLAYERS))
    text += "\n" + run_times(out)
    (out / "summary.txt").write_text(text + "\n")
    index = write_reports(out, text)
    print(text, file=stream)
    print(f"\nReports: {index}", file=stream)
    print(f"\nResults: {folder}/<region>/result.json   Figures: {chart}, {slice_png}", file=stream, flush=True)
    return out
