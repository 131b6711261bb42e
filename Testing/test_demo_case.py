"""The demo case generator: deterministic, BraTS label conventions, and contrasts that show what they should by construction."""

import numpy as np
import pytest
from scipy import ndimage

from SegXAILib.demo import CHANNELS, LABELS, make_brain_case, write_case
from SegXAILib.demo.brain import TISSUES
from SegXAILib.models.base import zscore
from SegXAILib.volumes import load_case, load_mask

NEC, OED, ENH = LABELS["necrosis"], LABELS["oedema"], LABELS["enhancing"]


@pytest.fixture(scope="module")
def case():
    return make_brain_case(11)


@pytest.fixture(scope="module")
def other():
    return make_brain_case(12)


def test_same_seed_same_case_different_seed_different_tumour(case, other):
    again = make_brain_case(11)
    assert np.array_equal(case.images, again.images) and np.array_equal(case.labels, again.labels)
    assert np.array_equal(case.affine, again.affine)
    assert not np.array_equal(case.labels, other.labels)
    centre = lambda c: np.argwhere(c.labels > 0).mean(0)
    assert np.linalg.norm(centre(case) - centre(other)) > 2 or abs(np.count_nonzero(case.labels) - np.count_nonzero(other.labels)) > 500


def test_layout_and_types(case):
    assert case.images.shape == (4, 96, 112, 96) and case.images.dtype == np.float32
    assert case.labels.shape == (96, 112, 96) and case.labels.dtype == np.int16
    assert case.channel_names == CHANNELS == ["T1", "T1c", "T2", "FLAIR"]
    assert LABELS == {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3}
    assert np.allclose(np.diag(case.affine), [2, 2, 2, 1])
    centre = case.affine @ np.array([*(np.array(case.labels.shape) - 1) / 2, 1.0])
    assert np.allclose(centre[:3], 0)
    assert np.isfinite(case.images).all() and (case.images >= 0).all()
    head = case.images[0] > 0
    assert (case.images[:, ~head] == 0).all() and (case.images[:, head] > 0).all()  # air is exactly zero
    assert 0.2 < head.mean() < 0.7


def test_label_conventions(case, other):
    for c in (case, other):
        values = set(np.unique(c.labels).tolist())
        assert values <= {0, 1, 2, 3} and {OED, ENH} <= values
        necrosis, core = c.labels == NEC, np.isin(c.labels, (NEC, ENH))
        # enhancing surrounds necrosis: every neighbour of a necrotic voxel is tumour core
        assert not (ndimage.binary_dilation(necrosis) & ~core).any()
        # oedema around the core: the core's outer shell is (almost all) oedema
        shell = ndimage.binary_dilation(core) & ~core
        assert (c.labels[shell] == OED).mean() > 0.9
        # the tumour stays in one hemisphere's brain, inside the head
        assert (c.images[0][c.labels > 0] > 0).all()


def test_tumour_sits_in_one_hemisphere(case):
    x = (case.affine @ np.c_[np.argwhere(case.labels == ENH), np.ones(np.count_nonzero(case.labels == ENH))].T)[0]
    assert (x > 0).mean() > 0.95 or (x < 0).mean() > 0.95


def _z(case):
    return dict(zip(CHANNELS, zscore(case.images)))


def test_contrast_visibility_by_construction(case, other):
    for c in (case, other):
        z, lab = _z(c), c.labels
        enh, oed, nec = lab == ENH, lab == OED, lab == NEC
        # enhancing tumour: bright on T1c, about T1 level on T1
        assert z["T1c"][enh].mean() - z["T1"][enh].mean() > 1.0
        # oedema: brighter on FLAIR and T2 than the surrounding normal brain (white matter ring around it)
        ring = ndimage.binary_dilation(lab > 0, iterations=4) & (lab == 0) & (c.images[0] > 0)
        assert z["FLAIR"][oed].mean() - z["FLAIR"][ring].mean() > 0.8
        assert z["T2"][oed].mean() - z["T2"][ring].mean() > 0.3
        # necrosis (when present): bright on T2, dark on T1c
        if nec.any():
            assert z["T2"][nec].mean() - z["T1c"][nec].mean() > 1.5


def test_normal_tissue_contrasts(case):
    """T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF dark, GM > WM; T1c enhances vessels / choroid plexus (away from the tumour)."""
    z = _z(case)
    far = ~ndimage.binary_dilation(case.labels > 0, iterations=3)
    mean = {name: {ch: z[ch][far & (case.tissue == TISSUES[name])].mean() for ch in CHANNELS}
            for name in ("white_matter", "grey_matter", "csf", "vessel")}
    wm, gm, csf = mean["white_matter"], mean["grey_matter"], mean["csf"]
    assert wm["T1"] > gm["T1"] > csf["T1"]
    assert csf["T2"] > gm["T2"] > wm["T2"]
    assert gm["FLAIR"] > wm["FLAIR"] > csf["FLAIR"]
    assert mean["vessel"]["T1c"] - mean["vessel"]["T1"] > 1.0
    # oedema is brighter on FLAIR than the white matter it invades
    assert z["FLAIR"][case.labels == OED].mean() - wm["FLAIR"] > 1.0


def test_other_shape_and_spacing_same_subject(tmp_path):
    coarse = make_brain_case(5, shape=(64, 72, 64), spacing=3.0)
    assert coarse.images.shape == (4, 64, 72, 64) and np.allclose(np.diag(coarse.affine)[:3], 3.0)
    fine = make_brain_case(5, shape=(80, 96, 72), spacing=(2.5))
    # one seed, one subject: the tumour centre (RAS mm) agrees across grids
    ras = lambda c: (c.affine @ np.r_[np.argwhere(c.labels > 0).mean(0), 1.0])[:3]
    assert np.linalg.norm(ras(coarse) - ras(fine)) < 4.0
    assert np.allclose(coarse.tumour["centre_ras_mm"], fine.tumour["centre_ras_mm"])
    paths = write_case(coarse, tmp_path / "case")
    assert set(paths) == {*CHANNELS, "labels"}
    loaded = load_case([paths[c] for c in CHANNELS], CHANNELS)
    assert np.allclose(loaded.images, coarse.images) and np.allclose(loaded.geometry.affine, coarse.affine)
    labels = load_mask(paths["labels"], loaded.geometry, "labels")
    assert np.array_equal(labels, coarse.labels)
