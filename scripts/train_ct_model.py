#!/usr/bin/env python
"""Trains the demo CT model (liver + liver lesion) on generated torso cases and ships it as TorchScript.

    .venv/bin/python scripts/train_ct_model.py            # writes SegXAILib/Resources/demo_models/ct_liver.ts,
                                                          #        ct_training.json and CT_MODEL_CARD.md

A slim MONAI 3D UNet (1 input channel: CT; 3 softmax classes: background, liver, lesion) trained on CPU with one
thread (another training job may share the machine), deterministic given --seed. Training data are
`SegXAILib.demo.torso.make_torso_case(seed)` for the --train-seeds; held-out Dice is measured on --val-seeds, which
the training never sees. Preprocessing is `SegXAILib.models.base.ct_window` (clip to [-1000, 1000] HU, scale to
[0, 1]), the "ct" preprocessor SegXAI applies when it loads the model (metadata "preprocess": "ct"), so the network
itself takes windowed CT and the shipped file is fed exactly like this script feeds it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SegXAILib.demo.torso import CHANNELS, PHASE, make_torso_case  # noqa: E402
from SegXAILib.models.base import ct_window  # noqa: E402

OUT = ROOT / "SegXAILib" / "Resources" / "demo_models"
LABELS = {"background": 0, "liver": 1, "lesion": 2}


def seeds(text: str) -> list[int]:
    """"1000:1048" (half-open range) or "1,2,3"."""
    if ":" in text:
        a, b = text.split(":")
        return list(range(int(a), int(b)))
    return [int(s) for s in text.split(",") if s]


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


def build_net(channels, res_units: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=tuple(channels), strides=(2,) * (len(channels) - 1),
                num_res_units=res_units, norm="instance")


def predict(model, image: np.ndarray, window, overlap: float) -> np.ndarray:
    """Label map of one windowed CT (1, I, J, K), fused like SegXAI's MONAI windows (Gaussian importance)."""
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        x = torch.from_numpy(image[None])
        if window:
            logits = sliding_window_inference(x, tuple(window), 1, model, overlap=overlap, mode="gaussian")
        else:
            logits = model(x)
    return logits[0].argmax(0).numpy()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return float(2 * np.logical_and(pred, truth).sum() / denom) if denom else 1.0


def evaluate(model, cases, window, overlap) -> list[dict]:
    out = []
    for seed, image, labels in cases:
        pred = predict(model, image, window, overlap)
        out.append({"seed": seed, "liver": round(dice(pred == 1, labels == 1), 4), "lesion": round(dice(pred == 2, labels == 2), 4),
                    "liver_incl_lesion": round(dice(pred > 0, labels > 0), 4), "lesion_voxels": int((labels == 2).sum())})
    return out


def summary(rows: list[dict]) -> dict:
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("liver", "lesion", "liver_incl_lesion")} | \
           {"lesion_min": round(float(min(r["lesion"] for r in rows)), 4), "liver_min": round(float(min(r["liver"] for r in rows)), 4)}


def generate(seed_list, shape, spacing):
    cases = []
    for s in seed_list:
        case = make_torso_case(s, shape, spacing)
        cases.append((s, case.images.astype(np.float32), case.labels.astype(np.int64)))
    return cases


def sample_patch(rng: np.random.Generator, hu: np.ndarray, labels: np.ndarray, size, p_lesion: float, p_liver: float):
    """A patch of `size` centred on a lesion voxel, a liver voxel or anywhere, with a mild HU scale / offset jitter."""
    shape = labels.shape
    draw = rng.random()
    target = 2 if draw < p_lesion else 1 if draw < p_lesion + p_liver else None
    where = np.argwhere(labels == target) if target is not None else None
    if where is not None and len(where):
        centre = where[int(rng.integers(len(where)))] + rng.integers(-8, 9, size=3)
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    lo = np.clip(centre - np.asarray(size) // 2, 0, np.asarray(shape) - np.asarray(size))
    sl = tuple(slice(int(a), int(a) + int(w)) for a, w in zip(lo, size))
    patch = hu[(slice(None),) + sl] * rng.uniform(0.97, 1.03) + rng.uniform(-8, 8)
    return ct_window(patch), labels[sl]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except Exception:
        return None


def other_training() -> list[str]:
    try:
        out = subprocess.run(["pgrep", "-af", "train_demo_models"], capture_output=True, text=True, timeout=10).stdout
        return [line for line in out.splitlines() if line.strip()]
    except Exception:
        return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed of weights init and patch sampling")
    p.add_argument("--train-seeds", default="1000:1048", help="generator seeds of the training cases (a:b or a,b,c)")
    p.add_argument("--val-seeds", default="9000:9006", help="held-out generator seeds for the reported Dice")
    p.add_argument("--shape", default="96,80,64")
    p.add_argument("--spacing", default="3.0,3.0,4.0")
    p.add_argument("--iterations", type=int, default=3500)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", default="8,16,32,64")
    p.add_argument("--res-units", type=int, default=1)
    p.add_argument("--window", default="64,64,48", help="inference window written into the metadata ('none' = whole volume)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--patch-sizes", default="48,48,32;64,64,48;64,56,40;80,64,48",
                   help="training patch sizes, one drawn per iteration (';'-separated), so the net is robust to the window")
    p.add_argument("--p-lesion", type=float, default=0.4)
    p.add_argument("--p-liver", type=float, default=0.3)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    t_start = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(args.seed)
    others = other_training()
    if others:
        print(f"note: another training job is running ({len(others)} process(es)); using one thread", flush=True)

    shape, spacing = ints(args.shape), tuple(float(s) for s in args.spacing.split(","))
    window = None if args.window.lower() in ("none", "null", "") else list(ints(args.window))
    sizes = [ints(s) for s in args.patch_sizes.split(";")]
    train_seeds, val_seeds = seeds(args.train_seeds), seeds(args.val_seeds)
    assert not set(train_seeds) & set(val_seeds), "validation seeds overlap the training seeds"

    t0 = time.time()
    train = generate(train_seeds, shape, spacing)
    val = [(s, ct_window(im), lab) for s, im, lab in generate(val_seeds, shape, spacing)]
    t_data = time.time() - t0
    print(f"generated {len(train)} training + {len(val)} validation cases in {t_data:.1f} s", flush=True)

    from monai.losses import DiceCELoss

    net = build_net(ints(args.channels), args.res_units)
    n_params = sum(q.numel() for q in net.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    warmup = min(100, args.iterations // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: (it + 1) / warmup if it < warmup else 0.5 * (1 + np.cos(np.pi * (it - warmup) / max(1, args.iterations - warmup))))
    print(f"UNet channels {args.channels}, res units {args.res_units}: {n_params} parameters; {args.iterations} iterations", flush=True)

    history = []
    t_train = time.time()
    running = []
    for it in range(args.iterations):
        net.train()
        size = sizes[int(rng.integers(len(sizes)))]
        xs, ys = [], []
        for _ in range(args.batch):
            _, hu, lab = train[int(rng.integers(len(train)))]
            x, y = sample_patch(rng, hu, lab, size, args.p_lesion, args.p_liver)
            xs.append(x)
            ys.append(y[None])
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if (it + 1) % 100 == 0:
            print(f"it {it + 1:5d}  loss {np.mean(running):.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t_train:7.1f} s", flush=True)
            history.append({"iteration": it + 1, "loss": round(float(np.mean(running)), 5), "seconds": round(time.time() - t_train, 1)})
            running = []
        if args.eval_every and (it + 1) % args.eval_every == 0 and it + 1 < args.iterations:
            net.eval()
            s = summary(evaluate(net, val, window, args.overlap))
            print(f"   held-out Dice at {it + 1}: {s}", flush=True)
            history[-1]["val"] = s
    t_train = time.time() - t_train

    net.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "ct_liver.ts"
    meta = {"channels": list(CHANNELS), "labels": LABELS, "activation": "softmax", "window": window, "overlap": args.overlap,
            "preprocess": "ct"}
    scripted = torch.jit.script(net)
    probe = torch.from_numpy(val[0][1][None, :, :48, :48, :32].copy())
    with torch.no_grad():
        assert torch.allclose(scripted(probe), net(probe), atol=1e-5)
    torch.jit.save(scripted, str(model_path), _extra_files={"segxai.json": json.dumps(meta)})

    # held-out Dice measured on the shipped file, loaded back
    loaded = torch.jit.load(str(model_path), map_location="cpu").eval()
    t0 = time.time()
    rows = evaluate(loaded, val, window, args.overlap)
    t_eval = (time.time() - t0) / len(val)
    final = summary(rows)
    print(f"held-out Dice (shipped file): {final}", flush=True)
    for r in rows:
        print(f"   seed {r['seed']}: liver {r['liver']:.3f}  lesion {r['lesion']:.3f}  ({r['lesion_voxels']} lesion voxels)", flush=True)

    from SegXAILib.result import sha256

    import monai
    import scipy

    wall = time.time() - t_start
    record = {
        "model": model_path.name, "sha256": sha256(model_path), "bytes": model_path.stat().st_size, "metadata": meta,
        "network": {"class": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                    "channels": list(ints(args.channels)), "strides": [2] * (len(ints(args.channels)) - 1),
                    "num_res_units": args.res_units, "norm": "instance", "parameters": n_params},
        "data": {"generator": "SegXAILib.demo.torso.make_torso_case", "phase": PHASE, "shape": list(shape), "spacing": list(spacing),
                 "train_seeds": train_seeds, "val_seeds": val_seeds, "preprocess": "ct_window: clip [-1000, 1000] HU, scale to [0, 1]"},
        "args": vars(args),
        "held_out_dice": final, "held_out_per_case": rows,
        "history": history,
        "timing_s": {"wall": round(wall, 1), "data": round(t_data, 1), "train": round(t_train, 1),
                     "inference_per_case": round(t_eval, 2), "threads": torch.get_num_threads()},
        "other_training_jobs_seen": len(others),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                     "numpy": np.__version__, "scipy": scipy.__version__, "git_commit": git_commit()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "ct_training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "CT_MODEL_CARD.md").write_text(model_card(record))
    print(f"wrote {model_path} ({record['bytes'] / 1e6:.2f} MB) in {wall / 60:.1f} min", flush=True)
    return 0


def model_card(r: dict) -> str:
    d, n, t = r["held_out_dice"], r["network"], r["timing_s"]
    rows = "\n".join(f"| {c['seed']} | {c['liver']:.3f} | {c['lesion']:.3f} | {c['lesion_voxels']} |" for c in r["held_out_per_case"])
    tr = r["data"]["train_seeds"]
    window = r["metadata"]["window"]
    return f"""# Demo CT model: liver and liver lesion (`ct_liver.ts`)

**Intended use: demonstration and testing of SegXAI only.** Trained on synthetic data; it has never seen a real CT
and must not be used on patients or for any clinical or research conclusion about real anatomy.

## Model
- File: `ct_liver.ts` (TorchScript, fp32, {r['bytes'] / 1e6:.2f} MB, sha256 `{r['sha256'][:16]}…`)
- Network: MONAI 3D `UNet`, channels {n['channels']}, strides {n['strides']}, {n['num_res_units']} residual unit(s),
  instance norm, {n['parameters']:,} parameters.
- Input: 1 channel, `CT`, in Hounsfield units, preprocessed by SegXAI's `ct` preprocessor
  (`SegXAILib.models.base.ct_window`: clip to [-1000, 1000] HU and scale to [0, 1]); the metadata inside the file
  (`segxai.json`) says `"preprocess": "ct"`, so SegXAI applies it on load.
- Output: 3 logits, softmax: 0 background, 1 liver (parenchyma, lesions excluded), 2 liver lesion.
- Inference: sliding windows of {window} voxels, overlap {r['metadata']['overlap']}, Gaussian fusion
  (any window whose sides are multiples of 8 works; training used several patch sizes).

## Training data
Synthetic unenhanced abdominal CT from `SegXAILib.demo.torso.make_torso_case(seed)` at shape
{r['data']['shape']} and spacing {r['data']['spacing']} mm: torso with fat, muscle, ribs, lung bases, bowel, stomach,
liver with one or two hypodense lesions (20–35 HU), spleen, kidneys, spine, aorta, IVC, texture and noise.
Training seeds: {tr[0]}–{tr[-1]} ({len(tr)} cases). Held-out seeds: {', '.join(map(str, r['data']['val_seeds']))}.
Patches of several sizes, centred on a lesion (p = {r['args']['p_lesion']}), liver (p = {r['args']['p_liver']}) or
anywhere; mild HU scale / offset jitter; Dice + cross-entropy loss; AdamW, lr {r['args']['lr']}, cosine schedule,
{r['args']['iterations']} iterations of batch {r['args']['batch']}; seed {r['args']['seed']}.

## Held-out Dice (generated cases never used in training, measured on the shipped file)
Mean liver Dice **{d['liver']:.3f}** (min {d['liver_min']:.3f}), mean lesion Dice **{d['lesion']:.3f}** (min {d['lesion_min']:.3f});
liver including lesions {d['liver_incl_lesion']:.3f}.

| seed | liver | lesion | lesion voxels |
|---|---|---|---|
{rows}

## Reproduce
`.venv/bin/python scripts/train_ct_model.py` (defaults as recorded in `ct_training.json`): {t['wall'] / 60:.1f} min wall
on one CPU thread ({t['train'] / 60:.1f} min training), torch {r['versions']['torch']}, MONAI {r['versions']['monai']}.
Single-threaded CPU training is deterministic given the seed on the same software versions.

## Limitations
Synthetic anatomy is simpler than real CT (no contrast phases, no gallbladder, vessels inside the liver, or
pathology other than round hypodense lesions); the model exploits this and will fail on real scans.
"""


if __name__ == "__main__":
    raise SystemExit(main())
