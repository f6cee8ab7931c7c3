"""Image-similarity metrics for counterfactuals: PSNR, SSIM and multi-scale SSIM on 2-D and 3-D
images, subject preservation (factual vs counterfactual) and sample diversity (paper 004).

All functions take channels-last arrays ``(B, *spatial, C)`` with two or three spatial axes
(inferred from ``ndim``: 4 -> 2-D, 5 -> 3-D) and compute in float32 (float64 inputs stay float64
only when JAX runs with x64 enabled). Every score is per batch item, shape ``(B,)``.

Conventions follow MONAI's ``PSNRMetric``, ``SSIMMetric`` (Gaussian kernel) and
``MultiScaleSSIMMetric`` so the numbers compare with papers that used them (e.g. WDM, the 3-D
wavelet diffusion model paper 004 builds on, whose ``eval/ms_ssim.py`` scores sample diversity
with MONAI's MS-SSIM, 5 scales, kernel 7, data range 1):

* SSIM (Wang et al. 2004, Eq. 13) with local statistics from a Gaussian window: a separable
  window of ``kernel_size`` taps per axis, each 1-D factor normalised to sum 1, taps at offsets
  ``i - (kernel_size - 1) / 2``; *valid* filtering (no padding, the map shrinks by
  ``kernel_size - 1`` per axis); biased (population) local variances ``E[x^2] - E[x]^2`` with no
  N/(N-1) factor; the SSIM map is averaged over all map voxels and all channels together.
* MS-SSIM (Wang, Simoncelli & Bovik 2003, Eq. 7): at scales ``j = 0 .. M-2`` the mean
  contrast-structure term ``cs_j`` (c_j s_j of Eq. 2-3 with C3 = C2 / 2), at the last scale the full
  mean SSIM (luminance x cs); each clipped at 0 (``max(v, 0)``, so a negatively correlated
  scale gives MS-SSIM 0 instead of NaN from a fractional power) and combined as
  ``prod_j v_j ** w_j``. Between scales the image is 2x average-pooled (stride 2, odd sizes
  floored). ``M = len(weights)``.
* PSNR ``20 log10(R) - 10 log10(MSE)`` with the MSE over all voxels and channels of an item;
  identical items give ``+inf`` (MONAI does the same), so drop or cap them before averaging.

Size limits. SSIM needs every spatial size ``>= kernel_size``. MS-SSIM with ``M`` scales needs
``>= kernel_size * 2 ** (M - 1)`` (the last scale must still hold one window):

==========================  ==========  ===================================
setting                     min size    fits
==========================  ==========  ===================================
5 scales, kernel 11         176         (MONAI default)
5 scales, kernel 7          112         128^3 (WDM's evaluation)
5 scales, kernel 3          48          48^3
4 scales, kernel 5          40          48^3 (MONAI refuses < 45, see below)
3 scales, kernel 11         44          48^3
3 scales, kernel 7          28          32^3 and 48^3
==========================  ==========  ===================================

MONAI's own size check uses ``(M - 1) ** 2`` instead of ``2 ** (M - 1)``; the two agree for 3
and 5 scales, MONAI is stricter for 4 scales and too lenient (it then fails inside the
convolution) for 2 or >= 6 scales. Fewer scales need fewer weights: pass e.g. the first three
of the default weights, renormalised to sum 1, ``(0.0711, 0.4530, 0.4760)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf.errors import InputError

Array = jax.Array

# Wang, Simoncelli & Bovik 2003: the scale exponents beta_j = gamma_j calibrated on human ratings.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# ---------------------------------------------------------------- input checks


def _spatial_dims(x: Array, y: Array, name: str) -> int:
    if x.shape != y.shape:
        raise InputError(
            f"{name}: the two images must have the same shape, got {x.shape} and {y.shape}"
        )
    if x.ndim not in (4, 5):
        raise InputError(
            f"{name}: expected channels-last (B, H, W, C) or (B, H, W, D, C) arrays, got shape "
            f"{x.shape}"
        )
    return x.ndim - 2


def _dtype(x: Array, y: Array) -> jnp.dtype:
    # float32 at least; float64 only survives where x64 is enabled (then canonicalisation keeps it).
    return jax.dtypes.canonicalize_dtype(
        jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    )


def _check_window(kernel_size: int, sigma: float) -> None:
    if int(kernel_size) != kernel_size or kernel_size < 1:
        raise InputError(f"kernel_size must be a positive integer, got {kernel_size}")
    if not sigma > 0:
        raise InputError(f"sigma must be > 0, got {sigma}")


def min_size_ms_ssim(num_scales: int, kernel_size: int) -> int:
    """Smallest spatial size (every axis) that MS-SSIM with ``num_scales`` scales accepts."""
    # floor(floor(s / 2) / 2) ... = floor(s / 2**m), so the last scale holds a window iff
    # floor(s / 2**(M-1)) >= kernel_size, i.e. s >= kernel_size * 2**(M-1).
    return int(kernel_size) * 2 ** (int(num_scales) - 1)


def ms_ssim_settings(size: int, kernel_size: int = 7) -> dict[str, Any]:
    """MS-SSIM settings that fit a volume of side `size`: WDM's evaluation settings (5 scales,
    kernel 7) where they fit (>= 112), else as many of the first scales as fit with their
    weights rescaled to sum 1 (32^3: 3 scales), the kernel shrunk to the largest odd size
    <= `size` when not even one scale fits -> {"weights", "kernel_size"} for ms_ssim."""
    kernel = int(kernel_size)
    if size < kernel:
        kernel = size if size % 2 else size - 1
        if kernel < 1:
            raise InputError(f"MS-SSIM needs a side of at least 1, got {size}")
    scales = len(MS_SSIM_WEIGHTS)
    while scales > 1 and min_size_ms_ssim(scales, kernel) > size:
        scales -= 1
    first = np.asarray(MS_SSIM_WEIGHTS[:scales], np.float64)
    return {"weights": tuple(float(w) for w in first / first.sum()), "kernel_size": kernel}


def _check_ms_size(spatial: tuple[int, ...], num_scales: int, kernel_size: int) -> None:
    need = min_size_ms_ssim(num_scales, kernel_size)
    small = min(spatial)
    if small >= need:
        return
    # Suggestions for the smallest axis: most scales with this kernel, largest kernel with
    # these scales.
    # floor(s / 2**(m-1)) >= k  <=>  2**(m-1) <= floor(s / k): m <= bit_length(floor(s / k)).
    max_scales = (small // kernel_size).bit_length()
    max_kernel = small // 2 ** (num_scales - 1)
    hints = []
    if max_scales >= 1:
        hints.append(f"at most {max_scales} scale(s) (weights) with kernel_size {kernel_size}")
    if max_kernel >= 1:
        hints.append(f"kernel_size <= {max_kernel} with {num_scales} scales")
    hint = "; use " + " or ".join(hints) if hints else ""
    raise InputError(
        f"ms_ssim: spatial shape {spatial} is too small for {num_scales} scales (len(weights)) "
        f"and kernel_size {kernel_size}: every spatial size must be >= {need} "
        f"(= kernel_size * 2**(scales - 1)){hint} (e.g. 3 scales, kernel 7 for 32^3 volumes)"
    )


# ---------------------------------------------------------------- building blocks


def gaussian_window(kernel_size: int, sigma: float) -> np.ndarray:
    """1-D Gaussian taps (kernel_size,), float64, summing to 1, centred at (kernel_size - 1) / 2."""
    t = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2.0
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _valid_filter(x: Array, taps: np.ndarray) -> Array:
    """Separable valid (unpadded) filtering of every spatial axis of x (B, *S, C) with the same
    1-D taps; each spatial size shrinks by len(taps) - 1."""
    k = len(taps)
    w = [jnp.asarray(t, x.dtype) for t in taps]
    for axis in range(1, x.ndim - 1):
        n = x.shape[axis] - k + 1
        # Valid correlation as a sum of k shifted slices (XLA fuses it into one loop).
        acc = w[0] * jax.lax.slice_in_dim(x, 0, n, axis=axis)
        for j in range(1, k):
            acc = acc + w[j] * jax.lax.slice_in_dim(x, j, j + n, axis=axis)
        x = acc
    return x


def _avg_pool2(x: Array) -> Array:
    """2x average pooling of every spatial axis of x (B, *S, C), odd sizes floored."""
    spatial = x.shape[1:-1]
    x = x[(slice(None), *(slice(0, 2 * (s // 2)) for s in spatial), slice(None))]
    shape = [x.shape[0]]
    for s in spatial:
        shape += [s // 2, 2]
    x = x.reshape(*shape, x.shape[-1])
    return x.mean(axis=tuple(2 + 2 * i for i in range(len(spatial))))


def _item_mean(m: Array) -> Array:
    # Mean over everything but the batch axis: (B, ...) -> (B,).
    return m.mean(axis=tuple(range(1, m.ndim)))


def _ssim_maps(
    x: Array, y: Array, data_range: Array, taps: np.ndarray, k1: float, k2: float
) -> tuple[Array, Array]:
    """Per-voxel SSIM and contrast-structure maps, both (B, *(S - k + 1), C)."""
    c = x.shape[-1]
    # Five local moments in one filtering pass: E[x], E[y], E[x^2], E[y^2], E[xy].
    moments = _valid_filter(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps)
    mu_x, mu_y, e_xx, e_yy, e_xy = (moments[..., i * c : (i + 1) * c] for i in range(5))
    # Biased (population) local (co)variances, as in MONAI; Wang et al. 2004 Eq. 14-16.
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # Contrast x structure with C3 = C2 / 2 (Wang et al. 2004 Eq. 13 over Eq. 9-10):
    # cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2).
    cs = (2.0 * cov + c2) / (var_x + var_y + c2)
    # Luminance (Eq. 6): l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    lum = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return lum * cs, cs


@partial(jax.jit, static_argnames=("kernel_size", "sigma", "k1", "k2"))
def _ssim_and_cs(
    x: Array, y: Array, data_range: Array, kernel_size: int, sigma: float, k1: float, k2: float
) -> tuple[Array, Array]:
    taps = gaussian_window(kernel_size, sigma)
    s, cs = _ssim_maps(x, y, data_range, taps, k1, k2)
    return _item_mean(s), _item_mean(cs)


@partial(jax.jit, static_argnames=("weights", "kernel_size", "sigma", "k1", "k2"))
def _ms_ssim(
    x: Array,
    y: Array,
    data_range: Array,
    weights: tuple[float, ...],
    kernel_size: int,
    sigma: float,
    k1: float,
    k2: float,
) -> Array:
    taps = gaussian_window(kernel_size, sigma)
    terms = []
    for j in range(len(weights)):
        s_map, cs_map = _ssim_maps(x, y, data_range, taps, k1, k2)
        if j < len(weights) - 1:
            # Wang et al. 2003 Eq. 7: contrast and structure at the finer scales ...
            terms.append(jax.nn.relu(_item_mean(cs_map)))
            x, y = _avg_pool2(x), _avg_pool2(y)
        else:
            # ... luminance too at the coarsest: the full SSIM there.
            terms.append(jax.nn.relu(_item_mean(s_map)))
    v = jnp.stack(terms)  # (M, B)
    w = jnp.asarray(weights, v.dtype)[:, None]
    return jnp.prod(v**w, axis=0)


# ---------------------------------------------------------------- public metrics


def psnr(x: Array, y: Array, data_range: float) -> Array:
    """Peak signal-to-noise ratio in dB: x, y (B, *spatial, C) -> (B,).

    ``10 log10(R^2 / MSE)``, computed as ``20 log10(R) - 10 log10(MSE)``, the MSE taken over all
    voxels and channels of an item. Identical items give ``+inf``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _spatial_dims(x, y, "psnr")
    dt = _dtype(x, y)
    d = x.astype(dt) - y.astype(dt)
    mse = _item_mean(d * d)
    r = jnp.asarray(data_range, dt)
    return 20.0 * jnp.log10(r) - 10.0 * jnp.log10(mse)


def ssim_and_cs(
    x: Array,
    y: Array,
    data_range: float,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> tuple[Array, Array]:
    """Mean SSIM and mean contrast-structure term cs of x, y (B, *spatial, C): two (B,) arrays.

    cs is SSIM without the luminance factor, what MS-SSIM uses at its finer scales.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _spatial_dims(x, y, "ssim")
    _check_window(kernel_size, sigma)
    if min(x.shape[1:-1]) < kernel_size:
        raise InputError(
            f"ssim: spatial shape {x.shape[1:-1]} is smaller than kernel_size {kernel_size} "
            "(valid filtering needs every spatial size >= kernel_size)"
        )
    dt = _dtype(x, y)
    return _ssim_and_cs(
        x.astype(dt),
        y.astype(dt),
        jnp.asarray(data_range, dt),
        int(kernel_size),
        float(sigma),
        float(k1),
        float(k2),
    )


def ssim(
    x: Array,
    y: Array,
    data_range: float,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Array:
    """Structural similarity (Wang et al. 2004) with a Gaussian window: (B, *spatial, C) -> (B,).

    Valid filtering, biased local variances, map averaged over voxels and channels (see the
    module docstring). Every spatial size must be >= kernel_size.
    """
    return ssim_and_cs(x, y, data_range, kernel_size, sigma, k1, k2)[0]


def ms_ssim(
    x: Array,
    y: Array,
    data_range: float,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Array:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003): x, y (B, *spatial, C) -> (B,).

    ``prod_j max(cs_j, 0) ** w_j`` over scales j < M - 1 times ``max(ssim_{M-1}, 0) ** w_{M-1}``,
    with 2x average pooling between scales and M = len(weights). Every spatial size must be
    ``>= kernel_size * 2 ** (M - 1)``; an InputError names the minimum and what fits (module
    docstring: 3 scales with kernel 7 for 32^3, kernel 11 for 48^3).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _spatial_dims(x, y, "ms_ssim")
    _check_window(kernel_size, sigma)
    weights = tuple(float(w) for w in weights)
    if not weights:
        raise InputError("ms_ssim: weights must hold at least one scale weight")
    _check_ms_size(tuple(x.shape[1:-1]), len(weights), int(kernel_size))
    dt = _dtype(x, y)
    return _ms_ssim(
        x.astype(dt),
        y.astype(dt),
        jnp.asarray(data_range, dt),
        weights,
        int(kernel_size),
        float(sigma),
        float(k1),
        float(k2),
    )


@partial(jax.jit, static_argnames=("weights", "kernel_size", "sigma", "k1", "k2"))
def _pair_ms_ssim(samples, ii, jj, data_range, weights, kernel_size, sigma, k1, k2) -> Array:
    return _ms_ssim(samples[ii], samples[jj], data_range, weights, kernel_size, sigma, k1, k2)


def diversity_ms_ssim(
    samples: Array,
    data_range: float,
    batch_size: int = 8,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Sample diversity: mean MS-SSIM over all N (N - 1) / 2 unordered pairs of samples
    (N, *spatial, C); lower = more diverse, 1 for identical samples.

    Pairs are scored ``batch_size`` at a time in one jitted call (the last batch padded with
    repeats that are left out of the mean). MS-SSIM is symmetric, so this equals the mean over
    ordered pairs i != j that some evaluation scripts loop over.
    """
    samples = jnp.asarray(samples)
    if samples.ndim not in (4, 5):
        raise InputError(
            f"diversity_ms_ssim: expected samples (N, H, W, C) or (N, H, W, D, C), got shape "
            f"{samples.shape}"
        )
    n = samples.shape[0]
    if n < 2:
        raise InputError(f"diversity_ms_ssim needs at least 2 samples, got {n}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    _check_window(kernel_size, sigma)
    weights = tuple(float(w) for w in weights)
    if not weights:
        raise InputError("diversity_ms_ssim: weights must hold at least one scale weight")
    _check_ms_size(tuple(samples.shape[1:-1]), len(weights), int(kernel_size))
    dt = jax.dtypes.canonicalize_dtype(jnp.promote_types(samples.dtype, jnp.float32))
    samples = samples.astype(dt)
    r = jnp.asarray(data_range, dt)
    ii, jj = np.triu_indices(n, k=1)
    num_pairs = len(ii)
    bs = min(int(batch_size), num_pairs)
    pad = -num_pairs % bs
    ii = np.concatenate([ii, np.zeros(pad, ii.dtype)])
    jj = np.concatenate([jj, np.ones(pad, jj.dtype)])
    total = 0.0
    for start in range(0, num_pairs, bs):
        v = _pair_ms_ssim(
            samples,
            jnp.asarray(ii[start : start + bs]),
            jnp.asarray(jj[start : start + bs]),
            r,
            weights,
            int(kernel_size),
            float(sigma),
            float(k1),
            float(k2),
        )
        keep = min(bs, num_pairs - start)
        total += float(np.sum(np.asarray(v, np.float64)[:keep]))
    return total / num_pairs


def subject_preservation(
    factual: Array, counterfactual: Array, data_range: float, **ms_ssim_kw
) -> dict[str, Array]:
    """How much of the subject a counterfactual keeps: {"psnr": (B,), "ms_ssim": (B,)} between
    factual and counterfactual (B, *spatial, C); ``ms_ssim_kw`` go to ``ms_ssim`` (weights,
    kernel_size, sigma, k1, k2). Higher = closer to the factual."""
    return {
        "psnr": psnr(factual, counterfactual, data_range),
        "ms_ssim": ms_ssim(factual, counterfactual, data_range, **ms_ssim_kw),
    }
