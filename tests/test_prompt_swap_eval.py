"""evaluate --method=prompt_swap's pieces (paper 004 Sec. 3.2): the lesion meter on volumes
with known lesions, the prompts' short names, and the UNet refusing text at no feature
map (the prompt would be silently ignored)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxcf.errors import InputError
from jaxcf.experiments.prompt_swap_eval import fit_lesion_meter, short_names

RANGE = (-1.0, 1.0)


def _heads(lesion_counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 12, 12, 12, 1) heads in [-1, 1]: a ball of tissue at unit level 0.4 +- 0.05
    with n lesion voxels at unit level 0.9, the rest background; min-max scaled per
    volume as the data pipeline does (so more lesions do not change the tissue's level
    here, but the meter must not depend on the scale either)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij"), -1)
    ball = (grid**2).sum(-1) < 0.8
    inside = np.flatnonzero(ball)
    volumes, segs = [], []
    for n in lesion_counts:
        unit = np.where(ball, 0.4 + 0.05 * rng.uniform(-1, 1, ball.shape), 0.0)
        seg = np.zeros(ball.shape, bool)
        seg.flat[rng.choice(inside, n, replace=False)] = True
        unit[seg] = 0.9
        unit = unit / unit.max()  # min-max: the brightest voxel becomes 1
        volumes.append(2 * unit - 1)
        segs.append(seg)
    return np.stack(volumes)[..., None].astype(np.float32), np.stack(segs)


def test_lesion_meter_recovers_known_lesions_whatever_the_scale():
    volumes, segs = _heads([5, 20, 60])
    meter = fit_lesion_meter(volumes, segs, RANGE)
    assert meter.dice == pytest.approx(1.0)
    # Lesions at 0.9 over tissue at ~0.4: any ratio in (0.45 / 0.4, 0.9 / 0.45) separates.
    assert 0.45 / 0.4 < meter.ratio < 0.9 / 0.45
    np.testing.assert_array_equal(meter.voxels(volumes), [5, 20, 60])
    # Held-out heads, scaled differently (darker overall): the same counts.
    others, other_segs = _heads([0, 33], seed=1)
    darker = (others + 1) * 0.7 - 1
    np.testing.assert_array_equal(meter.masks(darker), other_segs)


def test_lesion_meter_needs_lesions():
    volumes, segs = _heads([0, 0])
    with pytest.raises(InputError, match="at least one lesion voxel"):
        fit_lesion_meter(volumes, segs, RANGE)


def test_short_names_keep_the_words_that_differ():
    prompts = [f"Subject has {w} lesion load" for w in ("minimal", "moderate", "high")]
    assert short_names(prompts) == ["minimal", "moderate", "high"]
    assert short_names(["CN", "AD"]) == ["CN", "AD"]


def test_text_at_no_feature_map_is_refused():
    from jaxcf import models

    config = {
        "family": "wdm",
        "preset": "wdm_tiny_text",
        "image_size": 16,  # feature maps 16 and 8: the preset's (4,) matches neither
        "in_channels": 8,
    }
    with pytest.raises(InputError, match=r"match no feature map .*sizes \(16, 8\)"):
        models.build(config, jax.random.key(0))
    models.build({**config, "cross_attention_resolutions": (8,)}, jax.random.key(0))
