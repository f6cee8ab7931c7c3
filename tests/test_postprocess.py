"""Counterfactual -> mask post-processing (paper 000): vote rules, components, holes, Otsu,
contrast map, histogram matching and the full pipeline on synthetic slices and volumes."""

import itertools

import numpy as np
import pytest

from jaxcf.evaluation.metrics import dice
from jaxcf.evaluation.postprocess import (
    difference_map,
    fill_holes,
    foreground_mask,
    heatmap,
    largest_component,
    match_histograms,
    otsu_mask,
    segment_from_counterfactual,
    vote,
)

# ---------------------------------------------------------------- vote


def test_vote_truth_table_four_equal_weights():
    combos = np.array(list(itertools.product([0, 1], repeat=4)), bool)  # (16, 4)
    agree = combos.sum(-1)
    expected = agree >= 2  # 0/4, 1/4 out; 2/4 (S = 0.5), 3/4, 4/4 in
    for rule in ("paper", "script"):
        np.testing.assert_array_equal(vote(combos, rule=rule), expected)
    np.testing.assert_array_equal(vote(combos, threshold=0.5, inclusive=True), expected)
    np.testing.assert_array_equal(vote(combos, threshold=0.25, inclusive=False), expected)
    # A strict "> 0.5" would drop the 2-of-4 voxels: that rule is neither paper's nor script's.
    np.testing.assert_array_equal(vote(combos, threshold=0.5, inclusive=False), agree >= 3)


def test_vote_rules_differ_for_unequal_weights():
    w = (0.4, 0.2, 0.2, 0.2)
    masks = np.array(
        [
            [1, 0, 0, 0],  # S = 0.4
            [0, 1, 0, 0],  # S = 0.2
            [0, 1, 1, 0],  # S = 0.4
            [1, 1, 0, 0],  # S = 0.6
            [0, 1, 1, 1],  # S = 0.6
        ],
        bool,
    )
    np.testing.assert_array_equal(vote(masks, w, rule="script"), [True, False, True, True, True])
    np.testing.assert_array_equal(vote(masks, w, rule="paper"), [False, False, False, True, True])


def test_vote_float_slack_and_inputs():
    # 0.1 + 0.2 == 0.30000000000000004 in float: treated as exactly 0.3.
    m = np.array([[1, 1, 0]], bool)
    w = (0.1, 0.2, 0.2)
    assert not vote(m, w, threshold=0.3, inclusive=False)[0]
    assert vote(m, w, threshold=0.3, inclusive=True)[0]
    # A sequence of C masks equals the channels-last stack; soft masks are weighted too.
    a, b = np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0])
    np.testing.assert_array_equal(vote([a, b], 0.5, threshold=1.0), [True, False, False])
    np.testing.assert_array_equal(vote(np.array([[0.6, 0.6]]), 0.5, rule="script"), [True])
    with pytest.raises(ValueError, match="weights"):
        vote(np.zeros((2, 4), bool), (0.5, 0.5))
    with pytest.raises(ValueError, match="rule"):
        vote(np.zeros((2, 4), bool), rule="majority")


# ---------------------------------------------------------------- components and holes


def test_largest_component_keeps_bigger_blob():
    m = np.zeros((12, 12), bool)
    m[1:4, 1:4] = True  # 9 px
    m[6:10, 6:10] = True  # 16 px
    expected = np.zeros_like(m)
    expected[6:10, 6:10] = True
    np.testing.assert_array_equal(largest_component(m), expected)
    assert not largest_component(np.zeros((5, 5), bool)).any()


def test_largest_component_connectivity():
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True  # 4 px
    m[2:5, 2] = True  # 3 px, touching the first blob only diagonally
    assert largest_component(m, connectivity=1).sum() == 4
    assert largest_component(m, connectivity=2).sum() == 7


def test_fill_holes_below_threshold_only():
    m = np.ones((40, 60), bool)
    m[5:12, 5:14] = False  # 7 x 9 = 63 px hole: filled
    m[20:28, 30:38] = False  # 8 x 8 = 64 px hole: kept
    out = fill_holes(m, max_hole=64)
    assert out[5:12, 5:14].all()
    assert not out[20:28, 30:38].any()
    assert out.sum() == 40 * 60 - 64
    assert fill_holes(m, max_hole=65).all()


def test_fill_holes_3d():
    m = np.ones((10, 10, 10), bool)
    m[2:5, 2:5, 2:5] = False  # 27 voxels
    assert fill_holes(m, max_hole=28).all()
    assert fill_holes(m, max_hole=27).sum() == 1000 - 27


# ---------------------------------------------------------------- Otsu and contrast


def test_otsu_separates_two_levels_and_handles_constant():
    img = np.full((16, 16, 2), 10, np.uint8)
    img[4:9, 3:12, 0] = 200
    img[..., 1] = 7  # constant channel: no two classes
    out = otsu_mask(img)
    np.testing.assert_array_equal(out[..., 0], img[..., 0] == 200)
    assert not out[..., 1].any()
    # Restricted to a mask: the threshold comes from inside it and nothing outside is set.
    brain = np.zeros((16, 16), bool)
    brain[:, :6] = True
    out = otsu_mask(img, brain)
    np.testing.assert_array_equal(out[..., 0], (img[..., 0] == 200) & brain)


def test_difference_map_numbers():
    x = np.array([[[0.0, 0.004, -0.004, 0.5]]])
    cf = np.array([[[0.0, 0.0, 0.0, -0.5]]])
    # [-1, 1] images: d = 255 |x - cf| / 2; out = rint(|4 d - 2|) saturated to 0..255.
    out = difference_map(x, cf)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [2, 0, 0, 255])
    # [0, 1] images: d = 255 (x - cf); 0.01 -> |10.2 - 2| = 8.2 -> 8.
    out01 = difference_map(np.full((1, 1, 1), 0.01), np.zeros((1, 1, 1)), value_range=(0.0, 1.0))
    assert out01[0, 0, 0] == 8


def test_difference_map_is_symmetric_in_the_sign_of_the_difference():
    # Paper 000 Eq. 1: D = |I_f - I_c| BEFORE the x255 / alpha 4 / beta -2 map, so a
    # hyperintense and a hypointense change of the same size score the same. x - cf =
    # +-2/255 of a [-1, 1] image is d = +-1 grey level: |4 * 1 - 2| = 2 for both signs
    # (taking |.| after the map gave 2 and |-4 - 2| = 6).
    rng = np.random.default_rng(0)
    cf = rng.uniform(-0.5, 0.5, (6, 6, 4))
    delta = np.array([2 / 255, 0.01, 0.06, 0.6])
    up, down = difference_map(cf + delta, cf), difference_map(cf - delta, cf)
    np.testing.assert_array_equal(up, down)
    np.testing.assert_array_equal(up[0, 0], [2, 3, 29, 255])


def test_match_histograms_undoes_monotone_drift():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1, 1, (20, 20, 2))
    cf = 0.5 * ref + 0.3  # same ranks, shifted contrast
    np.testing.assert_allclose(match_histograms(cf, ref), ref, atol=1e-12)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = match_histograms(cf, ref, mask)
    np.testing.assert_allclose(out[mask], ref[mask], atol=1e-12)
    np.testing.assert_array_equal(out[~mask], cf[~mask])


# ---------------------------------------------------------------- full pipeline


def _slice(rng, offset=0.0):
    """Synthetic 4-modality slice in [-1, 1]: a noisy disc "brain" with a 14x14 tumour that is
    dark on t1 and bright on t1ce/t2/flair; cf is the healthy slice with new noise."""
    yy, xx = np.mgrid[:64, :64]
    brain = (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2
    healthy = np.array([-0.2, 0.0, 0.1, -0.1]) + 0.03 * rng.standard_normal((64, 64, 4))
    tumour = np.zeros((64, 64), bool)
    tumour[20:34, 25:39] = True
    x = np.where(brain[..., None], healthy, -1.0)
    x[tumour] = [-0.6, 0.7, 0.8, 0.9]
    cf = healthy + 0.01 * rng.standard_normal((64, 64, 4))
    cf = np.where(brain[..., None], cf + offset, -1.0)
    return x, cf, tumour, brain


@pytest.mark.parametrize("rule", ["paper", "script"])
def test_pipeline_recovers_square(rule):
    x, cf, tumour, brain = _slice(np.random.default_rng(1))
    pred = segment_from_counterfactual(x, cf, vote_rule=rule)
    assert pred.shape == (64, 64) and pred.dtype == bool
    assert dice(pred, tumour) > 0.9
    pred_b = segment_from_counterfactual(x, cf, brain_mask=foreground_mask(x), vote_rule=rule)
    assert dice(pred_b, tumour) > 0.9
    np.testing.assert_array_equal(foreground_mask(x), brain)


def test_pipeline_histogram_matching_removes_contrast_drift():
    # The counterfactual comes back brighter by 30% of the intensity range: without matching
    # the contrast map saturates over the whole brain; matching cf to x leaves the tumour as
    # the only change.
    x, cf, tumour, brain = _slice(np.random.default_rng(2), offset=0.6)
    good = segment_from_counterfactual(x, cf, brain_mask=brain)
    bad = segment_from_counterfactual(x, cf, brain_mask=brain, histogram_match=False)
    assert dice(good, tumour) > 0.9
    assert dice(bad, tumour) < 0.5


def test_pipeline_volume():
    rng = np.random.default_rng(3)
    healthy = 0.03 * rng.standard_normal((20, 20, 20, 4))
    tumour = np.zeros((20, 20, 20), bool)
    tumour[5:11, 6:12, 8:14] = True
    x = healthy.copy()
    x[tumour] = [-0.5, 0.6, 0.7, 0.8]
    cf = healthy + 0.01 * rng.standard_normal(healthy.shape)
    pred = segment_from_counterfactual(x, cf)
    assert pred.shape == (20, 20, 20)
    assert dice(pred, tumour) > 0.9


def test_pipeline_rejects_bad_input():
    x = np.zeros((8, 8, 4))
    with pytest.raises(ValueError, match="same shape"):
        segment_from_counterfactual(x, np.zeros((8, 8, 3)))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_from_counterfactual(x, bad)


def test_heatmap_is_channel_mean_abs_difference():
    x = np.zeros((2, 3, 3, 4), np.float32)
    cf = np.zeros_like(x)
    x[0, 1, 1] = [1.0, -1.0, 0.5, 0.0]
    cf[1, 0, 2] = [0.2, 0.2, 0.2, 0.2]
    h = heatmap(x, cf)
    assert h.shape == (2, 3, 3)
    assert h[0, 1, 1] == pytest.approx(0.625)
    assert h[1, 0, 2] == pytest.approx(0.2)
    assert h.sum() == pytest.approx(0.825)
