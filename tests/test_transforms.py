"""x0 transforms: static clip, Diff-SCM dynamic normalisation, Imagen dynamic thresholding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D


def test_static_clip():
    np.testing.assert_array_equal(D.static_clip(jnp.array([-3.0, 0.25, 1.5])), [-1.0, 0.25, 1.0])


def test_dynamic_normalization_is_per_sample_and_channel():
    x = np.zeros((2, 10, 10, 2), np.float32)
    x[0, ..., 0] = np.linspace(-4, 4, 100).reshape(10, 10)  # large: normalised
    x[0, ..., 1] = np.linspace(-0.5, 0.5, 100).reshape(10, 10)  # within range: untouched
    x[1, ..., 0] = np.linspace(-2, 2, 100).reshape(10, 10)
    out = np.asarray(D.dynamic_normalization(jnp.asarray(x), quantile=0.99))
    for b, c in [(0, 0), (1, 0)]:
        th = np.quantile(np.abs(x[b, ..., c]), 0.99)
        np.testing.assert_allclose(out[b, ..., c], np.clip(x[b, ..., c], -th, th) / th, rtol=1e-5)
    np.testing.assert_array_equal(out[0, ..., 1], x[0, ..., 1])
    assert np.abs(out).max() <= 1.0


def test_dynamic_threshold_matches_numpy_and_respects_max_value():
    x = 3.0 * jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
    flat = np.abs(np.asarray(x).reshape(3, -1))
    s = np.maximum(np.quantile(flat, 0.995, axis=1), 1.0)[:, None, None, None]
    np.testing.assert_allclose(D.dynamic_threshold(x), np.clip(x, -s, s) / s, rtol=1e-5)
    capped = np.minimum(s, 1.5)
    np.testing.assert_allclose(
        D.dynamic_threshold(x, max_value=1.5), np.clip(x, -capped, capped) / capped, rtol=1e-5
    )


@pytest.mark.parametrize("fn", [D.dynamic_threshold, D.dynamic_normalization])
def test_percentile_scale_mistake_is_refused(fn):
    # diffusers-Flax's bug: 99.5 on a 0-1 scale silently turns thresholding into clipping.
    with pytest.raises(ValueError, match=r"pass 0\.995"):
        fn(jnp.ones((1, 2, 2, 1)), quantile=99.5)


def test_static_clip_to_a_data_range():
    x = jnp.array([-3.0, 0.25, 1.5])
    np.testing.assert_array_equal(D.static_clip(x, (0.0, 1.0)), [0.0, 0.25, 1.0])
    np.testing.assert_array_equal(jax.jit(D.static_clip)(x, 0.5), [-0.5, 0.25, 0.5])
    with pytest.raises(ValueError, match="hi > lo"):
        D.static_clip(x, (1.0, 0.0))
