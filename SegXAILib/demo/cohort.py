"""`segxai demo-cohort`: N BraTS-like cases of graded difficulty for trying `segxai cohort` on.

Each case is a `make_brain_case` subject (seeds not used in training) made harder step by step, so that the demo
fold models segment some cases worse than others: a smaller tumour, less tumour-to-brain contrast, more noise, and
from moderate difficulty on, every third case has one contrast missing (all zero, as when a series was not
acquired) or corrupted (ghosting plus strong noise, as with motion). The knobs of each case are columns of
`cases.csv`, so the cohort table can be read against them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import InputError
from .brain import CHANNELS, WM, make_brain_case, write_case

FIRST_SEED = 5000          # the demo models were trained on seeds 1000–1039; the demo case is 20261122
DEFECTS = ("missing FLAIR", "corrupted T2", "missing T1c", "corrupted FLAIR")


def difficulty_plan(n: int) -> list[dict]:
    """Per case: difficulty in [0, 1] and the knobs it sets. Difficulty rises with the case index."""
    plan = []
    for i in range(n):
        d = i / (n - 1) if n > 1 else 0.0
        defect = DEFECTS[(i // 3) % len(DEFECTS)] if d >= 0.35 and i % 3 == 0 else ""
        plan.append({"case_id": f"case{i:03d}", "seed": FIRST_SEED + i, "difficulty": round(d, 3),
                     "tumour_scale": round(1.0 - 0.4 * d, 3), "contrast": round(1.0 - 0.5 * d, 3),
                     "noise": round(0.02 + 0.2 * d, 3), "defect": defect})
    return plan


def degrade(images: np.ndarray, labels: np.ndarray, tissue: np.ndarray, contrast: float, noise: float, defect: str,
            seed: int) -> np.ndarray:
    """The case's images with the tumour blended towards white matter, Gaussian noise in the head, and a defect."""
    rng = np.random.default_rng([seed, 77])
    head = images.sum(axis=0) != 0
    tumour = labels > 0
    out = images.copy()
    for c in range(len(out)):
        normal = float(np.median(out[c][(tissue == WM) & ~tumour]))
        out[c][tumour] = normal + contrast * (out[c][tumour] - normal)
        out[c][head] += noise * normal * rng.standard_normal(int(head.sum())).astype(np.float32)
        out[c][head] = np.maximum(out[c][head], 1e-3 * normal)   # stays nonzero: air alone is exactly 0
    if defect:
        kind, name = defect.split(" ")
        c = CHANNELS.index(name)
        if kind == "missing":
            out[c] = 0.0
        else:
            normal = float(np.median(images[c][(tissue == WM) & ~tumour]))
            ghost = 0.5 * out[c] + 0.5 * np.roll(out[c], out.shape[2] // 6, axis=1)
            out[c] = np.where(head, np.abs(ghost + 0.6 * normal * rng.standard_normal(ghost.shape).astype(np.float32)), 0.0)
    return out


def crop_around_tumour(case, size: int) -> None:
    """Cuts a size³ block centred on the tumour (as the models' training crops were), keeping the RAS geometry."""
    idx = np.argwhere(case.labels > 0)
    centre = (idx.min(0) + idx.max(0)) // 2 if len(idx) else np.asarray(case.shape) // 2
    lo = np.clip(centre - size // 2, 0, np.maximum(np.asarray(case.shape) - size, 0))
    box = tuple(slice(int(a), int(a) + size) for a in lo)
    case.images = np.ascontiguousarray(case.images[(slice(None),) + box])
    case.labels = np.ascontiguousarray(case.labels[box])
    case.affine = case.affine.copy()
    case.affine[:3, 3] += case.affine[:3, :3] @ lo


def write_demo_cohort(n: int, out: str | Path, shape=(96, 112, 96), spacing: float = 2.0, crop: int | None = None) -> Path:
    """Writes OUT/<case>/{T1,T1c,T2,FLAIR,labels}.nii and OUT/cases.csv (ROI: the box around the ground truth).

    `crop`: keep only a crop³ block around the tumour; with 64 (the models' window) a case is one window per
    coalition, about 8× cheaper than the whole head, for cohorts on small machines and for tests.
    """
    out = Path(out)
    if n < 1:
        raise InputError(f"--cases {n}: a cohort needs at least one case.", "Pass --cases N with N ≥ 1 (20 shows the study's relations).")
    if (out / "cases.csv").exists():
        raise InputError(f"{out} already holds a cohort (cases.csv).", "Pass a new --out folder.")
    rows = []
    for row in difficulty_plan(n):
        case = make_brain_case(row["seed"], shape=shape, spacing=spacing, tumour_scale=row["tumour_scale"])
        case.images = degrade(case.images, case.labels, case.tissue, row["contrast"], row["noise"], row["defect"], row["seed"])
        if crop:
            crop_around_tumour(case, crop)
        paths = write_case(case, out / row["case_id"], suffix=".nii")
        rows.append({"case_id": row["case_id"], **{f"image_{c}": paths[c].relative_to(out).as_posix() for c in CHANNELS},
                     "ground_truth": paths["labels"].relative_to(out).as_posix(), "roi_mask": "",
                     **{k: row[k] for k in ("seed", "difficulty", "tumour_scale", "contrast", "noise", "defect")},
                     "tumour_voxels": int((case.labels > 0).sum())})
    with open(out / "cases.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "cases.csv"
