"""Metrics against hand-computed values and a brute-force implementation of the same definition."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from workflow_scripts.evaluation.metrics import case_metrics


def brute_force_hd(pred, ref, spacing, q=95):
    """The definition itself: surface voxels (6-conn. erosion), all pairwise distances."""
    face = ndimage.generate_binary_structure(3, 1)
    sp = np.argwhere(pred & ~ndimage.binary_erosion(pred, face)) * spacing
    sr = np.argwhere(ref & ~ndimage.binary_erosion(ref, face)) * spacing
    d = cdist(sp, sr)
    a, b = d.min(1), d.min(0)
    return max(np.percentile(a, q), np.percentile(b, q)), max(a.max(), b.max()), (a.sum() + b.sum()) / (a.size + b.size)


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
    return m


def test_identical_masks():
    m = box((10, 10, 10), (2, 2, 2), (6, 7, 8))
    r = case_metrics(m, m, (1, 1, 1))
    assert r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["assd_mm"] == 0.0
    assert r["precision"] == 1.0 and r["recall"] == 1.0


def test_shifted_box_hand_computed_anisotropic():
    # A 4x4x4 box shifted by 2 voxels along z (spacing 3 mm): overlap 2/4 of the voxels.
    ref = box((12, 12, 12), (2, 2, 2), (6, 6, 6))
    pred = box((12, 12, 12), (4, 2, 2), (8, 6, 6))
    r = case_metrics(pred, ref, (3.0, 1.0, 0.5))
    assert r["dice"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(0.5)
    # Every surface voxel is at most 2 slices (6 mm) from the other surface; the far faces are exactly 6 mm.
    assert r["hd_max_mm"] == pytest.approx(6.0)
    assert r["vol_ref_ml"] == pytest.approx(64 * 1.5 / 1000)
    assert r["vol_diff_ml"] == pytest.approx(0.0)


def test_single_voxel_distance_in_mm():
    ref = np.zeros((5, 5, 5), bool)
    pred = np.zeros((5, 5, 5), bool)
    ref[1, 1, 1] = True
    pred[1, 1, 4] = True  # 3 voxels along x, spacing in array order (z, y, x)
    r = case_metrics(pred, ref, (2.0, 1.0, 0.7))
    assert r["hd95_mm"] == pytest.approx(2.1)
    assert r["dice"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_definition(seed):
    rng = np.random.default_rng(seed)
    shape = (14, 16, 18)
    ref = ndimage.binary_dilation(rng.random(shape) > 0.985, iterations=2)
    pred = ndimage.binary_dilation(rng.random(shape) > 0.985, iterations=2) | ref & (rng.random(shape) > 0.3)
    spacing = (2.5, 0.8, 1.3)
    hd95, hdmax, assd = brute_force_hd(pred, ref, np.array(spacing))
    r = case_metrics(pred, ref, spacing)
    assert r["hd95_mm"] == pytest.approx(hd95, rel=1e-9)
    assert r["hd_max_mm"] == pytest.approx(hdmax, rel=1e-9)
    assert r["assd_mm"] == pytest.approx(assd, rel=1e-9)


def test_mask_touching_image_edge():
    ref = box((6, 6, 6), (0, 0, 0), (3, 6, 6))
    pred = box((6, 6, 6), (0, 0, 0), (4, 6, 6))
    hd95, _, _ = brute_force_hd(pred, ref, np.ones(3))
    assert case_metrics(pred, ref, (1, 1, 1))["hd95_mm"] == pytest.approx(hd95)


def test_empty_rules():
    empty = np.zeros((4, 5, 6), bool)
    full = box((4, 5, 6), (1, 1, 1), (3, 3, 3))
    both = case_metrics(empty, empty, (1, 1, 1))
    assert both["empty"] == "both" and both["dice"] == 1.0 and np.isnan(both["hd95_mm"])
    miss = case_metrics(empty, full, (2, 1, 1))
    worst = np.sqrt((3 * 2) ** 2 + 4**2 + 5**2)
    assert miss["empty"] == "pred" and miss["dice"] == 0.0 and miss["hd95_mm"] == pytest.approx(worst)
    assert case_metrics(full, empty, (1, 1, 1))["empty"] == "ref"


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))


def brute_force_nsd(pred, ref, spacing, tau):
    """NSD by definition: surface voxels of both masks, each within tau (mm) of the other surface, over all."""
    face = ndimage.generate_binary_structure(3, 1)
    sp = np.argwhere(pred & ~ndimage.binary_erosion(pred, face)) * spacing
    sr = np.argwhere(ref & ~ndimage.binary_erosion(ref, face)) * spacing
    d = cdist(sp, sr)
    return ((d.min(1) <= tau + 1e-9).sum() + (d.min(0) <= tau + 1e-9).sum()) / (len(sp) + len(sr))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [1.0, 2.0, 3.7])
def test_nsd_matches_brute_force(seed, tau):
    rng = np.random.default_rng(seed)
    shape = (14, 16, 18)
    ref = ndimage.binary_dilation(rng.random(shape) > 0.985, iterations=2)
    pred = ndimage.binary_dilation(rng.random(shape) > 0.985, iterations=2) | ref & (rng.random(shape) > 0.3)
    spacing = (2.5, 0.8, 1.3)
    expected = brute_force_nsd(pred, ref, np.array(spacing), tau)
    assert 0 < expected < 1
    assert case_metrics(pred, ref, spacing, nsd_tolerance_mm=tau)["nsd"] == pytest.approx(expected, rel=1e-12)


def test_nsd_hand_computed_and_empty_rules():
    # Boxes 4 voxels long shifted by 2 slices of 3 mm: a surface voxel is within 6 mm of the other surface
    # everywhere, so NSD(6 mm) = 1; at 2 mm only voxels that lie on both surfaces count.
    ref = box((12, 12, 12), (2, 2, 2), (6, 6, 6))
    pred = box((12, 12, 12), (4, 2, 2), (8, 6, 6))
    assert case_metrics(pred, ref, (3.0, 1.0, 1.0), nsd_tolerance_mm=6.0)["nsd"] == 1.0
    at2 = case_metrics(pred, ref, (3.0, 1.0, 1.0), nsd_tolerance_mm=2.0)["nsd"]
    assert at2 == pytest.approx(brute_force_nsd(pred, ref, np.array([3.0, 1.0, 1.0]), 2.0)) and at2 < 1
    m = box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    assert case_metrics(m, m, (1, 1, 1))["nsd"] == 1.0
    empty = np.zeros((8, 8, 8), bool)
    assert case_metrics(empty, m, (1, 1, 1))["nsd"] == 0.0
    assert np.isnan(case_metrics(empty, empty, (1, 1, 1))["nsd"])
