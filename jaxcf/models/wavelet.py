"""Single-level orthonormal Haar wavelet transform for channels-last 2-D and 3-D arrays.

WDM (Friedrich et al. 2024, "WDM: 3D Wavelet Diffusion Models for High-Resolution Medical
Image Synthesis") runs diffusion on the eight Haar sub-bands of a volume instead of on its
voxels: the network sees half the resolution with eight times the channels, and the
transform is exactly invertible. This module is that transform plus WDM's scaling and
clipping conventions. It holds no parameters and is pure `jax.numpy`.

Layout. `dwt` maps (B, H, W, C) -> (B, H/2, W/2, 4C) and (B, D, H, W, C) ->
(B, D/2, H/2, W/2, 8C). Output channels are band-major: channel `b * C + c` is sub-band
`b` of input channel `c`. Sub-bands are ordered like PyWavelets' `dwtn` keys sorted
lexicographically ('aa' < 'ad' < 'da' < 'dd'; 'aaa' < 'aad' < ... < 'ddd'), where the k-th
letter refers to the k-th spatial axis (D, H, W in 3-D; H, W in 2-D), 'a' is low-pass and
'd' high-pass. `band_names` spells the same order with L/H. Band 0 is LL / LLL. This is
also the order in which WDM concatenates its sub-bands (LLL, LLH, LHL, ..., HHH, first
letter the depth axis), so a one-channel volume lines up with WDM's 8 input channels.

Sign convention (same as PyWavelets' 'haar'): along one axis, each pair of neighbours
(x0, x1) becomes approximation (x0 + x1) / sqrt(2) and detail (x0 - x1) / sqrt(2).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from jaxcf.diffusion.transforms import clip_bounds
from jaxcf.errors import InputError

__all__ = ["band_names", "dwt", "from_wavelet", "idwt", "to_wavelet", "wavelet_clip"]

_AXIS_NAMES = {2: ("H", "W"), 3: ("D", "H", "W")}


def band_names(spatial_dims: int) -> list[str]:
    """Names of the 2**spatial_dims sub-bands in `dwt`'s channel order.

    One letter per spatial axis, in axis order (D, H, W for 3-D; H, W for 2-D); 'L' is
    low-pass (PyWavelets' 'a'), 'H' high-pass ('d'). 2-D: ['LL', 'LH', 'HL', 'HH'];
    3-D: ['LLL', 'LLH', 'LHL', 'LHH', 'HLL', 'HLH', 'HHL', 'HHH']. Sub-band i occupies
    channels [i * C, (i + 1) * C) of the transformed array.
    """
    if spatial_dims not in _AXIS_NAMES:
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return ["".join(p) for p in itertools.product("LH", repeat=spatial_dims)]


def _spatial_dims(ndim: int, what: str) -> int:
    # (B, H, W, C) -> 2, (B, D, H, W, C) -> 3; anything else is a caller error.
    if ndim not in (4, 5):
        raise InputError(
            f"{what}: expected a channels-last (B, H, W, C) or (B, D, H, W, C) array, "
            f"got {ndim} dims"
        )
    return ndim - 2


def _as_float(x: jax.Array) -> jax.Array:
    # Keep any floating dtype (bf16 stays bf16); integer images become the default float.
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _channels_per_band(total: int, d: int, what: str) -> int:
    bands = 2**d
    if total % bands:
        raise InputError(
            f"{what}: a {d}-D Haar coefficient array needs a multiple of {bands} channels "
            f"({bands} sub-bands per image channel), got {total}"
        )
    return total // bands


def _butterfly(y: jax.Array, axis: int) -> jax.Array:
    """(y0, y1) -> (y0 + y1, y0 - y1) along a size-2 axis, unnormalised.

    The 2x2 Haar matrix [[1, 1], [1, -1]] / sqrt(2) is symmetric and its own inverse, so
    the same butterfly serves analysis and synthesis; the 1/sqrt(2) per axis is applied
    once at the end as 2**(-d/2) (exactly 0.5 in 2-D, and one rounding instead of d).
    """
    y0 = lax.index_in_dim(y, 0, axis, keepdims=False)
    y1 = lax.index_in_dim(y, 1, axis, keepdims=False)
    return jnp.stack([y0 + y1, y0 - y1], axis=axis)


@jax.jit
def dwt(x: jax.Array) -> jax.Array:
    """Single-level orthonormal Haar DWT over the spatial axes.

    Args:
      x: (B, H, W, C) or (B, D, H, W, C), any float dtype; every spatial size even.

    Returns:
      (B, H/2, W/2, 4C) or (B, D/2, H/2, W/2, 8C) in x's dtype; channel b * C + c is
      sub-band `band_names(d)[b]` of input channel c (see the module docstring).

    Raises:
      ValueError: wrong rank, or an odd spatial size (the axis is named).

    Jitted (shapes are static, so the checks run at trace time): eager callers such as
    data pipelines pay one compile per shape instead of one per primitive.
    """
    x = _as_float(x)
    d = _spatial_dims(x.ndim, "dwt")
    batch, *spatial, channels = x.shape
    for k, (name, n) in enumerate(zip(_AXIS_NAMES[d], spatial, strict=True)):
        if n % 2:
            raise InputError(
                f"dwt: spatial axis {name} (array axis {k + 1}) has odd size {n}; the Haar "
                "DWT halves every spatial axis, so pad or crop it to an even size first"
            )
    # Split every spatial axis n into (n/2, 2): (B, n1/2, 2, n2/2, 2, [n3/2, 2,] C). The
    # size-2 axes hold the neighbour pairs the Haar filters act on.
    split = [batch]
    for n in spatial:
        split += [n // 2, 2]
    y = x.reshape(*split, channels)
    pair_axes = [2 + 2 * k for k in range(d)]
    for ax in pair_axes:
        y = _butterfly(y, ax)  # index 0 along ax = low-pass, 1 = high-pass
    # Move the pair axes, in spatial order, in front of C: flattening (2, .., 2, C) then
    # gives channel = (bit_D * 4 + bit_H * 2 + bit_W) * C + c, i.e. band-major channels with
    # bands in lexicographic a/d order, first letter = first spatial axis.
    perm = [0, *(1 + 2 * k for k in range(d)), *pair_axes, 1 + 2 * d]
    y = y.transpose(perm).reshape(batch, *(n // 2 for n in spatial), (2**d) * channels)
    # A Python float is weakly typed, so this keeps x's dtype.
    return y * (2.0 ** (-d / 2))


@jax.jit
def idwt(coeffs: jax.Array) -> jax.Array:
    """Exact inverse of `dwt`.

    Args:
      coeffs: (B, h, w, 4C) or (B, d, h, w, 8C) in `dwt`'s band-major layout.

    Returns:
      (B, 2h, 2w, C) or (B, 2d, 2h, 2w, C) in coeffs' dtype.

    Raises:
      ValueError: wrong rank, or a channel count not divisible by the number of bands.
    """
    coeffs = _as_float(coeffs)
    d = _spatial_dims(coeffs.ndim, "idwt")
    batch, *spatial, total = coeffs.shape
    channels = _channels_per_band(total, d, "idwt")
    # Unflatten channels into (2, .., 2, C): one high/low bit per spatial axis, D first.
    y = coeffs.reshape(batch, *spatial, *(2,) * d, channels)
    for ax in range(1 + d, 1 + 2 * d):
        y = _butterfly(y, ax)  # index 0 along ax = even sample, 1 = odd sample
    # Interleave each half-size axis with its pair axis, (n/2, 2) -> n.
    perm = [0]
    for k in range(d):
        perm += [1 + k, 1 + d + k]
    perm.append(1 + 2 * d)
    y = y.transpose(perm).reshape(batch, *(2 * n for n in spatial), channels)
    return y * (2.0 ** (-d / 2))


def _band0_divisor(total: int, channels: int, lll_scale: float, dtype) -> jax.Array:
    """(total,) divisor: lll_scale on band 0's `channels` channels, exactly 1 elsewhere."""
    if isinstance(lll_scale, int | float) and not lll_scale > 0:
        raise InputError(f"lll_scale must be positive, got {lll_scale}")
    is_band0 = jnp.arange(total) < channels
    return jnp.where(is_band0, jnp.asarray(lll_scale, dtype), jnp.ones((), dtype))


def to_wavelet(x: jax.Array, lll_scale: float = 3.0) -> jax.Array:
    """Image -> WDM diffusion space: `dwt`, then band 0 (LL / LLL) divided by lll_scale.

    Why: an orthonormal Haar LLL coefficient is 2**(3/2) times the local 2x2x2 mean, so for
    an image in [-1, 1] it spans about [-2.83, 2.83] while the detail bands stay small.
    WDM (Friedrich et al. 2024; the wdm-3d code divides LLL by 3 right after the DWT)
    scales it so every band lives in roughly [-1, 1], the range the Gaussian noise schedule
    assumes. In 2-D the LL band reaches 2x; pass lll_scale=2.0 there if wanted.

    Args:
      x: (B, H, W, C) or (B, D, H, W, C) image.
      lll_scale: divisor for band 0's C channels (1.0 = plain `dwt`).

    Returns:
      (B, H/2, W/2, 4C) or (B, D/2, H/2, W/2, 8C) coefficients, x's dtype.
    """
    c = dwt(x)
    channels = c.shape[-1] // 2 ** (c.ndim - 2)
    return c / _band0_divisor(c.shape[-1], channels, lll_scale, c.dtype)


def from_wavelet(c: jax.Array, lll_scale: float = 3.0) -> jax.Array:
    """Inverse of `to_wavelet`: band 0 multiplied by lll_scale, then `idwt`.

    Args:
      c: (B, h, w, 4C) or (B, d, h, w, 8C) WDM coefficients.
      lll_scale: the divisor `to_wavelet` used.

    Returns:
      (B, 2h, 2w, C) or (B, 2d, 2h, 2w, C) image, c's dtype.
    """
    c = _as_float(c)
    d = _spatial_dims(c.ndim, "from_wavelet")
    channels = _channels_per_band(c.shape[-1], d, "from_wavelet")
    return idwt(c * _band0_divisor(c.shape[-1], channels, lll_scale, c.dtype))


def wavelet_clip(
    c: jax.Array, lll_scale: float = 3.0, value: float | tuple[float, float] = 1.0
) -> jax.Array:
    """x0 transform for samplers running in WDM's wavelet space (coefficients -> coefficients).

    WDM's `clip_denoised`: back to the image, clamp to the data range, forward again.
    wdm-3d trains on volumes renormalised to [-1, 1] (`--renormalize=True`: 2x - 1), hence
    the default bound; pass the range the data was prepared in (data.value_range) otherwise.
    Clipping coefficients directly would be wrong: the valid image range maps to a rotated
    box in coefficient space, and a band-wise clamp neither keeps in-range images fixed
    nor guarantees the decoded image is in range. Bind options with functools.partial and
    pass it as a sampler's `x0_transform`.

    Args:
      c: (B, h, w, 4C) or (B, d, h, w, 8C) predicted x0 coefficients (WDM scaling).
      lll_scale: band-0 divisor used by `to_wavelet`.
      value: image-domain clip bound: v for [-v, v], or the data range (lo, hi).

    Returns:
      Coefficients of the same shape and dtype whose decoded image lies in the bound.
    """
    lo, hi = clip_bounds(value)
    image = from_wavelet(c, lll_scale)
    return to_wavelet(jnp.clip(image, lo, hi), lll_scale)
