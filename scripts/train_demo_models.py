#!/usr/bin/env python
"""Trains the five cross-validation fold models shipped as MONAI bundles in SegXAILib/Resources/demo_models.

Data: N cases from the seeded BraTS-like generator (SegXAILib.demo.brain), 96×112×96 at 2 mm, z-scored per
channel over nonzero voxels exactly as the bundles' NormalizeIntensityd does. Each fold trains a slim MONAI 3D UNet
(4 contrasts in, 4 softmax classes out) on random 64³ crops (two thirds centred on tumour) with Dice + CE loss,
AdamW and warm-up + cosine learning rate, then is scored on its held-out cases by full-volume sliding-window
inference with the bundle's own inferer settings. Fold 0 also keeps intermediate checkpoints (for TracIn).

Deterministic given --seed (same seeds, same crops, same initialisation; deterministic torch algorithms).
Usage:  python scripts/train_demo_models.py [--seed 0] [--cases 40] [--iterations 640] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from SegXAILib.demo.brain import CHANNELS, LABELS, make_brain_case  # noqa: E402

CROP = 64
NETWORK = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 4, "out_channels": 4,
           "channels": [8, 16, 32, 64, 64], "strides": [2, 2, 2, 2], "num_res_units": 1, "norm": "instance"}
INFERER = {"_target_": "monai.inferers.SlidingWindowInferer", "roi_size": [CROP] * 3, "sw_batch_size": 4,
           "overlap": 0.25, "mode": "gaussian"}
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def build_network():
    from monai.networks.nets import UNet

    return UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})


def normalise(images: np.ndarray) -> np.ndarray:
    """The bundle's NormalizeIntensityd(nonzero=True, channel_wise=True), run through MONAI itself."""
    from monai.transforms import NormalizeIntensity

    out = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(images))
    return np.asarray(out, dtype=np.float32)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, truth).sum() / denom)


def region_dice(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: dice(np.isin(pred, classes), np.isin(labels, classes)) for name, classes in REGIONS.items()}


def predict(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Argmax of full-volume sliding-window inference with the bundle's inferer settings."""
    from monai.inferers import sliding_window_inference

    net.eval()
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(image)[None], INFERER["roi_size"], INFERER["sw_batch_size"], net,
                                          overlap=INFERER["overlap"], mode=INFERER["mode"])
    net.train()
    return logits[0].argmax(0).numpy().astype(np.int16)


class CropSampler:
    """Random CROP³ crops: a fraction centred on a tumour voxel, the rest anywhere in the head; L-R flips, mild intensity jitter."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator, foreground: float = 2 / 3):
        self.images, self.labels, self.rng, self.foreground = images, labels, rng, foreground
        self.tumour = [np.argwhere(lab > 0) for lab in labels]
        self.head = [np.argwhere(img.any(0)) for img in images]

    def sample(self, case: int) -> tuple[np.ndarray, np.ndarray]:
        rng, img, lab = self.rng, self.images[case], self.labels[case]
        pool = self.tumour[case] if rng.uniform() < self.foreground else self.head[case]
        centre = pool[rng.integers(len(pool))]
        start = [int(np.clip(c - CROP // 2 + rng.integers(-8, 9), 0, s - CROP)) for c, s in zip(centre, lab.shape)]
        box = tuple(slice(s, s + CROP) for s in start)
        x, y = img[(slice(None),) + box].copy(), lab[box].copy()
        if rng.uniform() < 0.5:  # left-right flip: tumours occur in either hemisphere
            x, y = x[:, ::-1].copy(), y[::-1].copy()
        inside = x.any(0)
        scale = rng.uniform(0.9, 1.1, (4, 1))
        shift = rng.uniform(-0.1, 0.1, (4, 1))
        x[:, inside] = x[:, inside] * scale + shift
        return x, y


def lr_at(iteration: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base`, then cosine decay to 2 % of it."""
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(total - warmup, 1)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def fp16_state(net: torch.nn.Module) -> dict:
    return {k: v.detach().clone().half() if v.is_floating_point() else v.detach().clone() for k, v in net.state_dict().items()}


def train_fold(fold: int, train_ids: list[int], images, labels, args, log) -> tuple[torch.nn.Module, list[dict], float, list[float]]:
    from monai.losses import DiceCELoss

    torch.manual_seed(args.seed * 1000 + fold)
    rng = np.random.default_rng([args.seed, fold, 7])
    net = build_network()
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    sampler = CropSampler([images[i] for i in train_ids], [labels[i] for i in train_ids], rng)
    per_epoch = max(len(train_ids) // args.batch, 1)
    checkpoints, lrs, losses = [], [], []
    save_at = set(int(round(args.epochs * f)) for f in np.linspace(0, 1, args.checkpoints + 2)[1:-1]) if fold == 0 else set()
    total = args.epochs * per_epoch
    t0 = time.time()
    net.train()
    for it in range(total):
        lr = lr_at(it, total, args.lr, args.warmup)
        for group in optimiser.param_groups:
            group["lr"] = lr
        lrs.append(lr)
        batch = [sampler.sample(int(c)) for c in rng.integers(len(train_ids), size=args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))[:, None]
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if (it + 1) % per_epoch == 0:
            epoch = (it + 1) // per_epoch
            if epoch % 5 == 0 or epoch == args.epochs:
                log(f"fold {fold} epoch {epoch}/{args.epochs} it {it + 1} loss {np.mean(losses[-per_epoch:]):.4f} lr {lr:.2e} "
                    f"{time.time() - t0:.0f}s")
            if epoch in save_at:
                path = args.out / f"fold{fold}" / "checkpoints" / f"epoch_{epoch:03d}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(fp16_state(net), str(path))
                start = checkpoints[-1]["iteration"] if checkpoints else 0
                checkpoints.append({"file": f"fold{fold}/checkpoints/{path.name}", "epoch": epoch, "iteration": it + 1,
                                    "learning_rate": lr, "mean_learning_rate_since_previous": float(np.mean(lrs[start:it + 1])),
                                    "train_loss_last_epoch": float(np.mean(losses[-per_epoch:]))})
    return net, checkpoints, time.time() - t0, losses


def write_bundle(folder: Path, net: torch.nn.Module, fold: int, heldout: dict, train_seeds, test_seeds, args) -> None:
    import monai

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    torch.save(fp16_state(net), str(folder / "models" / "model.pt"))
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": NETWORK,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
        "inferer": INFERER,
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
        "checkpoint": "$@bundle_root + '/models/model.pt'",
    }
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "1.0.0",
        "changelog": {"1.0.0": "demo fold model trained by scripts/train_demo_models.py"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "name": f"SegXAI demo brain tumour segmentation, fold {fold}",
        "task": "Brain tumour segmentation (necrosis, oedema, enhancing tumour) from T1, T1c, T2, FLAIR",
        "description": (f"Cross-validation fold {fold} of 5 of a slim 3D UNet trained on synthetic BraTS-like cases from "
                        "SegXAILib.demo.brain. For the SegXAI demo only: not a clinical model. Weights are fp16."),
        "authors": "SegXAI",
        "copyright": "Apache-2.0",
        "data_source": "SegXAILib.demo.brain.make_brain_case (procedural, seeded); seeds in ../training.json",
        "data_type": "nifti",
        "image_classes": "four MRI contrasts T1, T1c, T2, FLAIR, 2 mm isotropic, z-scored per channel over nonzero voxels",
        "label_classes": "0 background, 1 necrosis, 2 oedema, 3 enhancing tumour",
        "pred_classes": "0 background, 1 necrosis, 2 oedema, 3 enhancing tumour (softmax)",
        "eval_metrics": {f"heldout_dice_{k.lower()}": round(v, 4) for k, v in heldout.items()},
        "heldout_dice": {k: round(v, 4) for k, v in heldout.items()},
        "train_case_seeds": train_seeds,
        "heldout_case_seeds": test_seeds,
        "intended_use": "Demonstration and testing of SegXAI explanations only. Not for clinical use.",
        "references": [],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 4,
                                 "spatial_shape": [CROP] * 3, "dtype": "float32", "value_range": [], "is_patch_data": True,
                                 "channel_def": {str(i): name for i, name in enumerate(CHANNELS)}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 4, "spatial_shape": [CROP] * 3,
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {str(v): k for k, v in LABELS.items()}}},
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def write_model_card(out: Path) -> Path:
    """MODEL_CARD.md from training.json (so the card never disagrees with the record)."""
    t = json.loads((out / "training.json").read_text())
    summary, folds = t["heldout_dice_summary"], t["folds"]
    net = {k: v for k, v in t["network"].items() if k != "_target_"}
    size = sum(p.stat().st_size for p in out.rglob("*.pt"))
    rows = "\n".join(f"| {f['fold']} | {len(f['train_case_seeds'])} / {len(f['heldout_case_seeds'])} | "
                     + " | ".join(f"{f['heldout_dice'][r]:.3f}" for r in REGIONS) + " |" for f in folds)
    mean_row = "| **mean ± s.d.** | | " + " | ".join(f"**{summary[r]['mean']:.3f} ± {summary[r]['sd']:.3f}**" for r in REGIONS) + " |"
    ckpts = ", ".join(f"epoch {c['epoch']} (lr {c['learning_rate']:.2e})" for c in folds[0]["checkpoints"])
    text = f"""# SegXAI demo models: five-fold brain-tumour segmentation (MONAI bundles)

**Demo only. Not a medical device, not for clinical use.** These networks were trained on synthetic images and
have never seen a real MRI.

## What they are
Five cross-validation fold models (`fold0` … `fold4`), each a MONAI bundle folder:
`configs/metadata.json` (channels T1, T1c, T2, FLAIR in; background, necrosis, oedema, enhancing out),
`configs/inference.json` (`network_def`, `preprocessing`, `inferer`, `postprocessing`) and `models/model.pt`
(fp16 state dict). The network is a slim `monai.networks.nets.UNet` ({json.dumps(net)}), 4 softmax classes.
Inference: `NormalizeIntensityd(nonzero=True, channel_wise=True)`, then `SlidingWindowInferer`
(roi {t['inferer']['roi_size']}, overlap {t['inferer']['overlap']}, {t['inferer']['mode']} weighting), softmax, argmax.
All weights together (five models plus fold 0's checkpoints): {size / 2**20:.1f} MB.

## Training data
{len(t['case_seeds'])} cases from the procedural generator `{t['generator']}` (seeds {t['case_seeds'][0]}–{t['case_seeds'][-1]}),
{' × '.join(map(str, t['case_shape']))} voxels at {t['case_spacing_mm']:g} mm: a BraTS-like head (scalp, skull, CSF, grey and
white matter, ventricles, vessels) with one tumour per case (enhancing rim, necrotic core, oedema) whose position,
size and shape vary with the seed, and per-contrast bias field, scaling and Rician noise. By construction the whole
tumour shows mainly on FLAIR / T2 and the enhancing tumour on T1c, so the models' contrast reliance can be checked
against a clinician's reading. Each fold holds out a fifth of the cases; the split and every seed are in
`training.json`.

Training: random {t['crop'][0]}³ crops (two thirds centred on tumour), batch {t['batch_size']}, {t['loss']},
{t['optimiser']['name']} (lr {t['optimiser']['lr']:g}, weight decay {t['optimiser']['weight_decay']:g}), {t['lr_schedule']['name']}
({t['lr_schedule']['warmup_iterations']} warm-up iterations), {t['iterations']} iterations per fold, seed {t['seed']}, deterministic torch
algorithms, CPU ({t['threads']} thread), torch {t['versions']['torch']}, MONAI {t['versions']['monai']}.
Wall time for all five folds: {t['wall_seconds'] / 60:.1f} min. Fold 0 keeps intermediate checkpoints for
training-data influence (TracIn): {ckpts}.

Reproduce: `{t['command'].strip()}`.

## Held-out Dice
Argmax of full-volume sliding-window inference with the bundle's own inferer on each fold's held-out cases
(WT = necrosis + oedema + enhancing, TC = necrosis + enhancing, ET = enhancing), averaged over the fold's cases.

| fold | train / held-out cases | WT | TC | ET |
|---|---|---|---|---|
{rows}
{mean_row}

## Intended use
Running the SegXAI demo (`segxai demo`) and the test suite: contrast Shapley values per fold, their agreement with
a clinician's contrast ranking and their spread across folds; region SHAP, causal and TracIn examples. The scores
above are on synthetic data from the same generator and say nothing about real patients.

## Why MONAI bundles
Shipping the folds as bundles means the demo loads them through the same MONAI-bundle adapter
(`SegXAILib.models.monai_bundle`) a user's own bundle goes through: channel and class names from
`metadata.json`, network, z-scoring and sliding-window settings from `inference.json`. Building a bundle evaluates
its config, so loading needs `--trust` (`ModelOptions(trust=True)`), as for any bundle; the weights themselves load
with `weights_only=True`.
"""
    path = out / "MODEL_CARD.md"
    path.write_text(text)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="an epoch is (training cases / batch) iterations")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, default=4, help="intermediate checkpoints kept for fold 0")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine (OpenMP threads stall under contention)")
    parser.add_argument("--only-folds", type=int, nargs="*", help="train these folds only (experiments; no training.json)")
    parser.add_argument("--out", type=Path, default=ROOT / "SegXAILib" / "Resources" / "demo_models")
    parser.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from an existing training.json")
    args = parser.parse_args(argv)
    if args.card_only:
        print(write_model_card(args.out))
        return 0

    import monai

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    np.random.seed(args.seed)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    case_seeds = [1000 * (args.seed + 1) + i for i in range(args.cases)]
    log(f"generating {args.cases} cases, seeds {case_seeds[0]}..{case_seeds[-1]}")
    images, labels = [], []
    for s in case_seeds:
        case = make_brain_case(s)
        images.append(normalise(case.images))
        labels.append(case.labels)
    shape, spacing = list(case.shape), float(abs(case.affine[0, 0]))
    order = np.random.default_rng([args.seed, 3]).permutation(args.cases)
    heldout_ids = [sorted(int(i) for i in order[k::args.folds]) for k in range(args.folds)]

    folds = args.only_folds if args.only_folds is not None else list(range(args.folds))
    if args.only_folds is None:
        for old in args.out.glob("fold*"):
            shutil.rmtree(old)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for k in folds:
        test_ids = heldout_ids[k]
        train_ids = [i for i in range(args.cases) if i not in test_ids]
        net, checkpoints, seconds, losses = train_fold(k, train_ids, images, labels, args, log)
        per_case = []
        for i in test_ids:
            per_case.append({"seed": case_seeds[i], **region_dice(predict(net, images[i]), labels[i])})
        mean = {r: float(np.mean([c[r] for c in per_case])) for r in REGIONS}
        log(f"fold {k} held-out Dice " + " ".join(f"{r} {v:.3f}" for r, v in mean.items()) + f" ({seconds:.0f}s training)")
        train_seeds, test_seeds = [case_seeds[i] for i in train_ids], [case_seeds[i] for i in test_ids]
        write_bundle(args.out / f"fold{k}", net, k, mean, train_seeds, test_seeds, args)
        records.append({"fold": k, "bundle": f"fold{k}", "train_case_seeds": train_seeds, "heldout_case_seeds": test_seeds,
                        "heldout_dice": mean, "heldout_dice_per_case": per_case, "training_seconds": round(seconds, 1),
                        "final_train_loss": float(np.mean(losses[-20:])), "checkpoints": checkpoints})
        if checkpoints:
            (args.out / f"fold{k}" / "checkpoints" / "checkpoints.json").write_text(json.dumps(
                [{**c, "file": Path(c["file"]).name} for c in checkpoints], indent=2) + "\n")

    if args.only_folds is not None:
        return 0
    summary = {r: {"mean": float(np.mean([f["heldout_dice"][r] for f in records])),
                   "sd": float(np.std([f["heldout_dice"][r] for f in records], ddof=1))} for r in REGIONS}
    per_epoch = max((args.cases - len(heldout_ids[0])) // args.batch, 1)
    training = {
        "description": "Five-fold cross-validation of the SegXAI demo models (scripts/train_demo_models.py).",
        "command": "python scripts/train_demo_models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "generator": "SegXAILib.demo.brain.make_brain_case",
        "case_seeds": case_seeds,
        "case_shape": shape, "case_spacing_mm": spacing,
        "channels": CHANNELS, "labels": LABELS,
        "preprocessing": "NormalizeIntensityd(nonzero=True, channel_wise=True)",
        "network": NETWORK,
        "inferer": INFERER,
        "crop": [CROP] * 3, "batch_size": args.batch, "foreground_crop_fraction": round(2 / 3, 4),
        "augmentation": "left-right flip p=0.5; per-channel intensity scale U(0.9,1.1) and shift U(-0.1,0.1) inside the head",
        "optimiser": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay, "betas": [0.9, 0.999]},
        "lr_schedule": {"name": "linear warm-up then cosine to 2% of lr", "warmup_iterations": args.warmup},
        "epochs": args.epochs, "iterations_per_epoch": per_epoch, "iterations": args.epochs * per_epoch,
        "loss": "monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, batch=True)",
        "evaluation": "argmax of monai.inferers.sliding_window_inference with the bundle inferer settings on each held-out case; "
                      "WT = labels {1,2,3}, TC = {1,3}, ET = {3}",
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "threads": args.threads,
        "wall_seconds": round(time.time() - t_start, 1),
        "heldout_dice_summary": summary,
        "folds": records,
    }
    (args.out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    write_model_card(args.out)
    log("summary " + "  ".join(f"{r} {s['mean']:.3f}±{s['sd']:.3f}" for r, s in summary.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
