"""Contrast-Shapley speed on a BraTS-sized case, each figure against the naive way, side by side in one process.

    python benchmarks/bench_contrast_shapley.py [--shape 240 240 155] [--overlap 0.25] [--models 5] [--device cpu]

Prints (and writes as JSON with --json PATH):
1. one coalition, ROI-restricted vs full-volume MONAI sliding_window_inference (time ratio, and max |diff| in the ROI);
2. the 2^C − 1 non-full coalitions batched (windows × coalitions per pass) vs one window at a time;
3. the share of the evaluator's time spent inside the network's forward passes;
4. exact contrast Shapley for N models × 3 targets (WT, TC, ET) through `run()`, end to end.
The case comes from the demo generator at 1 mm; the networks are MONAI SegResNets with random weights, 96³ windows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import CHANNELS, save_segresnet, timed, tumour_roi
from monai.inferers import sliding_window_inference

from SegXAILib.demo.brain import make_brain_case, write_case
from SegXAILib.estimators import all_coalitions
from SegXAILib.evaluator import Evaluator, pick_device
from SegXAILib.models import load_models
from SegXAILib.request import ExplainRequest
from SegXAILib.run import run
from SegXAILib.volumes import Geometry, write_volume

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.25, help="MONAI SlidingWindowInferer's default")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="segxai-bench-"))
    case = make_brain_case(args.seed, shape=tuple(args.shape), spacing=1.0)
    paths = write_case(case, work / "case")
    roi = tumour_roi(case.labels)
    roi_path = write_volume(roi.astype(np.uint8), Geometry(case.labels.shape, case.affine), work / "roi.nii.gz")
    models = [save_segresnet(s, work / f"fold{s}.pt", args.window, args.overlap) for s in range(args.models)]
    model = load_models([models[0]])[0]
    from SegXAILib.volumes import load_case

    image = model.prepare(load_case([paths[c] for c in CHANNELS])).image
    n = image.shape[0]
    figures: dict = {"shape": list(image.shape), "window": args.window, "overlap": args.overlap, "device": str(device),
                     "roi_voxels": int(roi.sum()), "torch_threads": torch.get_num_threads()}
    print(f"case 4×{'×'.join(map(str, args.shape))}, ROI {roi.sum()} voxels, SegResNet 96³ windows, overlap {args.overlap}, {device}")

    # 1. one coalition: ROI-restricted (after the one-off full-coalition pass) vs naive full-volume sliding window
    players, baseline = np.arange(n).reshape(n, 1, 1, 1), np.zeros((n, 1, 1, 1), np.float32)
    ev, setup_s = timed(lambda: Evaluator(model, image, roi, players, n, baseline, device))
    coalition = np.array([[True, True, True, False]])
    roi_logits, roi_s = timed(lambda: ev.evaluate(coalition, lambda z: [z.numpy()])[0][0])
    ablated = image.copy()
    ablated[3] = 0

    def naive():
        with torch.inference_mode():
            return sliding_window_inference(torch.from_numpy(ablated)[None].to(device), (args.window,) * 3, ev.batch_size,
                                            model.module, overlap=args.overlap, mode="gaussian")[0].cpu().numpy()

    full, full_s = timed(naive)
    diff = float(np.abs(np.asarray(roi_logits) - full[:, roi]).max())
    figures["one_coalition"] = {"roi_s": roi_s, "full_volume_s": full_s, "speedup": full_s / roi_s, "setup_s": setup_s,
                                "windows_roi": ev.stats.windows_roi, "windows_total": ev.stats.windows_total, "max_abs_diff": diff}
    print(f"1. one coalition: ROI-restricted {roi_s:.2f} s ({ev.stats.windows_roi}/{ev.stats.windows_total} windows) vs "
          f"full volume {full_s:.2f} s -> {full_s / roi_s:.1f}x faster; max |diff| in ROI {diff:.1e} (one-off full pass {setup_s:.2f} s)")

    # 2./3. the 15 non-full coalitions, batched vs one window per forward pass
    rest = all_coalitions(n)[:-1]
    out = {}
    for label, batch in (("one_at_a_time", 1), ("batched", ev.batch_size)):
        e = Evaluator(model, image, roi, players, n, baseline, device, batch_size=batch)
        vals, secs = timed(lambda: e.evaluate(rest, lambda z: [float(z.double().sum())]))
        out[label] = (vals, secs, e.stats)
    (v1, s1, _), (vb, sb, stb) = out["one_at_a_time"], out["batched"]
    figures["coalitions"] = {"n": len(rest), "one_at_a_time_s": s1, "batched_s": sb, "batch_size": stb.batch_size,
                             "speedup": s1 / sb, "forward_share": stb.forward_s / stb.total_s, "same_values": bool(np.allclose(v1, vb, rtol=1e-5))}
    print(f"2. {len(rest)} coalitions: one window per pass {s1:.1f} s vs batched ({stb.batch_size}) {sb:.1f} s -> {s1 / sb:.2f}x")
    print(f"3. share of evaluator time in forward passes: {100 * stb.forward_s / stb.total_s:.1f} %")

    # 4. the whole method, end to end
    request = ExplainRequest(images=[str(paths[c]) for c in CHANNELS], models=[str(m) for m in models], out=str(work / "result"),
                             targets=["WT", "TC", "ET"], value="soft-dice", roi_mask=str(roi_path), device=args.device)
    _, total_s = timed(lambda: run(request))
    figures["exact_contrast_shapley"] = {"models": args.models, "targets": 3, "coalitions": 2 ** n, "total_s": total_s}
    print(f"4. exact contrast Shapley, {args.models} models × 3 targets × {2 ** n} coalitions: {total_s:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
