"""Closed-form optimal denoisers, for checking samplers and for demonstrations.

For data drawn from an isotropic Gaussian mixture
    x0 ~ sum_k w_k N(mu_k, s^2 I),   x_t = alpha x0 + sigma eps,
everything is analytic: x_t | k ~ N(alpha mu_k, v I) with v = alpha^2 s^2 + sigma^2, the
component posterior r_k(x_t) is a softmax of log w_k - |x_t - alpha mu_k|^2 / (2 v), and
    E[x0 | x_t]  = sum_k r_k (mu_k + alpha s^2 (x_t - alpha mu_k) / v)
    E[eps | x_t] = sum_k r_k sigma (x_t - alpha mu_k) / v.
These are the minimisers of the eps / x0 / v / flow regression losses, so a sampler fed
them must reproduce the data distribution up to its discretisation error. s = 0 gives the
empirical (memorising) denoiser of a finite set of images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcf.diffusion import process
from jaxcf.diffusion.schedules import Schedule


def mixture_denoiser(
    schedule: Schedule,
    means: jax.Array,
    std: float,
    *,
    weights: jax.Array | None = None,
    labels: jax.Array | None = None,
    null_label: int | None = None,
):
    """Optimal denoiser of an isotropic Gaussian mixture, as a `model_fn(x_t, t, cond)`.

    Args:
      schedule: gives (alpha_t, sigma_t) and the prediction type returned.
      means: (K, *sample_shape) component means (trailing dims may broadcast).
      std: the shared per-pixel standard deviation s of every component.
      weights: (K,) mixture weights (default uniform).
      labels: (K,) int class of each component; then cond = {"label": (B,) int} restricts
        the mixture to that class, and `null_label` means "any class" (the unconditional
        model that classifier-free guidance needs).
    Returns:
      model_fn giving predictions of type schedule.prediction, float32, x_t's shape; for
      learned_range schedules 2C channels, the second half the exact reverse variance of
      the full chain's step t -> t - 1 as learned_range values.
    """
    means = jnp.asarray(means, jnp.float32)
    k = means.shape[0]
    log_w = jnp.log(jnp.full((k,), 1.0 / k) if weights is None else jnp.asarray(weights))
    var0 = jnp.float32(std) ** 2

    def model_fn(x_t: jax.Array, t: jax.Array, cond: Any = None) -> jax.Array:
        x_t = x_t.astype(jnp.float32)
        alpha, sigma = schedule.alpha_sigma(t)
        a = alpha.reshape((-1, 1) + (1,) * (x_t.ndim - 1))  # (B, 1, 1...) against (B, K, ...)
        s = sigma.reshape(a.shape)
        v = a**2 * var0 + s**2
        # (K, *trailing) -> (1, K, 1.., *trailing), right-aligned with x_t's sample dims.
        m = means.reshape((1, k) + (1,) * (x_t.ndim - means.ndim) + means.shape[1:])
        resid = x_t[:, None] - a * m  # (B, K, ...)
        resid = jnp.broadcast_to(resid, (x_t.shape[0], k, *x_t.shape[1:]))
        sq = jnp.sum(resid.reshape(x_t.shape[0], k, -1) ** 2, axis=-1)
        logits = log_w[None] - 0.5 * sq / v.reshape(-1, 1)
        if labels is not None and cond is not None:
            wanted = cond["label"][:, None]
            match = labels[None] == wanted
            if null_label is not None:
                match = match | (wanted == null_label)
            logits = jnp.where(match, logits, -jnp.inf)
        r = jax.nn.softmax(logits, axis=1).reshape((x_t.shape[0], k) + (1,) * (x_t.ndim - 1))
        x0_k = m + a * var0 * resid / v
        x0 = jnp.sum(r * x0_k, axis=1)
        eps = jnp.sum(r * (s * resid / v), axis=1)
        pred = process.prediction_from(schedule, x0, eps, t)
        if schedule.variance != "learned_range":
            return pred
        # Var(x0 | x_t) per pixel: within-component s^2 sigma^2 / v plus between components.
        var_x0 = var0 * s[:, 0] ** 2 / v[:, 0] + jnp.sum(r * x0_k**2, axis=1) - x0**2
        return jnp.concatenate([pred, _optimal_variance_values(schedule, t, x_t, var_x0)], -1)

    return model_fn


def _optimal_variance_values(schedule: Schedule, t, x_t, var_x0):
    """learned_range outputs in [-1, 1] that give the exact reverse variance of the step
    t -> t - 1: Var(x_{t-1} | x_t) = posterior var + c0^2 Var(x0 | x_t), c0 the posterior
    mean's x0 coefficient (Ho et al. 2020 eq. 7)."""
    t_prev = t - 1
    abar_t, abar_s = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    beta = 1.0 - abar_t / abar_s
    c0 = process.expand(jnp.sqrt(abar_s) * beta / (1.0 - abar_t), x_t)
    min_log = process.model_log_variance(schedule.replace(variance="fixed_small"), t, t_prev, x_t)
    max_log = process.expand(jnp.log(beta), x_t)
    exact = jnp.log(jnp.exp(min_log) + c0**2 * jnp.maximum(var_x0, 0.0))
    frac = (exact - min_log) / jnp.maximum(max_log - min_log, 1e-12)
    return jnp.clip(2.0 * frac - 1.0, -1.0, 1.0)


def gaussian_denoiser(schedule: Schedule, mean: float | jax.Array, std: float):
    """Optimal denoiser for x0 ~ N(mean, std^2 I) (mean a scalar or a sample-shaped array)."""
    return mixture_denoiser(schedule, jnp.asarray(mean, jnp.float32)[None], std)
