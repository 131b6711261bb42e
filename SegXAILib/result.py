"""The result folder: the contract between the engine and every front end (see DESIGN.md).

A result is written into a fresh temporary folder beside the destination and renamed into place at the end,
so a crash or a cancel never leaves a half-written result, and an existing result is never overwritten.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InputError
from .volumes import Geometry, write_volume

SCHEMA = "segxai.result/1"
RESULT_FILE = "result.json"
INDEX_FILE = "index.json"  # a run over several targets: one result folder per target beside it
PARTIAL_DIR = "partial"    # anytime results of a run still going (SegXAILib/partial.py); replaced by the final result


def sha256(path: str | Path) -> str:
    """Checksum of a file, or of every file in a folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (absent ones are left out)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("segxai", "torch", "numpy", "monai", "nnunetv2", "shapiq", "captum", "scikit-image", "nibabel"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def provenance(**fields: Any) -> dict:
    """Versions, host and time, plus what the caller knows (seed, budget, device, timings, models)."""
    return {"versions": versions(), "host": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **fields}


def check_destination(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuses to write over an existing non-empty folder unless `overwrite` (then only a previous result is replaced).
    A folder holding only partial/ is this run's own anytime result, which the final result replaces."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(p.name != PARTIAL_DIR for p in out.iterdir())):
        if not overwrite:
            raise InputError(f"The output folder {out} already exists and is not empty.",
                             "Choose a new --out folder (results are never overwritten), or pass --overwrite to replace an earlier SegXAI result.")
        if not ((out / RESULT_FILE).exists() or (out / INDEX_FILE).exists()):
            raise InputError(f"{out} is not a SegXAI result folder; refusing to replace it.", "Choose a new --out folder.")
    return out


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _write_into(folder: Path, result: Mapping[str, Any], maps: Mapping[str, tuple[np.ndarray, Geometry]],
                files: Mapping[str, bytes] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in dict(files or {}).items():  # other files beside result.json (e.g. PNG thumbnails): plain names only
        if Path(name).name != name or name in (RESULT_FILE, INDEX_FILE):
            raise ValueError(f"not a plain file name for a result folder: {name!r}")
        (folder / name).write_bytes(data)
    names = {key: write_volume(array, geometry, folder / f"{key}.nii.gz").name for key, (array, geometry) in dict(maps).items()}
    doc = {"schema": SCHEMA, **result, "maps": {**result.get("maps", {}), **names}}
    (folder / RESULT_FILE).write_text(json.dumps(doc, indent=2, default=_json_default))


def _atomic(out_dir: str | Path, overwrite: bool, fill) -> Path:
    """Runs fill(temporary folder) and renames the folder to `out_dir`; nothing is left behind on failure."""
    out = check_destination(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_result(out_dir: str | Path, result: Mapping[str, Any], maps: Mapping[str, tuple[np.ndarray, Geometry]] = (),
                 overwrite: bool = False, files: Mapping[str, bytes] | None = None) -> Path:
    """Writes result.json and its volumes (`maps`: key -> (array, geometry), saved as KEY.nii.gz) atomically, plus
    `files` (name -> bytes) beside them."""
    return _atomic(out_dir, overwrite, lambda tmp: _write_into(tmp, result, maps, files))


def write_results(out_dir: str | Path, results: Mapping[str, tuple[Mapping[str, Any], Mapping]], overwrite: bool = False) -> Path:
    """Several targets of one run: OUT/<target>/result.json each, and OUT/index.json listing them, atomically."""
    def fill(tmp: Path) -> None:
        for name, (result, maps, *files) in results.items():   # (result, maps) or (result, maps, files)
            _write_into(tmp / name, result, maps, *files)
        (tmp / INDEX_FILE).write_text(json.dumps({"schema": SCHEMA, "results": list(results)}, indent=2))

    return _atomic(out_dir, overwrite, fill)


def read_result(out_dir: str | Path) -> dict:
    """result.json of a result folder, with a clear error when it is not one."""
    path = Path(out_dir) / RESULT_FILE
    if not path.exists():
        raise InputError(f"{out_dir} has no {RESULT_FILE}.", "Point to a folder written by `segxai explain --out`.")
    return json.loads(path.read_text())
