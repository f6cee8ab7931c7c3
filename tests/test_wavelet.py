"""Haar DWT/IDWT (jaxcf.models.wavelet): inverse, orthonormality, band layout, PyWavelets
parity, and WDM's LLL scaling and wavelet-domain clipping."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf.models import wavelet as W

SHAPES_2D = [(2, 8, 6, 3), (3, 4, 4, 1), (1, 2, 10, 2)]
SHAPES_3D = [(2, 4, 6, 8, 2), (2, 2, 2, 2, 1), (1, 8, 4, 2, 3)]
SHAPES = SHAPES_2D + SHAPES_3D


def _normal(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _coeff_shape(shape):
    b, *spatial, c = shape
    return (b, *(n // 2 for n in spatial), c * 2 ** len(spatial))


# --- transform properties -------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_and_inverse(shape):
    x = _normal(shape)
    c = W.dwt(x)
    assert c.shape == _coeff_shape(shape) and c.dtype == jnp.float32
    back = W.idwt(c)
    assert back.shape == shape
    np.testing.assert_allclose(back, x, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_energy_preserved(shape):
    x = _normal(shape, seed=1)
    c = np.asarray(W.dwt(x), np.float64)
    np.testing.assert_allclose((c**2).sum(), (x.astype(np.float64) ** 2).sum(), rtol=1e-5)


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_linearity(shape):
    x, y = _normal(shape, seed=2), _normal(shape, seed=3)
    np.testing.assert_allclose(
        W.dwt(2.5 * x - 0.75 * y), 2.5 * W.dwt(x) - 0.75 * W.dwt(y), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_adjoint_is_inverse(shape):
    # Orthonormal transform: the VJP (transpose) of dwt must equal idwt.
    x = _normal(shape, seed=4)
    ct = _normal(_coeff_shape(shape), seed=5)
    _, vjp = jax.vjp(W.dwt, jnp.asarray(x))
    np.testing.assert_allclose(vjp(jnp.asarray(ct))[0], W.idwt(ct), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[2]])
def test_constant_image_lives_in_band0(shape):
    _, *spatial, ch = shape
    d = len(spatial)
    consts = np.arange(1, ch + 1, dtype=np.float32) * np.array([1, -1, 1])[:ch]
    x = np.broadcast_to(consts, shape).astype(np.float32)
    c = np.asarray(W.dwt(x))
    # Band-major layout: band 0 is channels [0, C), and channel c of it belongs to input c.
    np.testing.assert_allclose(
        c[..., :ch], np.broadcast_to(consts * 2 ** (d / 2), c[..., :ch].shape), rtol=1e-6
    )
    np.testing.assert_array_equal(c[..., ch:], 0.0)


def test_2d_block_by_hand():
    # One 2x2 block [[1, 2], [3, 5]] (rows = H): LL = sum/2, LH = (col0 - col1)/2,
    # HL = (row0 - row1)/2, HH = (1 - 2 - 3 + 5)/2.
    x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)[None, :, :, None]
    np.testing.assert_allclose(np.asarray(W.dwt(x)).ravel(), [5.5, -1.5, -2.5, 0.5], atol=1e-6)


def test_3d_impulse_signs_and_band_order():
    # A unit impulse at (i, j, k) of a 2x2x2 block: band (bD, bH, bW) gets
    # 2^(-3/2) * (-1)^(bD*i + bH*j + bW*k): the detail filter is (x0 - x1)/sqrt(2) and the
    # band index is 4*bD + 2*bH + bW (first letter = depth).
    for i, j, k in itertools.product(range(2), repeat=3):
        x = np.zeros((1, 2, 2, 2, 1), np.float32)
        x[0, i, j, k, 0] = 1.0
        want = [
            2**-1.5 * (-1) ** (bd * i + bh * j + bw * k)
            for bd, bh, bw in itertools.product(range(2), repeat=3)
        ]
        np.testing.assert_allclose(np.asarray(W.dwt(x)).ravel(), want, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtype_kept(dtype):
    x = _normal((2, 4, 4, 4, 2), seed=6)
    c = W.dwt(jnp.asarray(x, dtype))
    assert c.dtype == dtype
    np.testing.assert_allclose(np.asarray(c, np.float32), W.dwt(x), rtol=0, atol=0.05)
    back = W.idwt(c)
    assert back.dtype == dtype
    np.testing.assert_allclose(np.asarray(back, np.float32), x, rtol=0, atol=0.05)


def test_integer_input_becomes_float():
    x = np.arange(2 * 4 * 4 * 1).reshape(2, 4, 4, 1)
    c = W.dwt(x)
    assert jnp.issubdtype(c.dtype, jnp.floating)
    np.testing.assert_allclose(W.idwt(c), x, atol=1e-5)


def test_band_names():
    assert W.band_names(2) == ["LL", "LH", "HL", "HH"]
    assert W.band_names(3) == ["LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH"]
    with pytest.raises(ValueError, match="2 or 3"):
        W.band_names(1)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis, size",
    [((1, 7, 8, 1), "H", 7), ((2, 8, 3, 2), "W", 3), ((1, 5, 4, 4, 1), "D", 5),
     ((1, 4, 4, 9, 1), "W", 9)],
)  # fmt: skip
def test_odd_size_names_the_axis(shape, axis, size):
    with pytest.raises(ValueError, match=rf"axis {axis} .*odd size {size}"):
        W.dwt(np.zeros(shape, np.float32))


def test_bad_rank_and_channel_count():
    with pytest.raises(ValueError, match="got 3 dims"):
        W.dwt(np.zeros((4, 4, 1), np.float32))
    with pytest.raises(ValueError, match=r"multiple of 8 channels.*got 6"):
        W.idwt(np.zeros((1, 2, 2, 2, 6), np.float32))
    with pytest.raises(ValueError, match=r"multiple of 4 channels.*got 6"):
        W.from_wavelet(np.zeros((1, 2, 2, 6), np.float32))
    with pytest.raises(ValueError, match="lll_scale must be positive"):
        W.to_wavelet(np.zeros((1, 2, 2, 1), np.float32), lll_scale=0.0)


# --- PyWavelets parity ----------------------------------------------------------------------


@pytest.mark.ref
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_pywt_dwtn(shape):
    pywt = pytest.importorskip("pywt")
    x = _normal(shape, seed=7)
    c = np.asarray(W.dwt(x))
    d = x.ndim - 2
    axes = tuple(range(d))
    ch = shape[-1]
    for b in range(shape[0]):
        for ci in range(ch):
            ref = pywt.dwtn(x[b, ..., ci].astype(np.float64), "haar", axes=axes)
            keys = sorted(ref)
            assert len(keys) == 2**d
            # band_names is the same order with a -> L, d -> H.
            assert [k.replace("a", "L").replace("d", "H") for k in keys] == W.band_names(d)
            for band, key in enumerate(keys):
                np.testing.assert_allclose(c[b, ..., band * ch + ci], ref[key], atol=1e-6)


@pytest.mark.ref
@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_2D[2], SHAPES_3D[0], SHAPES_3D[2]])
def test_matches_pywt_idwtn(shape):
    # Arbitrary coefficients (not the DWT of anything we made) decode like pywt.idwtn.
    pywt = pytest.importorskip("pywt")
    coeffs = _normal(_coeff_shape(shape), seed=8)
    img = np.asarray(W.idwt(coeffs))
    d = len(shape) - 2
    ch = shape[-1]
    keys = ["".join(p) for p in itertools.product("ad", repeat=d)]
    for b in range(shape[0]):
        for ci in range(ch):
            bands = {k: coeffs[b, ..., i * ch + ci].astype(np.float64) for i, k in enumerate(keys)}
            ref = pywt.idwtn(bands, "haar", axes=tuple(range(d)))
            np.testing.assert_allclose(img[b, ..., ci], ref, atol=1e-6)


# --- WDM scaling and clipping ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_to_from_wavelet_round_trip_and_band0_scale(shape):
    x = _normal(shape, seed=9)
    ch = shape[-1]
    plain = np.asarray(W.dwt(x))
    scaled = np.asarray(W.to_wavelet(x))
    # XLA may divide as multiply-by-reciprocal: allow the last ulp.
    np.testing.assert_allclose(scaled[..., :ch], plain[..., :ch] / np.float32(3.0), rtol=2.5e-7)
    np.testing.assert_array_equal(scaled[..., ch:], plain[..., ch:])
    np.testing.assert_allclose(W.from_wavelet(scaled), x, rtol=0, atol=2e-6)
    # Another divisor, and lll_scale=1 is plain dwt.
    np.testing.assert_allclose(W.from_wavelet(W.to_wavelet(x, 2.0), 2.0), x, atol=2e-6)
    np.testing.assert_array_equal(W.to_wavelet(x, 1.0), plain)


def test_lll_scale_puts_a_unit_volume_inside_unit_range():
    # Why WDM divides by 3: a volume of ones has LLL = 2^(3/2) ~ 2.83; scaled it is ~0.94.
    c = np.asarray(W.to_wavelet(np.ones((1, 4, 4, 4, 1), np.float32)))
    np.testing.assert_allclose(c[..., 0], 2**1.5 / 3, rtol=1e-6)
    assert np.abs(c).max() <= 1.0


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_wavelet_clip_keeps_in_range_image(shape):
    x = np.random.default_rng(10).uniform(-0.95, 0.95, shape).astype(np.float32)
    c = W.to_wavelet(x)
    np.testing.assert_allclose(W.wavelet_clip(c), c, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [SHAPES_2D[0], SHAPES_3D[0]])
def test_wavelet_clip_brings_image_into_range(shape):
    x = 3.0 * _normal(shape, seed=11)
    assert np.abs(x).max() > 2.0  # the test needs out-of-range voxels
    c = W.to_wavelet(x)
    clipped = W.wavelet_clip(c)
    img = np.asarray(W.from_wavelet(clipped))
    assert np.abs(img).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(img, np.clip(x, -1, 1), rtol=0, atol=2e-6)
    # Clamping the coefficients band-wise instead would not decode into range.
    naive = np.asarray(W.from_wavelet(jnp.clip(c, -1, 1)))
    assert np.abs(naive).max() > 1.05
    # A different bound and lll_scale.
    img2 = np.asarray(W.from_wavelet(W.wavelet_clip(W.to_wavelet(x, 2.0), 2.0, 0.5), 2.0))
    np.testing.assert_allclose(img2, np.clip(x, -0.5, 0.5), rtol=0, atol=2e-6)
    # A data range (lo, hi), e.g. volumes prepared in (0, 1).
    img3 = np.asarray(W.from_wavelet(W.wavelet_clip(c, value=(0.0, 1.0))))
    np.testing.assert_allclose(img3, np.clip(x, 0.0, 1.0), rtol=0, atol=2e-6)


def test_jit():
    x = _normal(SHAPES_3D[0], seed=12)
    c = W.to_wavelet(x)
    np.testing.assert_allclose(jax.jit(W.dwt)(x), W.dwt(x), atol=1e-6)
    np.testing.assert_allclose(jax.jit(W.idwt)(c), W.idwt(c), atol=1e-6)
    np.testing.assert_allclose(jax.jit(W.to_wavelet)(x), c, atol=1e-6)
    np.testing.assert_allclose(jax.jit(W.from_wavelet)(c), W.from_wavelet(c), atol=1e-6)
    clip = jax.jit(functools.partial(W.wavelet_clip, lll_scale=3.0, value=1.0))
    np.testing.assert_allclose(clip(3 * c), W.wavelet_clip(3 * c), atol=1e-6)
    # lll_scale and value may also be traced (e.g. swept under jit).
    traced = jax.jit(W.wavelet_clip)(3 * c, 3.0, 1.0)
    np.testing.assert_allclose(traced, W.wavelet_clip(3 * c), atol=1e-6)
