"""BraTS metrics (paper 002): nested regions for both label conventions, HD95 on closed-form
masks (offset cubes, anisotropic spacing, empty masks), volumes, spacing helpers, summaries,
and HD95 parity with MONAI's compute_hausdorff_distance under -m ref."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from jaxcf.errors import InputError
from jaxcf.evaluation.brats import (
    EMPTY_HD95,
    EMPTY_HD95_BRATS2023,
    LABEL_SETS,
    SpacingWarning,
    hd95,
    region_volumes,
    regions,
    resolve_spacing,
    spacing_from_affine,
    summarize_volumes,
    table3_row,
    volume_metrics,
)


def _cube(corner, size=8, shape=(24, 24, 24)):
    m = np.zeros(shape, bool)
    m[tuple(slice(c, c + size) for c in corner)] = True
    return m


# ---------------------------------------------------------------- HD95, closed form


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_cubes_isotropic(k, axis):
    # Shifting a cube by k voxels: each face moving away is k from the other cube's face, no
    # surface voxel is farther, and those faces are 1/6 of the surface (> 5%), so HD95 = k.
    corner = [4, 4, 4]
    shifted = list(corner)
    shifted[axis] += k
    a, b = _cube(corner), _cube(shifted)
    assert hd95(a, b) == pytest.approx(k, abs=1e-12)
    assert hd95(b, a) == pytest.approx(k, abs=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_cubes_anisotropic(axis):
    spacing = (0.5, 1.2, 3.0)
    k = 3
    shifted = [4, 4, 4]
    shifted[axis] += k
    got = hd95(_cube((4, 4, 4)), _cube(shifted), spacing)
    assert got == pytest.approx(k * spacing[axis], abs=1e-12)


def test_two_points_euclidean_in_mm():
    a, b = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    a[2, 2, 2] = True
    b[2, 5, 6] = True  # 3 voxels along y, 4 along z
    assert hd95(a, b, (7.0, 2.0, 3.0)) == pytest.approx(math.hypot(3 * 2.0, 4 * 3.0))
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, 2.0) == pytest.approx(10.0)  # one number: isotropic


def test_identical_and_border_masks():
    a = _cube((0, 0, 0), size=10, shape=(10, 10, 10))  # fills the array: border is surface
    assert hd95(a, a) == 0.0
    b = a.copy()
    b[7:] = False  # 7 slices left: the face at x = 9 moved to x = 6
    assert hd95(a, b) == pytest.approx(3.0)


def test_empty_masks_follow_brats():
    empty, cube = np.zeros((12, 12, 12), bool), _cube((2, 2, 2), 4, (12, 12, 12))
    assert hd95(empty, empty) == 0.0
    assert hd95(empty, cube) == EMPTY_HD95 == 373.13
    assert hd95(cube, empty) == EMPTY_HD95
    assert hd95(cube, empty, empty_hd95=EMPTY_HD95_BRATS2023) == 374.0
    # 373.13 is the diagonal of the 240 x 240 x 155 mm BraTS volume.
    assert math.sqrt(240**2 + 240**2 + 155**2) == pytest.approx(EMPTY_HD95, abs=5e-3)


def test_hd95_bad_input():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(InputError, match="same shape"):
        hd95(a, np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="3 axes"):
        hd95(a, a, (1.0, 1.0))
    with pytest.raises(InputError, match="positive"):
        hd95(a, a, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------- labels and regions


def test_regions_peds():
    labels = np.array([0, 1, 2, 3])
    r = regions(labels, "peds")
    assert set(r) == {"WT", "TC", "ET"}
    np.testing.assert_array_equal(r["WT"], [False, True, True, True])
    np.testing.assert_array_equal(r["TC"], [False, True, False, True])
    np.testing.assert_array_equal(r["ET"], [False, False, False, True])
    assert all(m.dtype == bool for m in r.values())


def test_regions_brats2021_and_float_labels():
    labels = np.array([[0.0, 1.0], [2.0, 4.0]])  # NIfTI readers give floats
    r = regions(labels, "brats2021")
    np.testing.assert_array_equal(r["WT"], [[False, True], [True, True]])
    np.testing.assert_array_equal(r["TC"], [[False, True], [False, True]])
    np.testing.assert_array_equal(r["ET"], [[False, False], [False, True]])
    assert LABEL_SETS["brats2021"]["ET"] == 4 and LABEL_SETS["peds"]["ET"] == 3


def test_bad_labels_raise():
    with pytest.raises(InputError, match=r"labels hold \[5\] outside peds's \{0,1,2,3\}"):
        regions(np.array([0, 1, 5, 5]), "peds")
    with pytest.raises(InputError, match=r"\[3\] outside brats2021's \{0,1,2,4\}"):
        regions(np.array([0, 3, 4]), "brats2021")
    with pytest.raises(InputError, match=r"\[-1, 1.5\]"):
        regions(np.array([-1.0, 1.5, 2.0]), "peds")
    with pytest.raises(InputError, match="unknown label convention"):
        regions(np.array([0, 1]), "brats2018")
    with pytest.raises(InputError, match=r"\[4\]"):
        volume_metrics(np.array([[[4]]]), np.array([[[1]]]), (1, 1, 1), "peds")


# ---------------------------------------------------------------- volumes and spacing


def test_region_volumes_anisotropic():
    labels = np.zeros((6, 6, 6), np.int16)
    labels.flat[:10] = 1  # NC
    labels.flat[10:30] = 2  # ED
    labels.flat[30:35] = 3  # ET
    spacing = (0.5, 1.2, 3.0)  # 1.8 mm^3 per voxel
    v = region_volumes(labels, spacing, "peds")
    expected = {"NC": 10, "ED": 20, "ET": 5, "WT": 35, "TC": 15}
    assert set(v) == set(expected)
    for name, n in expected.items():
        assert v[name]["voxels"] == n
        assert v[name]["mm3"] == pytest.approx(n * 1.8)
        assert v[name]["mL"] == pytest.approx(n * 1.8 / 1000)
    v21 = region_volumes(np.where(labels == 3, 4, labels), spacing, "brats2021")
    assert v21 == v  # same counts, same arithmetic


def test_spacing_from_affine():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag([-0.9, 1.1, 2.5])  # rotation and a flipped axis
    affine[:3, 3] = [-90.0, 120.0, 30.0]
    assert spacing_from_affine(affine) == pytest.approx((0.9, 1.1, 2.5))
    assert spacing_from_affine(affine[:3, :3]) == pytest.approx((0.9, 1.1, 2.5))
    with pytest.raises(InputError, match="affine"):
        spacing_from_affine(np.eye(2))
    singular = np.eye(4)
    singular[2, 2] = 0.0
    with pytest.raises(InputError, match="positive"):
        spacing_from_affine(singular)


def test_resolve_spacing_warns_with_case_name():
    with pytest.warns(SpacingWarning, match="BraTS-PED-00126.*1 mm"):
        assert resolve_spacing(None, "BraTS-PED-00126") == (1.0, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_spacing((0.5, 0.5, 2), "case") == (0.5, 0.5, 2.0)
        assert resolve_spacing(0.8, "case") == (0.8, 0.8, 0.8)
    with pytest.warns(SpacingWarning, match="slice-7"):
        assert resolve_spacing(None, "slice-7", ndim=2) == (1.0, 1.0)
    with pytest.raises(InputError, match="3 axes"):
        resolve_spacing((1.0, 1.0), "case")


# ---------------------------------------------------------------- per-volume scores, summaries


def _tumour(shape=(20, 20, 20)):
    labels = np.zeros(shape, np.int8)
    labels[4:16, 4:16, 4:16] = 2  # edema shell
    labels[7:13, 7:13, 7:13] = 1  # core
    labels[9:11, 9:11, 9:11] = 3  # enhancing
    return labels


def test_volume_metrics():
    truth = _tumour()
    spacing = (1.0, 1.0, 2.0)
    perfect = volume_metrics(truth, truth, spacing, "peds")
    assert list(perfect) == ["WT", "TC", "ET"]
    for scores in perfect.values():
        assert scores == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "precision": 1.0}

    pred = np.roll(truth, 2, axis=2)  # shift along the 2 mm axis
    pred[pred == 3] = 1  # enhancing tumour missed
    got = volume_metrics(pred, truth, spacing, "peds")
    assert got["WT"]["hd95"] == pytest.approx(4.0)  # 2 voxels * 2 mm
    assert got["WT"]["dice"] == pytest.approx(10 / 12)  # 12^3 cube shifted by 2 of 12
    assert got["TC"]["hd95"] == pytest.approx(4.0)
    assert got["ET"] == {"dice": 0.0, "hd95": EMPTY_HD95, "sensitivity": 0.0, "precision": 0.0}

    no_et = np.where(truth == 3, 1, truth)  # ET absent in both: perfect ET scores
    both_empty = volume_metrics(no_et, no_et, spacing, "peds")["ET"]
    assert both_empty == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "precision": 1.0}
    with pytest.raises(InputError, match="differ in shape"):
        volume_metrics(truth, truth[:-1], spacing)


def test_summarize_volumes_and_table3_row():
    rows = [
        {r: {"dice": d, "hd95": h, "sensitivity": 1.0, "precision": 0.5} for r in ("WT", "TC")}
        | {"ET": {"dice": 0.1, "hd95": 373.13, "sensitivity": 0.0, "precision": 0.0}}
        for d, h in [(0.9, 2.0), (0.7, 4.0)]
    ]
    s = summarize_volumes(rows)
    assert set(s) == {"WT", "TC", "ET", "avg"}
    assert s["WT"]["dice"]["mean"] == pytest.approx(0.8)
    assert s["WT"]["dice"]["std"] == pytest.approx(0.1)
    assert s["WT"]["dice"]["n"] == 2
    assert s["ET"]["hd95"]["mean"] == pytest.approx(373.13)
    assert s["avg"]["dice"]["mean"] == pytest.approx((0.8 + 0.8 + 0.1) / 3)
    row = table3_row(s)
    assert row == pytest.approx(
        {
            "dice_tc": 0.8,
            "dice_wt": 0.8,
            "dice_et": 0.1,
            "dice_avg": 1.7 / 3,
            "hd95": (3.0 + 3.0 + 373.13) / 3,
            "sensitivity": 2 / 3,
            "precision": 1 / 3,
        }
    )
    with pytest.raises(InputError, match="no volumes"):
        summarize_volumes([])


# ---------------------------------------------------------------- MONAI parity (ref)


def _blob(rng, shape, sigma, frac):
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field > np.quantile(field, 1.0 - frac)


@pytest.mark.ref
def test_hd95_matches_monai():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(7)
    shape = (40, 36, 28)
    cases = [((1.0, 1.0, 1.0), 2.0, 0.1), ((1.2, 0.9, 2.5), 2.5, 0.15), ((0.5, 1.0, 3.0), 1.5, 0.3)]
    for spacing, sigma, frac in cases:  # the 0.3 blobs touch the array border
        for _ in range(2):
            pred, truth = _blob(rng, shape, sigma, frac), _blob(rng, shape, sigma, frac)
            ref = monai_metrics.compute_hausdorff_distance(
                torch.from_numpy(pred[None, None]),
                torch.from_numpy(truth[None, None]),
                include_background=True,
                percentile=95,
                spacing=list(spacing),
            )
            want = float(ref[0, 0])
            assert want > 0
            assert hd95(pred, truth, spacing) == pytest.approx(want, rel=1e-5)
    # A shifted copy (small, asymmetric distances) and a 2-D case.
    truth = _blob(rng, shape, 2.0, 0.1)
    pred = np.roll(truth, (1, -2, 1), axis=(0, 1, 2))
    ref = monai_metrics.compute_hausdorff_distance(
        torch.from_numpy(pred[None, None]),
        torch.from_numpy(truth[None, None]),
        include_background=True,
        percentile=95,
        spacing=[0.7, 1.3, 2.0],
    )
    assert hd95(pred, truth, (0.7, 1.3, 2.0)) == pytest.approx(float(ref[0, 0]), rel=1e-5)
    p2, t2 = _blob(rng, (50, 40), 2.0, 0.2), _blob(rng, (50, 40), 2.0, 0.2)
    ref = monai_metrics.compute_hausdorff_distance(
        torch.from_numpy(p2[None, None]),
        torch.from_numpy(t2[None, None]),
        include_background=True,
        percentile=95,
        spacing=[0.8, 1.5],
    )
    assert hd95(p2, t2, (0.8, 1.5)) == pytest.approx(float(ref[0, 0]), rel=1e-5)
    # MONAI leaves empty masks undefined (NaN); we give the BraTS values instead.
    empty = np.zeros_like(t2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b, ours in [(empty, empty, 0.0), (p2, empty, EMPTY_HD95), (empty, t2, EMPTY_HD95)]:
            ref = monai_metrics.compute_hausdorff_distance(
                torch.from_numpy(a[None, None]),
                torch.from_numpy(b[None, None]),
                include_background=True,
                percentile=95,
            )
            assert math.isnan(float(ref[0, 0]))
            assert hd95(a, b, (1.0, 1.0)) == ours
