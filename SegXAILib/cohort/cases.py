"""The table of cases a cohort runs over: from a CSV, or from a folder with one subfolder per case.

CSV columns: `case_id`; `image_<channel>` per model input, in model order; `roi_mask` (empty: the box around the
ground truth); `ground_truth` (optional). Relative paths are relative to the CSV's folder. Any other column
(difficulty, scanner, ...) is carried into the cohort table unchanged.
Folder layout: DIR/<case>/<channel>.nii[.gz] per channel, optional roi.nii[.gz] and labels.nii[.gz].
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from ..errors import InputError

RESERVED = ("case_id", "roi_mask", "ground_truth")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass
class CohortCase:
    case_id: str
    images: list[str]
    roi_mask: str | None          # None: the box around the ground truth
    ground_truth: str | None
    covariates: dict = dataclasses.field(default_factory=dict)


def _path(value, base: Path) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
        return None
    p = Path(str(value).strip())
    return str(p if p.is_absolute() else base / p)


def _check(cases: list[CohortCase], where: str) -> list[CohortCase]:
    if not cases:
        raise InputError(f"{where} lists no case.", "List one case per row (CSV) or one subfolder per case.")
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"{where}: case ids {dup} appear more than once.", "Give every case its own case_id.")
    for c in cases:
        if not _SAFE_ID.match(c.case_id):
            raise InputError(f"{where}: case id {c.case_id!r} is not usable as a folder name.", "Use letters, digits, '.', '_' and '-'.")
        if c.roi_mask is None and c.ground_truth is None:
            raise InputError(f"{where}: case {c.case_id} has neither an ROI nor a ground truth to draw a box around.",
                             "Fill its roi_mask or ground_truth column.")
        missing = [p for p in c.images + [c.roi_mask, c.ground_truth] if p and not Path(p).exists()]
        if missing:
            raise InputError(f"{where}: case {c.case_id} names files that do not exist: {missing}.", "Fix the paths (relative paths are relative to the CSV).")
    return cases


def read_csv(path: str | Path) -> list[CohortCase]:
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise InputError(f"Cannot read the cases table {path}: {exc}", "Give a CSV with case_id, image_<channel>..., roi_mask, ground_truth.") from exc
    images = [c for c in table.columns if c.startswith("image_")]
    if "case_id" not in table.columns or not images:
        raise InputError(f"{path} needs a case_id column and one image_<channel> column per model input; it has {list(table.columns)}.",
                         "Name the columns case_id, image_T1, image_T1c, ... (model order), roi_mask, ground_truth.")
    base = path.parent
    cases = [CohortCase(str(row["case_id"]).strip(), [_path(row[c], base) for c in images], _path(row.get("roi_mask"), base),
                        _path(row.get("ground_truth"), base),
                        {k: row[k] for k in table.columns if k not in RESERVED and k not in images})
             for _, row in table.iterrows()]
    for c in cases:
        if None in c.images:
            raise InputError(f"{path}: case {c.case_id} has an empty image column.", "Every case needs every image_<channel> path.")
    return _check(cases, str(path))


def _find(folder: Path, stem: str) -> str | None:
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        if (folder / f"{stem}{suffix}").exists():
            return str(folder / f"{stem}{suffix}")
    return None


def read_folder(root: str | Path, channels: list[str]) -> list[CohortCase]:
    root = Path(root)
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = [_find(folder, c) for c in channels]
        if None in images:
            raise InputError(f"{folder} lacks {[c for c, i in zip(channels, images) if i is None]} (looked for <channel>.nii.gz/.nii/.nrrd).",
                             "Name each case's images by channel, or list the cases in a CSV.")
        cases.append(CohortCase(folder.name, images, _find(folder, "roi"), _find(folder, "labels") or _find(folder, "ground_truth")))
    return _check(cases, str(root))


def read_cases(path: str | Path, channels: list[str] | None) -> list[CohortCase]:
    """A CSV file, a folder holding cases.csv, or a folder of case subfolders (needs the channel names)."""
    path = Path(path)
    if path.is_file():
        return read_csv(path)
    if (path / "cases.csv").is_file():
        return read_csv(path / "cases.csv")
    if not path.is_dir():
        raise InputError(f"The cases {path} do not exist.", "Pass --cases CASES.csv or a folder with one subfolder per case.")
    if not channels:
        raise InputError(f"{path} is a folder of cases, but the model's channel names are unknown.", "Pass --channels T1,T1c,T2,FLAIR (model order).")
    return read_folder(path, channels)
