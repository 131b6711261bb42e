"""Multi-contrast volumes with their geometry (IJK→RAS), NIfTI / NRRD I/O and the checks that keep them honest.

Arrays are indexed (i, j, k) as stored on disk; `Geometry.affine` maps (i, j, k, 1) to RAS millimetres.
Every output the engine writes uses the geometry of the first input image, so overlays land where they belong.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Shape and IJK→RAS affine of a 3D grid."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        return self.affine[:3, :3] / self.spacing

    def differences(self, other: "Geometry") -> list[str]:
        """Human-readable differences (empty when the grids match to within a micrometre-level tolerance)."""
        out = []
        if tuple(self.shape) != tuple(other.shape):
            out.append(f"shape {tuple(other.shape)} vs {tuple(self.shape)}")
        else:
            if not np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=1e-5):
                out.append(f"spacing {np.round(other.spacing, 4).tolist()} vs {np.round(self.spacing, 4).tolist()} mm")
            if not np.allclose(self.origin, other.origin, atol=1e-3):
                out.append(f"origin {np.round(other.origin, 3).tolist()} vs {np.round(self.origin, 3).tolist()} mm")
            if not np.allclose(self.direction, other.direction, atol=1e-4):
                out.append(f"direction {np.round(other.direction, 4).tolist()} vs {np.round(self.direction, 4).tolist()}")
        return out

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "ijk_to_ras": np.asarray(self.affine).round(6).tolist()}


@dataclasses.dataclass
class Case:
    """One subject: `images` is (C, I, J, K) float32, one channel per model input, in the order the model takes."""

    images: np.ndarray
    geometry: Geometry
    channel_names: list[str]
    sources: list[str]

    @property
    def n_channels(self) -> int:
        return self.images.shape[0]


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array and IJK→RAS affine of a NIfTI or NRRD file; a 4D file keeps channels on the last axis."""
    name = path.name.lower()
    if not path.exists():
        raise InputError(f"{path} does not exist.", "Check the path.")
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)
        if name.endswith((".nrrd", ".nhdr")):
            return _read_nrrd(path)
    except InputError:
        raise
    except Exception as exc:  # corrupt or truncated files
        raise InputError(f"Cannot read {path}: {exc}", "Check that the file is a complete NIfTI or NRRD volume.") from exc
    raise InputError(f"{path}: unsupported file type.", "Give a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) file.")


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    data, header = nrrd.read(str(path))
    kinds = header.get("kinds") or ["domain"] * data.ndim
    domain = [ax for ax, kind in enumerate(kinds) if kind in ("domain", "space")]
    if len(domain) != 3:
        raise InputError(f"{path}: expected 3 spatial axes, found {len(domain)}.", "Give a 3D (or 3D + channels) volume.")
    others = [ax for ax in range(data.ndim) if ax not in domain]
    data = np.transpose(data, domain + others)
    directions = np.asarray(header.get("space directions"), dtype=object)
    matrix = np.array([d for d in directions if d is not None and not (isinstance(d, float) and np.isnan(d))], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = matrix.T if matrix.shape == (3, 3) else np.eye(3)
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        affine = LPS_TO_RAS @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise InputError(f"{path}: NRRD space '{space}' is not supported.", "Save the volume in RAS or LPS space.")
    return data, affine


def read_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """A 3D volume (or 3D + channels on the last axis) and the geometry of its first three axes."""
    data, affine = _read(Path(path))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise InputError(f"{path}: expected a 3D or 4D volume, got shape {data.shape}.", "Give one 3D file per contrast or one 4D file.")
    return data, Geometry(tuple(int(s) for s in data.shape[:3]), affine)


def write_volume(array: np.ndarray, geometry: Geometry, path: str | Path, compress: bool = True) -> Path:
    """Writes a 3D array in `geometry` as NIfTI (.nii.gz) or NRRD (.nrrd, LPS as Slicer writes it).

    `compress=False` writes a raw NRRD: for files read once right away (the Slicer panel's inputs).
    """
    path = Path(path)
    if array.shape[:3] != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    if path.name.endswith(".nrrd"):
        import nrrd

        lps = LPS_TO_RAS @ geometry.affine
        header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
                  "kinds": ["domain"] * 3, "encoding": "gzip" if compress else "raw"}
        nrrd.write(str(path), np.ascontiguousarray(array), header)
    else:
        import nibabel as nib

        img = nib.Nifti1Image(np.asarray(array), geometry.affine)
        img.set_qform(geometry.affine, code=1)
        img.set_sform(geometry.affine, code=1)
        nib.save(img, str(path))
    return path


def resample_to(array: np.ndarray, source: Geometry, target: Geometry, order: int) -> np.ndarray:
    """Resamples a 3D array from `source` onto `target` (order 1 = trilinear for images, 0 = nearest for labels)."""
    matrix = np.linalg.inv(source.affine) @ target.affine
    if order == 0:
        return _nearest(np.asarray(array), matrix, tuple(target.shape))
    from scipy.ndimage import affine_transform

    return affine_transform(np.asarray(array, dtype=np.float32), matrix[:3, :3], matrix[:3, 3],
                            output_shape=tuple(target.shape), order=order, mode="constant", cval=0.0)


def _nearest(array: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour lookup, slice by slice; a target voxel takes the source voxel its centre rounds to, so grids
    that differ by whole voxels map exactly and edge voxels are kept (scipy's order-0 drops some at the border)."""
    out = np.zeros(shape, array.dtype)
    ij = np.indices(shape[:2]).reshape(2, -1).astype(float)
    bounds = np.array(array.shape)[:, None]
    for k in range(shape[2]):
        points = matrix[:3, :3] @ np.vstack([ij, np.full(ij.shape[1], float(k))]) + matrix[:3, 3:4]
        idx = np.rint(points).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < bounds), axis=0)
        plane = np.zeros(ij.shape[1], array.dtype)
        plane[inside] = array[tuple(idx[:, inside])]
        out[:, :, k] = plane.reshape(shape[:2])
    return out


def _check_finite(array: np.ndarray, path: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InputError(f"{path} has {bad} NaN or infinite voxels.", "Replace them (e.g. with 0) before explaining; the model's output there is undefined.")


def onto_grid(arrays: list[np.ndarray], geo: Geometry, grid: Geometry, resample: bool, name: str, first: str, fix: str) -> list[np.ndarray]:
    """`arrays` (on `geo`) on the case grid: unchanged when the grids agree, trilinear when `resample`, else an error."""
    diffs = grid.differences(geo)
    if not diffs:
        return arrays
    if not resample:
        raise InputError(f"{name} is not on the grid of {first}: {'; '.join(diffs)}.", fix)
    return [resample_to(a, geo, grid, order=1) for a in arrays]


def load_case(paths: Sequence[str | Path], channel_names: Sequence[str] | None = None, resample: bool = False) -> Case:
    """One file per contrast, or one 4D file. Contrasts on a different grid are an error unless `resample`."""
    channels: list[np.ndarray] = []
    sources: list[str] = []
    geometry: Geometry | None = None
    for path in paths:
        data, geo = read_volume(path)
        _check_finite(data, str(path))
        stack = [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
        geometry = geometry or geo
        stack = onto_grid(stack, geo, geometry, resample, str(path), str(paths[0]),
                          "Register/resample the contrasts onto one grid, or pass --resample to resample them onto the first image (trilinear).")
        channels.extend(np.asarray(s, dtype=np.float32) for s in stack)
        sources.extend([str(path)] * len(stack))
    if not channels:
        raise InputError("No image given.", "Pass one --image per model input channel.")
    names = list(channel_names) if channel_names else [f"channel{c}" for c in range(len(channels))]
    if len(names) != len(channels):
        raise InputError(f"{len(channels)} image channels but {len(names)} channel names.", "Give one name per channel.")
    return Case(np.stack(channels), geometry, names, sources)


def load_mask(path: str | Path, geometry: Geometry, what: str, resample: bool = False) -> np.ndarray:
    """An integer label volume on the case grid (`what` names it in errors: "ROI mask", "reference" ...)."""
    data, geo = read_volume(path)
    if data.ndim == 4:
        raise InputError(f"The {what} {path} is 4D.", f"Give the {what} as a 3D label volume.")
    _check_finite(data, str(path))
    if diffs := geometry.differences(geo):
        if not resample:
            raise InputError(f"The {what} {path} is not on the image grid: {'; '.join(diffs)}.",
                             f"Save the {what} on the grid of the first image, or pass --resample (nearest neighbour).")
        data = resample_to(data, geo, geometry, order=0)
    return np.rint(data).astype(np.int32)


def box_mask(geometry: Geometry, lo_ras: Sequence[float], hi_ras: Sequence[float]) -> np.ndarray:
    """The voxels whose centres lie in an axis-aligned RAS box; an error when the box misses the image."""
    ijk = np.indices(geometry.shape).reshape(3, -1)
    ras = geometry.affine[:3, :3] @ ijk + geometry.affine[:3, 3:4]
    lo, hi = np.minimum(lo_ras, hi_ras), np.maximum(lo_ras, hi_ras)
    inside = np.all((ras >= np.asarray(lo)[:, None]) & (ras <= np.asarray(hi)[:, None]), axis=0)
    mask = inside.reshape(geometry.shape)
    if not mask.any():
        raise InputError(f"The ROI box ({', '.join(f'{v:g}' for v in lo)})..({', '.join(f'{v:g}' for v in hi)}) mm (RAS) lies outside the image.", "Draw the ROI over the image (RAS coordinates, mm).")
    return mask
