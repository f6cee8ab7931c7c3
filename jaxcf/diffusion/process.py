"""The forward process and conversions between what a denoiser predicts.

All formulas are written in terms of (alpha_t, sigma_t) with x_t = alpha_t x0 + sigma_t eps,
so they serve discrete (alpha = sqrt(abar)) and rectified-flow (alpha = 1 - t, sigma = t)
schedules alike. Prediction types (Salimans & Ho 2022 for v; Liu et al. 2022 for flow):

  eps:  eps
  x0:   x0
  v:    alpha eps - sigma x0          (variance-preserving schedules only)
  flow: eps - x0 = dx_t / dt          (rectified flow)

Per-sample scalars (B,) broadcast against samples (B, ..., C) via :func:`expand`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcf.diffusion.schedules import Schedule
from jaxcf.errors import InputError

_TINY = 1e-12


def expand(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a scalar or (B,) array to broadcast against x of shape (B, ...)."""
    v = jnp.asarray(v, jnp.float32)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def _safe(d: jax.Array) -> jax.Array:
    """Guard a non-negative divisor (sigma at t = 0, alpha at flow t = 1)."""
    return jnp.maximum(d, _TINY)


def coefficients(schedule: Schedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha_t, sigma_t) shaped to broadcast against x."""
    alpha, sigma = schedule.alpha_sigma(t)
    return expand(alpha, x), expand(sigma, x)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Sample q(x_t | x0) = N(alpha_t x0, sigma_t^2 I). x0, noise (B, ...); t (B,)."""
    alpha, sigma = coefficients(schedule, t, x0)
    return alpha * x0 + sigma * noise


def split_output(schedule: Schedule, out: jax.Array, x: jax.Array):
    """Split a denoiser output into (prediction, variance values or None).

    learned_range models output 2C channels: the prediction, then the interpolation
    values v in [-1, 1] of Nichol & Dhariwal (2021) eq. 15.
    """
    channels = x.shape[-1]
    if schedule.variance == "learned_range":
        if out.shape[-1] != 2 * channels:
            raise InputError(
                f"variance='learned_range' needs {2 * channels} output channels, "
                f"got {out.shape[-1]}"
            )
        return out[..., :channels], out[..., channels:]
    if out.shape != x.shape:
        raise InputError(f"denoiser output shape {out.shape} differs from sample shape {x.shape}")
    return out, None


def predict_x0_eps(
    schedule: Schedule, pred: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) implied by a prediction of type schedule.prediction at (x_t, t)."""
    alpha, sigma = coefficients(schedule, t, x_t)
    pred = pred.astype(jnp.float32)
    kind = schedule.prediction
    if kind == "eps":
        return (x_t - sigma * pred) / _safe(alpha), pred
    if kind == "x0":
        return pred, (x_t - alpha * pred) / _safe(sigma)
    if kind == "v":
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred
    if kind == "flow":
        # x_t = alpha x0 + sigma eps and u = eps - x0 solve to these for any (alpha, sigma).
        norm = alpha + sigma
        return (x_t - sigma * pred) / norm, (x_t + alpha * pred) / norm
    raise InputError(f"unknown prediction type {kind!r}")


def prediction_from(schedule: Schedule, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """The prediction of type schedule.prediction that corresponds to (x0, eps) at t."""
    kind = schedule.prediction
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "flow":
        return eps - x0
    if kind == "v":
        alpha, sigma = coefficients(schedule, t, x0)
        return alpha * eps - sigma * x0
    raise InputError(f"unknown prediction type {kind!r}")


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - alpha_t x0) / sigma_t."""
    alpha, sigma = coefficients(schedule, t, x_t)
    return (x_t - alpha * x0) / _safe(sigma)


def x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 = (x_t - sigma_t eps) / alpha_t."""
    alpha, sigma = coefficients(schedule, t, x_t)
    return (x_t - sigma * eps) / _safe(alpha)


def v_from_x0_eps(schedule: Schedule, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022)."""
    alpha, sigma = coefficients(schedule, t, x0)
    return alpha * eps - sigma * x0


def denoise(
    schedule: Schedule, pred: jax.Array, x_t: jax.Array, t: jax.Array, x0_transform=None
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) from a prediction, with an optional transform applied to x0.

    When x0 is transformed (clipped, normalised, thresholded), eps is re-derived from the
    transformed x0 so that the step stays on the line through x_t, as guided-diffusion's
    DDIM does (diffusers' `use_clipped_model_output=True`).
    """
    x0, eps = predict_x0_eps(schedule, pred, x_t, t)
    if x0_transform is None:
        return x0, eps
    x0 = x0_transform(x0)
    return x0, eps_from_x0(schedule, x_t, t, x0)


# --- the posterior q(x_s | x_t, x0), s < t, valid for respaced chains ----------------------


def _step_alphas(schedule: Schedule, t: jax.Array, s: jax.Array):
    abar_t = schedule.alpha_bar(t)
    abar_s = schedule.alpha_bar(s)
    return abar_t, abar_s, 1.0 - abar_t / abar_s


def posterior_mean_variance(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, s: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_s | x_t, x0) for s < t (s = -1: the clean image).

    With beta_ts = 1 - abar_t / abar_s (Ho et al. 2020 eqs. 6-7, for any gap):
      mean = sqrt(abar_s) beta_ts / (1 - abar_t) x0
             + sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) x_t
      var  = (1 - abar_s) / (1 - abar_t) beta_ts
    Returns mean (like x_t) and var (shaped to broadcast).
    """
    abar_t, abar_s, beta_ts = _step_alphas(schedule, t, s)
    coef_x0 = jnp.sqrt(abar_s) * beta_ts / (1.0 - abar_t)
    coef_xt = jnp.sqrt(1.0 - beta_ts) * (1.0 - abar_s) / (1.0 - abar_t)
    mean = expand(coef_x0, x_t) * x0 + expand(coef_xt, x_t) * x_t
    var = expand((1.0 - abar_s) / (1.0 - abar_t) * beta_ts, x_t)
    return mean, var


def _posterior_log_variance_clipped(schedule: Schedule, t: jax.Array, s: jax.Array) -> jax.Array:
    """log posterior variance, with the zero variance of the last step replaced by that of
    the step 1 -> 0 of the full chain (guided-diffusion's `posterior_log_variance_clipped`)."""
    abar_t, abar_s, beta_ts = _step_alphas(schedule, t, s)
    var = (1.0 - abar_s) / (1.0 - abar_t) * beta_ts
    abar0, abar1 = schedule.alphas_cumprod[0], schedule.alphas_cumprod[1]
    var1 = (1.0 - abar0) / (1.0 - abar1) * (1.0 - abar1 / abar0)
    return jnp.log(jnp.where(s < 0, var1, var))


def model_log_variance(
    schedule: Schedule,
    t: jax.Array,
    s: jax.Array,
    x: jax.Array,
    var_values: jax.Array | None = None,
) -> jax.Array:
    """log variance of the reverse step p(x_s | x_t), broadcastable against x.

    fixed_small: the posterior variance; fixed_large: beta_ts (Ho et al. 2020, sec. 3.2);
    learned_range: frac * log(beta_ts) + (1 - frac) * log(posterior var), frac = (v + 1) / 2
    (Nichol & Dhariwal 2021, eq. 15), with v the model's extra output channels.
    """
    _, _, beta_ts = _step_alphas(schedule, t, s)
    min_log = expand(_posterior_log_variance_clipped(schedule, t, s), x)
    max_log = expand(jnp.log(beta_ts), x)
    if schedule.variance == "fixed_small":
        return min_log
    if schedule.variance == "fixed_large":
        # guided-diffusion uses the posterior variance at the final step (beta_0 is tiny anyway).
        return jnp.where(expand(s, x) < 0, min_log, max_log)
    if var_values is None:
        raise InputError("variance='learned_range' needs the model's variance channels")
    frac = (var_values.astype(jnp.float32) + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log
