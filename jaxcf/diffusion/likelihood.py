"""Gaussian log-likelihood pieces of the variational bound (Ho et al. 2020, sec. 3.3)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )


def _std_normal_cdf(x: jax.Array) -> jax.Array:
    # The tanh approximation of the standard normal CDF used by DDPM's decoder term.
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: jax.Array, means: jax.Array, log_scales: jax.Array, bins: int = 256
) -> jax.Array:
    """log P(x) for data in [-1, 1] quantised to `bins` levels under N(means, exp(log_scales)^2),
    elementwise in nats (the L_0 decoder term, Ho et al. 2020 eq. 13)."""
    half = 1.0 / (bins - 1)
    centred = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = _std_normal_cdf(inv_std * (centred + half))
    cdf_min = _std_normal_cdf(inv_std * (centred - half))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    edge = 1.0 - 1e-3
    return jnp.where(x < -edge, log_cdf_plus, jnp.where(x > edge, log_one_minus_cdf_min, log_delta))
