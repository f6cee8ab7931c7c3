"""Image-similarity metrics (paper 004): PSNR, SSIM, MS-SSIM on 2-D and 3-D images, diversity and
subject preservation. Known answers and structure here; parity with MONAI's PSNRMetric,
SSIMMetric and MultiScaleSSIMMetric under -m ref (tolerances derived in ``_ssim_tol``)."""

import math
from functools import partial

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter

from jaxcf.errors import InputError
from jaxcf.evaluation.image_metrics import (
    MS_SSIM_WEIGHTS,
    diversity_ms_ssim,
    gaussian_window,
    min_size_ms_ssim,
    ms_ssim,
    psnr,
    ssim,
    ssim_and_cs,
    subject_preservation,
)

W3 = (0.0711, 0.4530, 0.4760)  # the first three default weights, renormalised
EPS = float(np.finfo(np.float32).eps)  # 2**-23
U = EPS / 2  # float32 unit roundoff


def _smooth(rng, shape, sigma=2.0):
    """Smooth images in [0, 1], (B, *S, C): Gaussian-filtered noise, min-max scaled per item."""
    a = gaussian_filter(rng.random(shape), sigma=(0, *(sigma,) * (len(shape) - 2), 0))
    lo = a.min(axis=tuple(range(1, a.ndim)), keepdims=True)
    hi = a.max(axis=tuple(range(1, a.ndim)), keepdims=True)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _pair(kind, shape, seed=0):
    """Two float32 images in [0, 1]: independent noise, a smooth image and a noisy copy, two
    correlated smooth images, or an image and its negative."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random(shape, np.float32), rng.random(shape, np.float32)
    x = _smooth(rng, shape)
    if kind == "noisy":
        y = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1)
    elif kind == "smooth":
        y = 0.6 * x + 0.4 * _smooth(rng, shape)
    elif kind == "negative":
        y = 1.0 - x
    return x, y.astype(np.float32)


def _pool2(a):
    """2x average pooling of the spatial axes of (B, *S, C), odd sizes floored (numpy)."""
    for ax in range(1, a.ndim - 1):
        n = a.shape[ax] // 2
        a = np.take(a, np.arange(2 * n), axis=ax)
        a = a.reshape(*a.shape[:ax], n, 2, *a.shape[ax + 1 :]).mean(axis=ax + 1)
    return a


def _scale_terms(x, y, weights, kernel_size):
    """max(cs_j, 0) at the finer scales and max(ssim, 0) at the last, (M, B), from ssim_and_cs
    on images pooled here in numpy: MS-SSIM's factors computed independently of ms_ssim."""
    terms = []
    for j in range(len(weights)):
        s, cs = ssim_and_cs(x, y, 1.0, kernel_size)
        terms.append(np.maximum(np.asarray(s if j == len(weights) - 1 else cs), 0.0))
        x, y = _pool2(np.asarray(x)), _pool2(np.asarray(y))
    return np.stack(terms)


# ---------------------------------------------------------------- known answers


def test_identical_images():
    x, _ = _pair("smooth", (2, 48, 48, 1))
    assert np.all(np.isposinf(psnr(x, x, 1.0)))  # MSE 0: +inf, as MONAI
    np.testing.assert_allclose(ssim(x, x, 1.0), 1.0, atol=4 * EPS)
    np.testing.assert_allclose(ms_ssim(x, x, 1.0, weights=W3, kernel_size=7), 1.0, atol=4 * EPS)


def test_psnr_constant_offset():
    # MSE = c^2 up to rounding, so PSNR = 20 log10(R / c); R = 2 (data in [-1, 1]).
    x, _ = _pair("random", (3, 16, 16, 16, 2))
    x = 2 * x - 1
    c = np.float32([0.1, 0.25, 0.5])
    got = psnr(x, x + c[:, None, None, None, None], 2.0)
    # (x + c) - x is off by <= u |x + c| <= 1.5 u, i.e. 1.5 u / c relative; the MSE by twice
    # that plus the mean's summation (3 sqrt(N) u, as in _psnr_tol); PSNR by 10 / ln 10 times
    # the MSE's relative error.
    n = x[0].size
    tol = 10 / math.log(10) * (3 * U / c + 3 * math.sqrt(n) * U) + 4 * EPS * 20
    np.testing.assert_array_less(np.abs(got - 20 * np.log10(2.0 / c)), tol)


def test_symmetry_and_shapes_2d_3d():
    for shape in [(3, 48, 48, 2), (2, 32, 32, 32, 1)]:
        x, y = _pair("noisy", shape)
        for f in (psnr, partial(ssim, kernel_size=7), partial(ms_ssim, weights=W3, kernel_size=7)):
            a, b = np.asarray(f(x, y, 1.0)), np.asarray(f(y, x, 1.0))
            assert a.shape == (shape[0],)
            np.testing.assert_allclose(a, b, rtol=1e-5)  # same formula up to rounding order


def test_ms_ssim_is_product_of_scale_terms():
    # Wang et al. 2003 Eq. 7 from ssim_and_cs on images pooled in numpy; a negatively
    # correlated pair has cs < 0 and is clipped to 0 (MS-SSIM 0, not NaN).
    for kind in ("noisy", "negative"):
        x, y = _pair(kind, (2, 64, 64, 3))
        terms = _scale_terms(x, y, W3, 7)
        want = np.prod(terms ** np.asarray(W3)[:, None], axis=0)
        np.testing.assert_allclose(ms_ssim(x, y, 1.0, weights=W3, kernel_size=7), want, rtol=1e-5)
    assert np.all(want == 0.0)
    one = ms_ssim(x, y, 1.0, weights=(1.0,), kernel_size=7)  # one scale: max(SSIM, 0)
    np.testing.assert_allclose(one, np.maximum(ssim(x, y, 1.0, kernel_size=7), 0.0), atol=EPS)


def test_too_small_names_minimum():
    x = np.zeros((1, 48, 48, 48, 1), np.float32)
    with pytest.raises(InputError, match=r"must be >= 176 .*at most 3 scale.*kernel_size <= 3"):
        ms_ssim(x, x, 1.0)  # default: 5 scales, kernel 11
    assert min_size_ms_ssim(3, 7) == 28 and min_size_ms_ssim(5, 7) == 112
    ms_ssim(x[:, :28, :28, :28], x[:, :28, :28, :28], 1.0, weights=W3, kernel_size=7)
    with pytest.raises(InputError, match=">= 28"):
        ms_ssim(x[:, :27], x[:, :27], 1.0, weights=W3, kernel_size=7)
    with pytest.raises(InputError, match="smaller than kernel_size 11"):
        ssim(x[:, :10], x[:, :10], 1.0)
    with pytest.raises(InputError, match="same shape"):
        psnr(x, x[:, :10], 1.0)
    with pytest.raises(InputError, match="channels-last"):
        ssim(x[0, ..., 0], x[0, ..., 0], 1.0)


def test_diversity():
    x, y = _pair("noisy", (2, 32, 32, 32, 1))
    kw = dict(weights=W3, kernel_size=7)
    same = np.repeat(x[:1], 3, axis=0)
    assert diversity_ms_ssim(same, 1.0, **kw) == pytest.approx(1.0, abs=4 * EPS)
    # 5 samples, 10 pairs in batches of 4 (the last padded): the mean of the pairwise scores.
    s = np.concatenate([x, y, _pair("smooth", (1, 32, 32, 32, 1), seed=1)[1]])
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    want = np.mean([float(ms_ssim(s[i : i + 1], s[j : j + 1], 1.0, **kw)[0]) for i, j in pairs])
    assert diversity_ms_ssim(s, 1.0, batch_size=4, **kw) == pytest.approx(want, rel=1e-5)
    with pytest.raises(InputError, match="at least 2 samples"):
        diversity_ms_ssim(s[:1], 1.0, **kw)


def test_subject_preservation_and_jit():
    x, y = _pair("noisy", (2, 32, 32, 32, 1))
    out = subject_preservation(x, y, 1.0, weights=W3, kernel_size=7)
    assert set(out) == {"psnr", "ms_ssim"}
    np.testing.assert_array_equal(out["psnr"], psnr(x, y, 1.0))
    np.testing.assert_array_equal(out["ms_ssim"], ms_ssim(x, y, 1.0, weights=W3, kernel_size=7))
    jitted = jax.jit(partial(ms_ssim, weights=W3, kernel_size=7))
    np.testing.assert_allclose(jitted(x, y, 1.0), out["ms_ssim"], rtol=1e-6)


# ---------------------------------------------------------------- parity with MONAI (-m ref)
#
# Both libraries evaluate the same float32 formulas in different orders, so they differ by
# rounding only. Error model (images in [0, R], so every summand is >= 0):
#  * a sum of n non-negative float32 terms has relative error about sqrt(n) u (Higham & Mary
#    2019, probabilistic bound; LAMBDA = 3 standard deviations below);
#  * a local moment (window of n = k^d taps, weights summing to 1, summands <= R^2) is then off
#    by e_m = g R^2, g = LAMBDA sqrt(k^d) u (MONAI sums all k^d taps at once, we k per axis:
#    the larger count bounds both);
#  * per voxel, cs = (2 cov + C2) / B with B = var_x + var_y + C2 and each (co)variance off by
#    <= 3 e_m (E[xy], and 2 |mu| d(mu) from E[x]^2), |cs| <= 1, so |d cs| <= 12 e_m / B; the
#    luminance factor (non-negative data) has relative error <= 4 g;
#  * the score is the mean of the map over its n_map voxels (and channels); independent per-
#    voxel errors e_v average to rms(e_v) / sqrt(n_map); two libraries: x 2.
# B is data-dependent (near C2 on flat regions, where the bound is widest), so it is computed
# here in float64 numpy from the images. MS-SSIM = prod v_j^w_j then moves by
# MS * sum_j w_j |d v_j| / v_j (first order), v_j the scale-j terms, d v_j the bound above at
# scale j. PSNR: the MSE (n summands >= 0 per item) is off by LAMBDA sqrt(n) u relative, PSNR
# by 10 / ln 10 times that, plus a few ulps of the result.
# Measured with MONAI 1.6.1 on CPU: |diff| <= 1.0e-5 (SSIM), 7.8e-6 (MS-SSIM), 3.8e-6 dB (PSNR),
# 8x (SSIM) to ~2000x (MS-SSIM) inside these bounds. Local variances with the Gaussian-window
# unbiased factor 1 / (1 - sum w^2) instead would exceed the SSIM bound in 5 of the 6 cases.

LAMBDA = 3.0


def _local_mean(a, taps):
    """Valid separable filtering of the spatial axes of (B, *S, C) with 1-D taps (float64)."""
    for ax in range(1, a.ndim - 1):
        a = sliding_window_view(a, len(taps), axis=ax) @ taps  # window axis last, contracted
    return a


def _ssim_tol(x, y, kernel_size, sigma=1.5, data_range=1.0, k2=0.03):
    """Bound on |ours - MONAI| for the mean SSIM or cs of x, y (B, *S, C): (B,)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    taps = gaussian_window(kernel_size, sigma)
    mx, my = _local_mean(x, taps), _local_mean(y, taps)
    b = _local_mean(x * x, taps) - mx**2 + _local_mean(y * y, taps) - my**2 + (k2 * data_range) ** 2
    g = LAMBDA * math.sqrt(kernel_size ** (x.ndim - 2)) * U
    e_v = 12.0 * g * data_range**2 / b + 4.0 * g  # per-voxel bound, (B, *map, C)
    axes = tuple(range(1, x.ndim))
    rms, n_map = np.sqrt(np.mean(e_v**2, axis=axes)), math.prod(e_v.shape[1:])
    return 2.0 * rms / math.sqrt(n_map) + 8 * EPS


def _ms_tol(x, y, weights, kernel_size, value):
    """Bound on |ours - MONAI| for MS-SSIM with value ``value`` (B,), first order."""
    rel = 0.0
    for j, w in enumerate(weights):
        s, cs = ssim_and_cs(x, y, 1.0, kernel_size)
        v = np.maximum(np.asarray(s if j == len(weights) - 1 else cs), 1e-30)
        rel = rel + w * _ssim_tol(x, y, kernel_size) / v
        x, y = _pool2(np.asarray(x)), _pool2(np.asarray(y))
    return np.asarray(value) * rel + 8 * EPS


def _psnr_tol(shape, value):
    n = math.prod(shape[1:])
    return 2.0 * 10.0 / math.log(10.0) * LAMBDA * math.sqrt(n) * U + 4 * EPS * np.abs(value)


def _torch(a):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))  # (B, C, *S)


SHAPES = {2: (2, 64, 64, 3), 3: (2, 32, 32, 32, 1)}
KINDS = ("random", "noisy", "smooth")


@pytest.mark.ref
@pytest.mark.parametrize("d", [2, 3])
def test_psnr_matches_monai(d):
    metrics = pytest.importorskip("monai.metrics")
    x, y = _pair("noisy", (*SHAPES[d][:-1], 2))
    y[..., 1] = np.clip(x[..., 1] + 0.3 * (y[..., 1] - x[..., 1]), 0, 1)  # channels differ
    ours = np.asarray(psnr(x, y, 1.0))
    ref = metrics.PSNRMetric(max_val=1.0, reduction="none")(_torch(y), _torch(x)).numpy()[:, 0]
    assert np.all(np.abs(ours - ref) <= _psnr_tol(x.shape, ref)), (ours, ref)


@pytest.mark.ref
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [2, 3])
def test_ssim_matches_monai(d, kind):
    metrics = pytest.importorskip("monai.metrics")
    x, y = _pair(kind, SHAPES[d])
    ours = np.asarray(ssim(x, y, 1.0))
    ref = metrics.SSIMMetric(spatial_dims=d, data_range=1.0, reduction="none")
    ref = ref(_torch(x), _torch(y)).numpy()[:, 0]
    tol = _ssim_tol(x, y, 11)
    assert np.all(np.abs(ours - ref) <= tol), (ours, ref, tol)


MS_CASES = [  # (spatial dims, shape, weights, kernel): sizes MONAI's own check accepts
    (3, (2, 32, 32, 32, 1), W3, 7),  # 32^3 phantoms: 3 scales, kernel 7
    (3, (1, 48, 48, 48, 2), MS_SSIM_WEIGHTS, 3),  # 48^3: 5 scales need kernel <= 3
    (2, (2, 64, 64, 2), W3, 11),
    (2, (1, 176, 176, 1), MS_SSIM_WEIGHTS, 11),  # MONAI's defaults at their minimum size
]
# Every setting on the two correlated pairs; all four kinds on the 32^3 phantom setting.
MS_PARAMS = [(*case, kind) for case in MS_CASES for kind in ("noisy", "smooth")]
MS_PARAMS += [(*MS_CASES[0], kind) for kind in ("random", "negative")]


@pytest.mark.ref
@pytest.mark.parametrize(("d", "shape", "weights", "k", "kind"), MS_PARAMS)
def test_ms_ssim_matches_monai(d, shape, weights, k, kind):
    metrics = pytest.importorskip("monai.metrics")
    x, y = _pair(kind, shape)
    ours = np.asarray(ms_ssim(x, y, 1.0, weights=weights, kernel_size=k))
    ref = metrics.MultiScaleSSIMMetric(
        spatial_dims=d, data_range=1.0, kernel_size=k, weights=weights, reduction="none"
    )
    ref = ref(_torch(x), _torch(y)).numpy()[:, 0]
    tol = _ms_tol(x, y, weights, k, ref)
    assert np.all(np.abs(ours - ref) <= tol), (ours, ref, tol)
    if kind == "negative":  # cs < 0 at some scale: both clip to MS-SSIM 0
        assert np.all(ours == 0.0) and np.all(ref == 0.0)


def test_ms_ssim_settings_fit_the_volume():
    from jaxcf.evaluation.image_metrics import MS_SSIM_WEIGHTS, ms_ssim_settings

    full = ms_ssim_settings(128)
    assert full["kernel_size"] == 7 and np.allclose(full["weights"], MS_SSIM_WEIGHTS, atol=1e-3)
    small = ms_ssim_settings(32)
    assert small["kernel_size"] == 7 and len(small["weights"]) == 3
    np.testing.assert_allclose(small["weights"], (0.0711, 0.4530, 0.4760), atol=1e-4)
    assert len(ms_ssim_settings(16)["weights"]) == 2 and ms_ssim_settings(6)["kernel_size"] == 5
    # Each setting runs on its size (a volume against itself scores 1).
    for size in (6, 16, 32):
        x = np.random.default_rng(size).uniform(size=(1, size, size, size, 1)).astype(np.float32)
        np.testing.assert_allclose(ms_ssim(x, x, 1.0, **ms_ssim_settings(size)), 1.0, rtol=1e-5)
