"""A synthetic abdominal CT case in Hounsfield units: torso, lung bases, liver with lesions, spleen, kidneys, spine, aorta.

`make_torso_case(seed)` is deterministic per seed and builds its anatomy in millimetres in RAS coordinates centred on
the volume (x towards the patient's right, y anterior, z superior), so it works at any shape and spacing: a larger
field of view shows more air around the body, a finer spacing the same organ layout in more voxels (lesion
centres are drawn in millimetres too, so they move at most when a candidate sits at the depth threshold; texture
and noise are drawn per grid). The default grid, 96 x 80 x 64 at 3 x 3 x 4 mm, covers 288 x 240 x 256 mm.

Phase: **unenhanced** (non-contrast) CT. Liver ≈ 55–65 HU, spleen ≈ 45–50, kidneys ≈ 30, aorta and IVC ≈ 40, muscle
≈ 45, fat ≈ −100, lung ≈ −850, air −1000, vertebral cancellous bone ≈ 400–500 with a brighter cortical rim (≈ 800).
Liver lesions are hypodense (20–35 HU). Each seed varies body size, organ positions, sizes and shapes (a smooth
random warp), lesion count, size and position, textures and noise (σ 10–15 HU).

`organs` labels the organs (`ORGANS`); `labels` holds what the demo CT model segments: 1 liver parenchyma, 2 lesion.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..volumes import Geometry, write_volume

ORGANS = {1: "liver", 2: "spleen", 3: "left kidney", 4: "right kidney", 5: "spine", 6: "aorta", 7: "liver lesion"}
TARGETS = {0: "background", 1: "liver", 2: "lesion"}
CHANNELS = ["CT"]
PHASE = "unenhanced"


@dataclasses.dataclass
class TorsoCase:
    images: np.ndarray          # (1, I, J, K) float32, Hounsfield units
    organs: np.ndarray          # (I, J, K) int16, keys of ORGANS; 0 = everything else
    labels: np.ndarray          # (I, J, K) int16: 0 background, 1 liver parenchyma, 2 liver lesion
    affine: np.ndarray          # 4x4 IJK -> RAS
    channel_names: list[str]
    seed: int
    lesions: list[dict] = dataclasses.field(default_factory=list)   # centre_mm (RAS), radius_mm, hu

    @property
    def geometry(self) -> Geometry:
        return Geometry(tuple(self.labels.shape), self.affine)


def torso_affine(shape, spacing) -> np.ndarray:
    """Diagonal IJK→RAS affine with positive spacing, origin placing the volume's centre at (0, 0, 0)."""
    a = np.diag([*map(float, spacing), 1.0])
    a[:3, 3] = -(np.asarray(shape, float) - 1) / 2 * np.asarray(spacing, float)
    return a


def _smooth_field(rng: np.random.Generator, shape, spacing, sigma_mm: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length `sigma_mm`, made on a coarse grid and upsampled."""
    spacing = np.asarray(spacing, float)
    factor = np.maximum(1, np.floor(sigma_mm / spacing / 2)).astype(int)      # coarse voxels per fine voxel
    coarse = tuple(int(np.ceil(s / f)) + 2 for s, f in zip(shape, factor))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_mm / spacing / factor, mode="wrap")
    if np.any(factor > 1):
        field = ndimage.zoom(field, factor, order=1)
    field = field[:shape[0], :shape[1], :shape[2]]
    return (field - field.mean()) / (field.std() + 1e-6)


class _Anatomy:
    """Coordinates (mm) of the grid, with a smooth random warp shared by the organs."""

    def __init__(self, shape, spacing, rng: np.random.Generator):
        a = torso_affine(shape, spacing)
        self.x = (a[0, 3] + a[0, 0] * np.arange(shape[0], dtype=np.float32))[:, None, None]
        self.y = (a[1, 3] + a[1, 1] * np.arange(shape[1], dtype=np.float32))[None, :, None]
        self.z = (a[2, 3] + a[2, 2] * np.arange(shape[2], dtype=np.float32))[None, None, :]
        # warp: a few long-wavelength sinusoids per axis, ~5-8 mm amplitude
        full = np.broadcast_arrays(self.x, self.y, self.z)
        self.w = []
        for axis in range(3):
            d = np.zeros(shape, np.float32)
            for _ in range(3):
                k = rng.normal(size=3)
                k *= 2 * np.pi / rng.uniform(160, 320) / np.linalg.norm(k)
                phase = full[0] * k[0] + full[1] * k[1] + full[2] * k[2] + rng.uniform(0, 2 * np.pi)
                d += np.float32(rng.uniform(2.0, 4.0)) * np.sin(phase)
            self.w.append(full[axis] + d)

    def ellipsoid(self, centre, axes, angle_deg: float = 0.0, tilt_deg: float = 0.0, warped: bool = True) -> np.ndarray:
        """Normalised squared radius of an ellipsoid, rotated by `angle_deg` about z and `tilt_deg` about y."""
        x, y, z = self.w if warped else (self.x, self.y, self.z)
        dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
        if angle_deg:
            c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        if tilt_deg:
            c, s = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
            dx, dz = c * dx + s * dz, -s * dx + c * dz
        return (dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2


def make_torso_case(seed: int, shape=(96, 80, 64), spacing=(3.0, 3.0, 4.0)) -> TorsoCase:
    """Deterministic synthetic unenhanced abdominal CT (HU) with organ and target label maps; see the module notes."""
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    A = _Anatomy(shape, spacing, rng)
    x, y, z = A.x, A.y, A.z
    u = rng.uniform
    full = np.zeros(shape, bool)

    hu = np.full(shape, -1000.0, np.float32)     # air
    amp = np.zeros(shape, np.float32)            # texture amplitude per tissue
    organs = np.zeros(shape, np.int16)

    def paint(mask, value, texture=0.0, label=None):
        mask = mask | full
        hu[mask] = value
        amp[mask] = texture
        if label is not None:
            organs[mask] = label
        return mask

    # --- body wall: skin/subcutaneous fat, muscle, visceral fat --------------------------------------------------
    ax, ay = u(124, 138), u(88, 102)
    scale_z = 1 + 0.04 * z / 128.0                                     # slightly wider lower down
    r_body = (x / (ax * scale_z)) ** 2 + (y / ay) ** 2
    t_fat, t_mus = u(10, 24), u(8, 12)
    ix, iy = ax - t_fat, ay - t_fat
    r_inner = (x / (ix * scale_z)) ** 2 + (y / iy) ** 2
    r_cavity = (x / ((ix - t_mus) * scale_z)) ** 2 + (y / (iy - t_mus)) ** 2
    body = paint(r_body <= 1, u(-110, -90), 8)
    paint(r_inner <= 1, u(40, 50), 5)
    cavity = (r_cavity <= 1) | full
    paint(cavity, u(-100, -80), 12)                                    # visceral fat

    # spine position (posterior midline), slightly curved along z
    ys = float(-(iy - t_mus) + u(38, 46)) + 4 * np.sin(z / 180.0)
    # paraspinal muscles and psoas
    for side in (-1, 1):
        para = ((x - side * 32) / 26) ** 2 + ((y - (ys - 38)) / 20) ** 2 <= 1
        paint(para & (r_inner <= 1), u(42, 50), 5)
        psoas_r = np.clip(6 + (40 - z) * 0.12, 0, 22)                  # grows towards the pelvis
        psoas = ((x - side * (28 + psoas_r * 0.4)) / np.maximum(psoas_r, 1e-3)) ** 2 + ((y - (ys + 4)) / np.maximum(psoas_r * 0.8, 1e-3)) ** 2 <= 1
        paint(psoas & (psoas_r > 2), u(42, 50), 5)

    # ribs: oblique bands in the muscle layer of the upper abdomen (bone, label 0)
    period = u(24, 28)
    rib_phase = (z + 0.35 * np.abs(y - ys) + u(0, period)) % period
    ribs = (r_inner <= 1.02) & (r_cavity > 0.93) & (rib_phase < 5) & (z > -40 + 0.2 * y) & (y > ys - 25)
    paint(ribs, u(550, 700), 40)

    # --- diaphragm and lung bases ----------------------------------------------------------------------------------
    h_right, h_left = u(55, 70), u(45, 60)
    h = np.where(x > 0, h_right, h_left)
    dome = h - 55 * (((np.abs(x) - 55) / 80) ** 2 + (y / 95) ** 2)
    posterior_recess = np.clip((ys + 10 - y) * 0.6, 0, 30)             # bases reach lower posteriorly
    zd = dome - posterior_recess
    thorax = cavity & (z > zd)
    mediastinum = (x / 30) ** 2 + ((y - (ys + 22)) / 34) ** 2 <= 1
    heart = (A.ellipsoid((-15, 28, h_left + 62), (58, 48, 50)) <= 1) & (z > h_left + 6)
    paint(thorax & ~mediastinum & ~heart, u(-870, -830), 25)
    paint(thorax & (mediastinum | heart), u(-100, -80), 12)
    paint(thorax & heart, u(35, 45), 5)
    below = cavity & (z < zd - 4)                                      # abdomen, under a 4 mm diaphragm

    # --- bowel and stomach (label 0) ----------------------------------------------------------------------------------
    for _ in range(int(rng.integers(10, 16))):
        c = (u(-85, 85), u(-10, 70), u(-125, -10))
        r = u(12, 22)
        loop = A.ellipsoid(c, (r * u(0.8, 1.4), r, r * u(0.8, 1.5)), angle_deg=u(0, 180)) <= 1
        paint(loop & below, u(15, 40), 8)
        if rng.random() < 0.5:
            gas = A.ellipsoid((c[0], c[1] + 0.5 * r, c[2]), (0.5 * r, 0.35 * r, 0.5 * r)) <= 1
            paint(gas & loop & below, u(-980, -900), 10)
    stomach = A.ellipsoid((-45 + u(-8, 8), 25 + u(-8, 8), 25 + u(-8, 8)), (40, 28, 35), angle_deg=-30) <= 1
    paint(stomach & below, u(10, 30), 6)
    stomach_gas = A.ellipsoid((-45, 45, 35), (30, 12, 25), angle_deg=-30) <= 1
    paint(stomach_gas & stomach & below & (rng.random() < 0.7), u(-990, -930), 10)

    # --- liver (right upper abdomen), left lobe across the midline ------------------------------------------------
    s = u(0.9, 1.08)
    right = A.ellipsoid((58 + u(-8, 8), -2 + u(-8, 8), 14 + u(-10, 6)), (68 * s, 78 * s * u(0.9, 1.1), 80 * s), angle_deg=u(-15, 15)) <= 1
    left = A.ellipsoid((-5 + u(-10, 6), 30 + u(-6, 6), 32 + u(-8, 8)), (52 * s * u(0.8, 1.1), 30 * s, 26 * s), angle_deg=u(5, 25)) <= 1
    liver = (right | left) & below
    liver_hu = u(55, 65)
    paint(liver, liver_hu, 4, label=1)

    # --- spleen (left, posterior) ---------------------------------------------------------------------------------
    ss = u(0.85, 1.15)
    spleen = A.ellipsoid((-76 + u(-6, 6), -28 + u(-8, 8), 16 + u(-8, 8)), (26 * ss, 52 * ss, 46 * ss), angle_deg=u(40, 60)) <= 1
    paint(spleen & below, u(44, 50), 4, label=2)

    # --- kidneys (beside the spine; the right one lower, under the liver) ----------------------------------------
    for label, side, zc in ((3, -1, -25 + u(-8, 8)), (4, 1, -38 + u(-8, 8))):
        c = (side * (62 + u(-6, 6)), ys + 8 + u(-5, 5), zc)
        ks = u(0.9, 1.1)
        r_kidney = A.ellipsoid(c, (24 * ks, 22 * ks, 52 * ks), angle_deg=side * u(20, 35), tilt_deg=side * u(8, 16))
        paint((r_kidney <= 1.45) & cavity, u(-100, -80), 12, label=0)          # perirenal fat
        kidney = r_kidney <= 1
        paint(kidney & cavity, u(28, 34), 4, label=label)
        sinus = A.ellipsoid((c[0] - side * 16, c[1] + 6, c[2]), (12, 10, 24)) <= 1
        paint(sinus & kidney & cavity, u(-90, -60), 8, label=0)

    # --- vessels: IVC (label 0) and aorta, anterior to the spine -----------------------------------------------
    ivc = ((x - (20 + u(-4, 4))) / 12) ** 2 + ((y - (ys + 34)) / 10) ** 2 <= 1
    paint(ivc & cavity, u(35, 42), 3)
    r_ao = u(9, 12)
    aorta = ((x + 14 + u(-4, 4)) / r_ao) ** 2 + ((y - (ys + 30)) / r_ao) ** 2 <= 1
    paint(aorta & cavity, u(36, 44), 3, label=6)

    # --- spine: vertebral bodies with cortical rim, posterior arch, discs ---------------------------------------
    rb = u(17, 21)
    vb = (x / (rb * 1.15)) ** 2 + ((y - ys) / rb) ** 2
    canal = (x / 9) ** 2 + ((y - (ys - rb - 9)) / 8) ** 2
    arch = (x / 16) ** 2 + ((y - (ys - rb - 9)) / 14) ** 2 <= 1
    spinous = (np.abs(x) < 4) & (y < ys - rb - 12) & (y > ys - rb - 42)
    transverse = (np.abs(x) < 38) & (np.abs(y - (ys - rb - 6)) < 4)
    posterior = (arch | spinous | transverse) & (canal > 1)
    bone = (vb <= 1) | posterior
    period, disc_h = u(30, 34), u(6, 8)
    disc = ((z - u(0, period)) % period) < disc_h
    cancellous_hu = u(380, 480)
    paint(bone & ~disc, cancellous_hu, 25, label=5)
    rim = ((vb <= 1) & (vb > (1 - 2.5 / rb) ** 2)) | (posterior & ((canal < 1.6) | spinous))
    paint(rim & ~disc, u(750, 900), 30, label=5)
    paint((vb <= 1) & disc, u(70, 95), 6, label=0)
    paint(canal <= 1, u(10, 25), 4, label=0)
    paint(~body, -1000.0, 0, label=0)

    # --- liver lesions: hypodense, well inside the liver ----------------------------------------------------------
    # Their own random stream, with candidate centres drawn in millimetres, so that a seed places its lesions at
    # (nearly) the same place on any grid and the main stream's draws do not depend on the grid.
    lrng = np.random.default_rng([int(seed), 7])
    n_lesions = 1 + int(lrng.random() < 0.5)
    draws = [(lrng.uniform(9, 22), lrng.uniform(0.85, 1.2, 3), lrng.uniform(0, 180), lrng.uniform(20, 35))
             for _ in range(n_lesions)]
    points = lrng.uniform((-40, -100, -110), (140, 100, 110), size=(4096, 3))
    a = torso_affine(shape, spacing)
    idx = np.rint((points - a[:3, 3]) / np.asarray(spacing)).astype(int)
    on_grid = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    lesions = []
    liver_now = organs == 1
    if liver_now.any():
        dist = ndimage.distance_transform_edt(liver_now, sampling=spacing)
        depth = np.where(on_grid, dist[tuple(np.clip(idx, 0, np.asarray(shape) - 1).T)], 0.0)
        placed: list[tuple[np.ndarray, float]] = []
        for r, ratios, angle, lesion_hu in draws:
            while True:
                reach = float(r * ratios.max())
                ok = depth > reach + 6
                for centre, other in placed:
                    ok &= np.linalg.norm(points - centre, axis=1) > reach + other + 6
                if ok.any() or r < 4:
                    break
                r *= 0.8
            if not ok.any():
                break
            centre = points[int(np.argmax(ok))]
            blob = (A.ellipsoid(centre, r * ratios, angle_deg=angle, warped=False) <= 1) & liver_now
            paint(blob, lesion_hu, 5, label=7)
            placed.append((centre, reach))
            lesions.append({"centre_mm": [round(float(c), 2) for c in centre], "radius_mm": round(float(r), 2),
                            "hu": round(float(lesion_hu), 1), "voxels": int(blob.sum())})

    # --- texture and noise ------------------------------------------------------------------------------------------
    texture = _smooth_field(rng, shape, spacing, sigma_mm=u(5, 8))
    hu += amp * texture
    hu += rng.normal(0, u(10, 15), size=shape).astype(np.float32)
    np.clip(hu, -1024, 3071, out=hu)

    labels = np.zeros(shape, np.int16)
    labels[organs == 1] = 1
    labels[organs == 7] = 2
    return TorsoCase(images=hu[None].astype(np.float32), organs=organs, labels=labels, affine=torso_affine(shape, spacing),
                     channel_names=list(CHANNELS), seed=int(seed), lesions=lesions)


def write_torso_case(case: TorsoCase, folder: str | Path) -> dict[str, Path]:
    """Writes CT.nii.gz (HU), organs.nii.gz and labels.nii.gz into `folder`; returns {"CT", "organs", "labels"} → path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geometry = case.geometry
    return {"CT": write_volume(case.images[0], geometry, folder / "CT.nii.gz"),
            "organs": write_volume(case.organs, geometry, folder / "organs.nii.gz"),
            "labels": write_volume(case.labels, geometry, folder / "labels.nii.gz")}
