"""Transforms applied to the x0 estimate inside a sampler step.

Each is a function x0 -> x0 on channels-last (B, ..., C) arrays; bind options with
functools.partial and pass it as a sampler's `x0_transform`. Quantiles are fractions in
(0, 1]: diffusers-Flax and maxdiffusion pass 0.995 to a 0-100 percentile, which makes
dynamic thresholding plain clipping; here a value above 1 is an error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcf.errors import InputError


def _check_quantile(quantile: float) -> None:
    if not 0.0 < quantile <= 1.0:
        raise InputError(
            f"quantile must be a fraction in (0, 1], got {quantile} (for the 99.5th percentile "
            "pass 0.995)"
        )


def clip_bounds(value: float | tuple[float, float]) -> tuple[float, float]:
    """(lo, hi) of a clip bound: a number v means [-v, v], a pair (lo, hi) itself.
    Bounds may be traced; concrete ones must have hi > lo."""
    lo, hi = value if isinstance(value, tuple | list) else (-value, value)
    if isinstance(lo, int | float) and isinstance(hi, int | float) and not hi > lo:
        raise InputError(f"clip range must have hi > lo, got [{lo}, {hi}]")
    return lo, hi


def static_clip(x0: jax.Array, value: float | tuple[float, float] = 1.0) -> jax.Array:
    """Clip x0 to the data range: [-value, value], or [lo, hi] for value = (lo, hi).

    guided-diffusion's `clip_denoised=True` / diffusers' `clip_sample=True` with the data
    range as the bound (both default to [-1, 1], the range their models train on).
    """
    lo, hi = clip_bounds(value)
    return jnp.clip(x0, lo, hi)


def dynamic_normalization(x0: jax.Array, quantile: float = 0.99) -> jax.Array:
    """Diff-SCM dynamic normalisation (Sanchez et al. 2022, sec. 3.3).

    Per sample and channel: th = max(1, quantile(|x0|, q)); x0 <- clip(x0, -th, th) / th.
    Keeps each modality's x0 estimate in range without flattening its contrast.
    """
    _check_quantile(quantile)
    spatial = tuple(range(1, x0.ndim - 1))
    th = jnp.quantile(jnp.abs(x0), quantile, axis=spatial, keepdims=True)
    th = jnp.maximum(th, 1.0)
    return jnp.clip(x0, -th, th) / th


def dynamic_threshold(
    x0: jax.Array, quantile: float = 0.995, max_value: float | None = None
) -> jax.Array:
    """Imagen dynamic thresholding (Saharia et al. 2022, sec. 2.3).

    Per sample over all pixels and channels: s = clip(quantile(|x0|, q), 1, max_value);
    x0 <- clip(x0, -s, s) / s. diffusers' `sample_max_value` is `max_value` (default there
    1.0, which reduces to clipping; None here means no upper bound, as in Imagen).
    """
    _check_quantile(quantile)
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, quantile, axis=1), 1.0)
    if max_value is not None:
        s = jnp.minimum(s, max_value)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s
