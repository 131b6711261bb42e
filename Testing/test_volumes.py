"""Volumes keep their geometry through NIfTI and NRRD, and mismatches are named, never silently fixed."""

import nrrd
import numpy as np
import pytest

from SegXAILib.errors import InputError
from SegXAILib.volumes import Geometry, box_mask, load_case, load_mask, read_volume, write_volume


def _oblique() -> Geometry:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.8, 1.1, 2.5])
    a[:3, 3] = [-30.0, 12.5, 7.0]
    return Geometry((9, 8, 7), a)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_round_trip_keeps_geometry(tmp_path, suffix):
    geo = _oblique()
    data = np.random.default_rng(0).normal(size=geo.shape).astype(np.float32)
    back, geo2 = read_volume(write_volume(data, geo, tmp_path / f"v{suffix}"))
    assert np.array_equal(back, data)
    assert geo.differences(geo2) == [] and np.allclose(geo.affine, geo2.affine, atol=1e-5)


def test_nrrd_in_lps_is_converted_to_ras(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    nrrd.write(str(tmp_path / "lps.nrrd"), data, {"space": "left-posterior-superior", "space directions": np.diag([1.0, 2.0, 3.0]),
                                                  "space origin": np.array([10.0, 20.0, 30.0]), "kinds": ["domain"] * 3})
    _, geo = read_volume(tmp_path / "lps.nrrd")
    assert np.allclose(geo.affine[:3, 3], [-10, -20, 30]) and np.allclose(np.diag(geo.affine)[:3], [-1, -2, 3])


def test_4d_file_gives_channels_and_mismatch_names_the_difference(tmp_path):
    geo = _oblique()
    four = np.random.default_rng(1).normal(size=geo.shape + (3,)).astype(np.float32)
    case = load_case([write_volume(four, geo, tmp_path / "four.nii.gz")])
    assert case.images.shape == (3,) + geo.shape and np.array_equal(case.images[2], four[..., 2])
    a = geo.affine.copy()
    a[:3, :3] *= 1.5
    other = write_volume(four[..., 0], Geometry(geo.shape, a), tmp_path / "other.nii.gz")
    with pytest.raises(InputError, match="spacing") as err:
        load_case([tmp_path / "four.nii.gz", other])
    assert "--resample" in err.value.fix
    resampled = load_case([tmp_path / "four.nii.gz", other], resample=True)
    assert resampled.images.shape == (4,) + geo.shape


def test_masks_and_boxes(tmp_path):
    geo = Geometry((10, 10, 10), np.eye(4))
    labels = np.zeros(geo.shape, np.uint8)
    labels[2:4, 2:4, 2:4] = 3
    assert load_mask(write_volume(labels, geo, tmp_path / "l.nii.gz"), geo, "reference").max() == 3
    box = box_mask(geo, [2, 2, 2], [4.0, 5.0, 3.0])
    assert box.sum() == 3 * 4 * 2
    with pytest.raises(InputError, match="outside the image"):
        box_mask(geo, [50, 50, 50], [60, 60, 60])
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="Cannot read"):
        read_volume(tmp_path / "bad.nii.gz")
