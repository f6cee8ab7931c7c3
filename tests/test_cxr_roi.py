"""The ROI of paper 003 from a prompt's side / zone words, and where-did-the-edit-go scores."""

import numpy as np
import pytest

from jaxcf.counterfactual import cxr_roi
from jaxcf.data.phantoms import cxr
from jaxcf.errors import InputError
from jaxcf.evaluation.localization import edit_localization


def _lungs(size=48):
    """Two rectangles: the patient's right lung on the image's left (PA view)."""
    right = np.zeros((size, size), bool)
    left = np.zeros((size, size), bool)
    right[6:42, 6:20] = True  # rows 6..41: thirds of 12 rows
    left[12:42, 28:42] = True  # rows 12..41: thirds of 10 rows
    return right, left


@pytest.mark.parametrize(
    "prompt, sides, zones",
    [
        ("Moderate opacity in the right lower zone, concerning for it.", ("right",), ("lower",)),
        ("left upper lobe consolidation", ("left",), ("upper",)),
        ("Bibasilar atelectasis", ("right", "left"), ("lower",)),
        ("Bilateral perihilar opacities", ("right", "left"), ("middle",)),
        ("Opacity at the right base and the lingula", ("right",), ("middle", "lower")),
        ("Pulmonary edema", ("right", "left"), ()),
    ],
)  # fmt: skip
def test_prompt_cues(prompt, sides, zones):
    cues = cxr_roi.prompt_cues(prompt)
    assert cues.sides == sides and cues.zones == zones


def test_roi_is_the_named_third_of_the_named_lung():
    right, left = _lungs()
    roi = cxr_roi.roi_mask(cxr_roi.prompt_cues("right lower zone opacity"), right, left)
    rows = np.flatnonzero(roi.any(1))
    assert (rows[0], rows[-1]) == (30, 41) and not roi[:, 24:].any()
    upper_left = cxr_roi.roi_mask(cxr_roi.prompt_cues("left apical opacity"), right, left)
    assert np.flatnonzero(upper_left.any(1))[[0, -1]].tolist() == [12, 21]
    assert not upper_left[:, :24].any()
    both = cxr_roi.roi_mask(cxr_roi.prompt_cues("edema"), right, left)
    np.testing.assert_array_equal(both, right | left)


def test_split_lungs_by_the_midline_and_method_masks():
    right, left = _lungs()
    got_right, got_left = cxr_roi.split_lungs((right | left).astype(np.uint8) * 255)
    np.testing.assert_array_equal(got_right, right)
    np.testing.assert_array_equal(got_left, left)
    masks = cxr_roi.method_masks(right[None], left[None], ["left lower zone opacity"])
    np.testing.assert_array_equal(masks["anatomy"][0], (right | left).astype(np.float32))
    assert masks["roi"][0, :, :24].sum() == 0 and masks["roi"].sum() > 0
    with pytest.raises(InputError, match="holds no lung pixels"):
        cxr_roi.method_masks(right[None], np.zeros_like(left)[None], ["left lower opacity"])
    with pytest.raises(InputError, match="lung mask is empty"):
        cxr_roi.split_lungs(np.zeros((8, 8)))


def test_phantom_findings_sit_in_the_roi_of_their_report_words():
    """The phantom renderer places a finding in its side / zone: the ROI of those words
    holds most of the added opacity (the phantom proof relies on the two agreeing)."""
    rng = np.random.default_rng(3)
    for _ in range(6):
        params = cxr.sample_chest(rng)
        finding = cxr.sample_finding(rng, params)
        image = cxr.render(params, 64, finding, np.random.default_rng(0))
        left, right = image.masks[..., 0], image.masks[..., 1]
        roi = cxr_roi.roi_mask(
            cxr_roi.prompt_cues(f"opacity in the {finding.side} {finding.zone} zone"), right, left
        )
        share = image.opacity[roi].sum() / image.opacity.sum()
        assert share > 0.5, (finding, share)


def test_edit_localization_on_a_known_edit():
    right, left = _lungs()
    lungs = right | left
    roi = cxr_roi.roi_mask(cxr_roi.prompt_cues("right lower opacity"), right, left)
    x = np.zeros((2, *lungs.shape, 1))
    y = x.copy()
    y[0, 32:40, 8:18, 0] = 0.5  # inside the ROI
    y[0, 0:2, 0:5, 0] = -0.4  # outside the lungs: 4 / 44 of the |difference| mass
    y[1, 14:20, 30:40, 0] = 0.5  # the other lung
    s = edit_localization(x, y, roi[None].repeat(2, 0), lungs[None].repeat(2, 0))
    np.testing.assert_allclose(s["outside_roi"], [4 / 44, 1.0])
    np.testing.assert_allclose(s["outside_lungs"], [4 / 44, 0.0])
    np.testing.assert_array_equal(s["roi_hit"], [1.0, 0.0])
    # ROI: the right lung's rows 30..41 x 14 columns = 168 px holding 80 px of +0.5
    np.testing.assert_allclose(s["roi_gain"][0], 40 / 168)
    assert s["roi_gain"][1] < 0
    same = edit_localization(x, x, roi[None].repeat(2, 0), lungs[None].repeat(2, 0))
    assert same["outside_roi"].tolist() == [0.0, 0.0]
