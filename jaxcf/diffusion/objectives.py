"""Training objectives: denoising regression for every prediction type, condition dropout,
per-timestep weighting, and the learned-variance bound term.

    loss, metrics = diffusion_loss(model_fn, schedule, x0, key, cond, ...)

`model_fn` closes over the parameters being trained, e.g.
`lambda p: diffusion_loss(partial(apply_fn, p), schedule, x0, key, cond)[0]` under jax.grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcf.diffusion import guidance, likelihood, process
from jaxcf.diffusion.schedules import Schedule, shift_time
from jaxcf.errors import InputError

Weighting = str | Callable[[jax.Array], jax.Array] | None


def sample_timesteps(
    schedule: Schedule,
    key: jax.Array,
    batch: int,
    *,
    distribution: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
) -> jax.Array:
    """Training timesteps, (batch,).

    Discrete schedules: int32 uniform on [0, T). Flow schedules: float32 t in (0, 1) drawn
    "uniform" or "logit_normal" (t = sigmoid(N(loc, scale^2)), Esser et al. 2024), then
    time-shifted by schedule.shift (MAISI / SD3).
    """
    if not schedule.is_flow:
        return jax.random.randint(key, (batch,), 0, schedule.num_timesteps, jnp.int32)
    if distribution == "uniform":
        t = jax.random.uniform(key, (batch,), jnp.float32)
    elif distribution == "logit_normal":
        t = jax.nn.sigmoid(loc + scale * jax.random.normal(key, (batch,), jnp.float32))
    else:
        raise InputError(f"distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
    return shift_time(t, schedule.shift)


def _x0_error_scale(schedule: Schedule, t: jax.Array) -> jax.Array:
    """c with |x0 error| = c |prediction error| at fixed x_t, per prediction type."""
    alpha, sigma = schedule.alpha_sigma(t)
    return {
        "eps": sigma / alpha,
        "x0": jnp.ones_like(alpha),
        "v": sigma,
        "flow": sigma / (alpha + sigma),
    }[schedule.prediction]


def loss_weights(schedule: Schedule, t: jax.Array, weighting: Weighting = None) -> jax.Array:
    """Per-sample loss weights (B,).

    None: 1. "min_snr" / "min_snr:<gamma>": Min-SNR-gamma (Hang et al. 2023, gamma = 5 by
    default), i.e. an x0-space weight min(SNR, gamma) expressed in the prediction's space
    (eps: min(SNR, g) / SNR; v: min(SNR, g) / (SNR + 1)). A callable maps t to weights.
    """
    if weighting is None:
        return jnp.ones(t.shape, jnp.float32)
    if callable(weighting):
        return jnp.asarray(weighting(t), jnp.float32)
    name, _, arg = weighting.partition(":")
    if name != "min_snr":
        raise InputError(
            f"weighting must be None, 'min_snr[:gamma]' or a callable, got {weighting!r}"
        )
    gamma = float(arg) if arg else 5.0
    return jnp.minimum(schedule.snr(t), gamma) * _x0_error_scale(schedule, t) ** 2


def vlb_term(
    schedule: Schedule,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    pred: jax.Array,
    var_values: jax.Array,
) -> jax.Array:
    """L_vlb per sample in bits per dimension (Nichol & Dhariwal 2021, sec. 3.1), (B,).

    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0 and the discretised decoder NLL
    at t = 0. Pass a stop-gradient prediction so that only the variance learns from it
    (L_hybrid).
    """
    t_prev = t - 1
    true_mean, _ = process.posterior_mean_variance(schedule, x0, x_t, t, t_prev)
    true_logvar = process.expand(process._posterior_log_variance_clipped(schedule, t, t_prev), x_t)
    x0_hat, _ = process.predict_x0_eps(schedule, pred, x_t, t)
    model_mean, _ = process.posterior_mean_variance(schedule, x0_hat, x_t, t, t_prev)
    model_logvar = process.model_log_variance(schedule, t, t_prev, x_t, var_values)
    axes = tuple(range(1, x_t.ndim))
    kl = likelihood.normal_kl(true_mean, true_logvar, model_mean, model_logvar)
    kl = jnp.mean(kl, axis=axes) / math.log(2.0)
    nll = -likelihood.discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    nll = jnp.mean(nll, axis=axes) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)


DISTANCES = ("mse", "l1")


def diffusion_loss(
    model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    schedule: Schedule,
    x0: jax.Array,
    key: jax.Array,
    cond: Any = None,
    *,
    null_cond: Any = None,
    cond_drop_prob: float = 0.0,
    weighting: Weighting = None,
    t_distribution: str = "uniform",
    t_loc: float = 0.0,
    t_scale: float = 1.0,
    vlb_weight: float = 1.0,
    distance: str = "mse",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Denoising loss for one batch x0 (B, ..., C).

    Draws t and eps, forms x_t, optionally replaces each sample's condition by `null_cond`
    with probability `cond_drop_prob` (classifier-free guidance training), and regresses
    the model's output onto the target of schedule.prediction (eps, x0, v = alpha eps -
    sigma x0, or flow = eps - x0) with a per-timestep weight, by mean squared ("mse") or
    mean absolute ("l1": MAISI trains its latent UNets with torch's L1Loss) error.
    learned_range schedules add vlb_weight * L_vlb on the variance channels (L_hybrid).
    Returns (scalar loss, metrics dict of scalars).
    """
    if cond_drop_prob > 0 and (cond is None or null_cond is None):
        raise InputError("cond_drop_prob > 0 needs both cond and null_cond")
    if distance not in DISTANCES:
        raise InputError(f"diffusion.loss must be one of {DISTANCES}, got {distance!r}")
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    batch = x0.shape[0]
    x0 = x0.astype(jnp.float32)
    t = sample_timesteps(
        schedule, k_t, batch, distribution=t_distribution, loc=t_loc, scale=t_scale
    )
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    x_t = process.q_sample(schedule, x0, t, noise)
    if cond_drop_prob > 0:
        keep = jax.random.uniform(k_drop, (batch,)) >= cond_drop_prob
        cond = guidance.select_cond(keep, cond, null_cond)
    pred, var_values = process.split_output(schedule, model_fn(x_t, t, cond), x_t)
    pred = pred.astype(jnp.float32)
    target = process.prediction_from(schedule, x0, noise, t)
    axes = tuple(range(1, x0.ndim))
    mse = jnp.mean((pred - target) ** 2, axis=axes)
    metrics = {"mse": jnp.mean(mse)}
    error = mse
    if distance == "l1":
        error = jnp.mean(jnp.abs(pred - target), axis=axes)
        metrics["l1"] = jnp.mean(error)
    loss = jnp.mean(loss_weights(schedule, t, weighting) * error)
    if var_values is not None:
        vlb = jnp.mean(vlb_term(schedule, x0, x_t, t, jax.lax.stop_gradient(pred), var_values))
        loss = loss + vlb_weight * vlb
        metrics["vlb"] = vlb
    metrics["loss"] = loss
    return loss, metrics
