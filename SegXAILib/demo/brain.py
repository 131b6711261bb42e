"""A seeded, deterministic generator of BraTS-like brain MRI: four contrasts (T1, T1c, T2, FLAIR) and tumour labels.

Everything is procedural and laid out in millimetres (RAS, origin at the centre of the field of view), so one seed
gives the same head, brain and tumour on any grid: `make_brain_case(7)` at 2 mm and
`make_brain_case(7, (240, 240, 155), 1.0)` show the same subject. Random fields live on fixed millimetre lattices
and are sampled by separable linear interpolation, which keeps generation vectorised and fast.

Anatomy: scalp (fat), skull (cortical bone with marrow), subarachnoid CSF, cortex with sulci and an
interhemispheric fissure, white matter, deep grey nuclei, lateral and third ventricles with choroid plexus, and
cortical vessels. The tumour sits in one hemisphere: an irregular core (enhancing rim around a necrotic centre,
rim thickness varying) inside finger-like oedema that spreads mainly through white matter.

Contrasts follow clinical MRI: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR CSF dark, GM > WM; T1c is T1 plus
enhancement of vessels, choroid plexus and the tumour rim. Oedema is bright on T2 and FLAIR and mildly dark on T1;
the enhancing rim is near-isointense on T1 and bright on T1c; necrosis is dark on T1 / T1c and bright on T2. So the
whole tumour is visible mainly on FLAIR / T2 and the enhancing tumour mainly on T1c. Each contrast then gets its own
per-seed tissue jitter, smooth multiplicative bias field, global scale and Rician noise, as scanners do; air is
exactly zero (as in skull-stripped or masked data), so z-scoring over nonzero voxels normalises the head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

CHANNELS = ["T1", "T1c", "T2", "FLAIR"]
LABELS = {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3}

# Tissue classes of the anatomical model (internal; only LABELS leave the module).
AIR, FAT, BONE, MARROW, CSF, GM, DGM, WM, CHOROID, VESSEL, OEDEMA, ENHANCING, NECROSIS = range(13)
TISSUES = {"air": AIR, "fat": FAT, "bone": BONE, "marrow": MARROW, "csf": CSF, "grey_matter": GM, "deep_grey": DGM,
           "white_matter": WM, "choroid_plexus": CHOROID, "vessel": VESSEL}  # normal anatomy under the tumour
# Reference intensities per contrast (WM ≈ 1 on T1), columns in CHANNELS order.
_INTENSITY = np.array([
    # T1    T1c   T2    FLAIR
    [0.00, 0.00, 0.00, 0.00],   # air
    [1.15, 1.15, 0.70, 0.75],   # scalp fat
    [0.08, 0.08, 0.05, 0.05],   # cortical bone
    [0.90, 0.95, 0.55, 0.60],   # diploic marrow
    [0.22, 0.22, 1.25, 0.12],   # CSF
    [0.62, 0.64, 0.62, 0.68],   # cortical grey matter
    [0.72, 0.74, 0.55, 0.62],   # deep grey nuclei
    [0.95, 0.96, 0.42, 0.50],   # white matter
    [0.55, 1.35, 0.80, 0.40],   # choroid plexus (enhances)
    [0.35, 1.30, 0.15, 0.20],   # vessels (flow void on T2, enhance on T1c)
    [0.72, 0.73, 0.95, 1.20],   # oedema
    [0.68, 1.45, 0.70, 0.85],   # enhancing tumour
    [0.30, 0.28, 1.15, 0.45],   # necrosis
], dtype=np.float32)
# Fraction of the oedema contrast left at its outer edge: the FLAIR signal fades into normal brain more than T2's,
# so the full extent needs T2 as well as FLAIR (as readers use both).
_OEDEMA_EDGE = np.array([0.65, 0.65, 0.8, 0.5], dtype=np.float32)
_SCANNER_SCALE = np.array([800.0, 900.0, 1500.0, 600.0], dtype=np.float32)
_LATTICE_EXTENT = 132.0  # mm: random fields are defined on [-132, 132]^3 mm, whatever the grid


@dataclasses.dataclass
class BrainCase:
    """One generated subject: `images` (4, I, J, K) float32 in CHANNELS order, `labels` (I, J, K) int16 (see LABELS)."""

    images: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    channel_names: list[str]
    seed: int
    tumour: dict = dataclasses.field(default_factory=dict)   # centre, radii, hemisphere, rim, necrosis present
    tissue: np.ndarray | None = None                          # (I, J, K) uint8 normal anatomy (TISSUES), tumour not drawn

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.labels.shape)


def centred_affine(shape, spacing: float | tuple[float, float, float]) -> np.ndarray:
    """IJK→RAS with `spacing` on the diagonal and the centre of the volume at the origin."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1) / 2 * spacing
    return affine


class _Fields:
    """Smooth Gaussian random fields on fixed mm lattices, sampled on the case grid by separable interpolation."""

    def __init__(self, seed: int, axes: list[np.ndarray]):
        self.seed = seed
        self.axes = axes  # voxel-centre coordinates (mm) along x, y, z

    def field(self, stream: int, step: float, sigma: float, lo=None, hi=None) -> np.ndarray:
        """Unit-variance field with correlation length ≈ `sigma` mm, lattice step `step` mm; (I, J, K) float32.

        `lo`/`hi` (mm, per axis) restrict the evaluation to a box of the grid (the rest is not computed); the
        field's values do not depend on the box or the grid.
        """
        n = int(np.ceil(2 * _LATTICE_EXTENT / step)) + 1
        rng = np.random.default_rng([self.seed, 1000 + stream])
        lattice = rng.standard_normal((n, n, n), dtype=np.float32)
        lattice = ndimage.gaussian_filter(lattice, sigma / step, mode="wrap")
        lattice /= lattice.std() + 1e-12
        out = lattice
        for axis, coords in enumerate(self.axes if lo is None else [c[lo[d]:hi[d]] for d, c in enumerate(self.axes)]):
            pos = np.clip((coords + _LATTICE_EXTENT) / step, 0, n - 1 - 1e-6)
            i0 = np.floor(pos).astype(int)
            w = (pos - i0).astype(np.float32)
            # crop before interpolating so that each pass touches only what is needed
            first, last = i0.min(), i0.max() + 2
            part = np.take(out, np.arange(first, last), axis=axis)
            shape = [1, 1, 1]
            shape[axis] = -1
            w = w.reshape(shape)
            out = np.take(part, i0 - first, axis=axis) * (1 - w) + np.take(part, i0 - first + 1, axis=axis) * w
        return out.astype(np.float32, copy=False)


def _ellipsoid_depth(x, y, z, centre, axes) -> np.ndarray:
    """Approximate signed distance (mm) inside an ellipsoid surface (positive inside), first-order (Sampson)."""
    u, v, w = (x - centre[0]) / axes[0], (y - centre[1]) / axes[1], (z - centre[2]) / axes[2]
    q = u * u + v * v + w * w
    grad = 2 * np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (w / axes[2]) ** 2) + 1e-6
    return ((1 - q) / grad).astype(np.float32)


def _ellipsoid(x, y, z, centre, axes) -> np.ndarray:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 < 1


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def make_brain_case(seed: int, shape=(96, 112, 96), spacing: float = 2.0, tumour_scale: float = 1.0) -> BrainCase:
    """A BraTS-like subject: T1, T1c, T2, FLAIR and labels (0 background, 1 necrosis, 2 oedema, 3 enhancing).

    `tumour_scale` shrinks or grows the tumour (core and oedema margin) without changing anything else the seed draws.
    """
    shape = tuple(int(s) for s in shape)
    affine = centred_affine(shape, spacing)
    sp = np.abs(np.diag(affine)[:3])
    axes1d = [affine[d, 3] + np.arange(shape[d]) * affine[d, d] for d in range(3)]
    x = axes1d[0].astype(np.float32)[:, None, None]
    y = axes1d[1].astype(np.float32)[None, :, None]
    z = axes1d[2].astype(np.float32)[None, None, :]
    fields = _Fields(seed, axes1d)
    rng = np.random.default_rng([seed, 1])  # subject anatomy

    # --- head and brain ------------------------------------------------------------------------------------
    scale = rng.uniform(0.94, 1.05, 3) * rng.uniform(0.95, 1.03)
    brain_axes = np.array([64.0, 84.0, 60.0]) * scale
    brain_centre = np.array([0.0, rng.uniform(-4, 4), rng.uniform(-6, 2)])
    t_csf, t_skull, t_scalp = rng.uniform(1.5, 3.0), rng.uniform(5.0, 7.5), rng.uniform(4.0, 7.0)
    depth = _ellipsoid_depth(x, y, z, brain_centre, brain_axes) + 2.0 * fields.field(0, 8.0, 14.0)
    head = depth > -(t_csf + t_skull + t_scalp)
    tissue = np.zeros(shape, np.uint8)
    tissue[head] = FAT
    skull = head & (depth <= -t_csf) & (depth > -(t_csf + t_skull))
    tissue[skull] = BONE
    tissue[skull & (np.abs(depth + t_csf + t_skull / 2) < t_skull / 6)] = MARROW
    intracranial = depth > -t_csf
    tissue[intracranial] = CSF
    brain = depth > 0
    tissue[brain] = WM

    # cortex, sulci (zero-crossings of a smooth field), interhemispheric fissure
    t_gm = rng.uniform(2.5, 3.5)
    folds = fields.field(1, 2.5, 3.2)
    sulcal_depth = rng.uniform(11.0, 16.0)
    tissue[brain & ((depth < t_gm) | ((np.abs(folds) < 0.8) & (depth < sulcal_depth + t_gm)))] = GM
    tissue[brain & (np.abs(folds) < 0.16) & (depth < sulcal_depth)] = CSF
    fissure = np.abs(x - 1.0 * fields.field(2, 8.0, 16.0)) < 1.0 + 0.35 * max(sp[0] - 1.0, 0)
    fissure &= (z > brain_centre[2] + 4) | ((depth < 22) & (z > brain_centre[2] - 25))
    tissue[brain & fissure] = CSF

    # deep grey nuclei, ventricles, choroid plexus
    c = brain_centre
    for side in (-1, 1):
        tissue[_ellipsoid(x, y, z, c + [side * 10, -14, -2], np.array([8, 12, 8]) * scale)] = DGM      # thalamus
        tissue[_ellipsoid(x, y, z, c + [side * 23, 4, 0], np.array([5, 14, 9]) * scale)] = DGM         # putamen
        tissue[_ellipsoid(x, y, z, c + [side * 13, 13, 8], np.array([4, 8, 6]) * scale)] = DGM         # caudate
    v_scale = rng.uniform(0.8, 1.35)
    for side in (-1, 1):
        bend = z - 0.012 * (y - c[1] + 4) ** 2   # lateral ventricles arch over the thalami
        lateral = _ellipsoid(x, y, bend, c + [side * 9 * scale[0], -4, 9], np.array([5.5 * v_scale, 26, 7 * v_scale]) * scale)
        tissue[lateral] = CSF
        tissue[lateral & _ellipsoid(x, y, z, c + [side * 10, -20, 6], np.array([3.5, 6, 3.5]) * scale)] = CHOROID
    tissue[_ellipsoid(x, y, z, c + [0, -6, -4], np.array([1.2 + 0.5 * v_scale, 10, 8]) * scale)] = CSF  # third ventricle

    # cortical vessels in the subarachnoid space and sulci, and the superior sagittal sinus
    vessels = fields.field(3, 3.0, 4.0)
    tissue[(tissue == CSF) & (depth < 6) & (np.abs(vessels) < 0.12)] = VESSEL
    tissue[intracranial & (np.abs(x) < 3.5) & (depth < 0) & (z > c[2] + 15)] = VESSEL

    # --- tumour --------------------------------------------------------------------------------------------
    trng = np.random.default_rng([seed, 2])
    side = trng.choice([-1.0, 1.0])
    r_core = trng.uniform(9.0, 19.0) * tumour_scale
    core_axes = r_core * trng.uniform(0.75, 1.25, 3)
    oedema_axes = core_axes + trng.uniform(7.0, 22.0, 3) * tumour_scale
    for _ in range(200):  # a centre in one hemisphere, deep enough that the core stays in the brain
        centre = c + np.array([side * trng.uniform(16, 40), trng.uniform(-48, 42), trng.uniform(-22, 32)]) * scale
        inside = ((centre - c) / (brain_axes - core_axes.max() - 6)) ** 2
        if inside.sum() < 1:
            break
    rot = _random_rotation(trng)
    amp_core, amp_oedema = trng.uniform(0.15, 0.3), trng.uniform(0.25, 0.4)
    rim_mm = trng.uniform(2.5, 5.0)
    has_necrosis = trng.uniform() < 0.85
    # work in the tumour's bounding box only
    reach = oedema_axes.max() * (1 + amp_oedema) + 4
    lo = [int(np.clip(np.floor((centre[d] - reach - affine[d, 3]) / sp[d]), 0, shape[d])) for d in range(3)]
    hi = [int(np.clip(np.ceil((centre[d] + reach - affine[d, 3]) / sp[d]) + 1, 0, shape[d])) for d in range(3)]
    box = tuple(slice(lo[d], hi[d]) for d in range(3))
    bx, by, bz = x[box[0]], y[:, box[1]], z[:, :, box[2]]
    rel = [bx - centre[0], by - centre[1], bz - centre[2]]
    local = [sum(rot[r, k] * rel[k] for k in range(3)) for r in range(3)]  # rotated coordinates
    shape_core = fields.field(4, 3.0, 6.0, lo, hi)
    shape_oedema = fields.field(5, 3.0, 5.0, lo, hi)
    d_core = np.sqrt(sum((local[r] / core_axes[r]) ** 2 for r in range(3))) / (1 + amp_core * shape_core)
    d_oedema = np.sqrt(sum((local[r] / oedema_axes[r]) ** 2 for r in range(3))) / (1 + amp_oedema * shape_oedema)
    b_tissue = tissue[box]
    core = (d_core < 1) & brain[box]
    inner = ndimage.distance_transform_edt(np.pad(core, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    rim = np.maximum(rim_mm * (1 + 0.35 * fields.field(6, 3.0, 5.0, lo, hi)), sp.max() * 1.01)
    necrosis = core & (inner > rim) if has_necrosis else np.zeros_like(core)
    outside = ndimage.distance_transform_edt(~core, sampling=sp)
    parenchyma = np.isin(b_tissue, (WM, GM, DGM)) & brain[box]
    oedema = ((d_oedema < np.where(b_tissue == WM, 1.0, 0.7)) | (outside <= 2.0 * sp.max())) & parenchyma & ~core
    labels = np.zeros(shape, np.int16)
    lab = labels[box]
    lab[oedema] = LABELS["oedema"]
    lab[core] = LABELS["enhancing"]
    lab[necrosis] = LABELS["necrosis"]

    # --- intensities ---------------------------------------------------------------------------------------
    irng = np.random.default_rng([seed, 3])
    texture = 1 + 0.035 * fields.field(7, 2.5, 2.5)
    heterogeneity = 0.12 * fields.field(8, 3.0, 4.0, lo, hi)
    closeness = np.clip(1 - d_oedema, 0, 1)
    images = np.empty((4,) + shape, np.float32)
    for ch in range(4):
        table = _INTENSITY[:, ch] * irng.uniform(0.95, 1.05, len(_INTENSITY)).astype(np.float32)
        img = table[tissue]
        part = img[box]
        base = part.copy()
        # oedema fades towards its edge; tumour tissue is heterogeneous
        edge = _OEDEMA_EDGE[ch]
        part[oedema] = (base + (table[OEDEMA] - base) * (edge + (1 - edge) * closeness))[oedema]
        part[core] = (table[ENHANCING] * (1 + heterogeneity))[core]
        part[necrosis] = (table[NECROSIS] * (1 + 0.8 * heterogeneity))[necrosis]
        img[box] = part
        img *= texture
        img = ndimage.gaussian_filter(img, 0.45 * 1.0 / sp, truncate=2.5)  # partial volume
        bias = np.exp(irng.uniform(0.08, 0.2) * fields.field(20 + ch, 16.0, 45.0))
        gain = _SCANNER_SCALE[ch] * irng.uniform(0.6, 1.6)
        sigma = irng.uniform(0.015, 0.04)
        n1 = irng.standard_normal(shape, dtype=np.float32)
        n2 = irng.standard_normal(shape, dtype=np.float32)
        signal = img * bias
        img = np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2) * gain  # Rician magnitude
        img[~head] = 0.0
        images[ch] = img

    info = {"hemisphere": "right" if side > 0 else "left", "centre_ras_mm": np.round(centre, 2).tolist(),
            "core_radii_mm": np.round(core_axes, 2).tolist(), "oedema_radii_mm": np.round(oedema_axes, 2).tolist(),
            "rim_mm": round(float(rim_mm), 2), "necrosis": bool(necrosis.any())}
    return BrainCase(images, labels, affine, list(CHANNELS), int(seed), info, tissue)


def write_case(case: BrainCase, folder: str | Path, suffix: str = ".nii.gz") -> dict[str, Path]:
    """One NIfTI per contrast (T1.nii.gz, ...) and labels.nii.gz; returns {"T1": path, ..., "labels": path}.
    `suffix` ".nii" writes uncompressed (much faster, for many cases)."""
    from ..volumes import Geometry, write_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geometry = Geometry(case.shape, case.affine)
    paths = {name: write_volume(case.images[c], geometry, folder / f"{name}{suffix}") for c, name in enumerate(case.channel_names)}
    paths["labels"] = write_volume(case.labels, geometry, folder / f"labels{suffix}")
    return paths
