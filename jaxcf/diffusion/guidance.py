"""Guidance: functions that wrap a `model_fn(x_t, t, cond)` into a guided `model_fn`.

Samplers never know about guidance: they call whatever model_fn they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcf.diffusion import process
from jaxcf.diffusion.samplers import ModelFn
from jaxcf.diffusion.schedules import Schedule
from jaxcf.errors import InputError

EnergyFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def broadcast_null(null_cond: Any, cond: Any) -> Any:
    """The null condition broadcast leaf by leaf to the shapes of `cond`.

    null_cond has cond's tree structure; each leaf broadcasts to the matching leaf,
    e.g. {"label": jnp.array([num_classes])} against {"label": (B,) int32}.
    """
    try:
        return jax.tree.map(
            lambda n, c: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), null_cond, cond
        )
    except ValueError as err:
        raise InputError(
            f"null_cond does not match the structure or shapes of cond: {err}"
        ) from None


def select_cond(keep: jax.Array, cond: Any, null_cond: Any) -> Any:
    """Per sample, cond where keep[b] else the null condition. keep: (B,) bool."""
    null = broadcast_null(null_cond, cond)

    def pick(c, n):
        mask = keep.reshape(keep.shape + (1,) * (c.ndim - 1))
        return jnp.where(mask, c, n)

    return jax.tree.map(pick, cond, null)


def prediction_channels(schedule: Schedule, channels: int) -> int | None:
    """`guided_channels` for a model of `schedule` whose data has `channels` channels:
    learned-variance models (variance="learned_range") output 2C channels, and guidance
    extrapolates only the first C (the prediction) while the variance comes from the
    conditional half, as DiT and GLIDE do; None (every channel) otherwise."""
    return channels if schedule.variance == "learned_range" else None


def classifier_free_guidance(
    model_fn: ModelFn,
    scale: float | jax.Array,
    null_cond: Any,
    *,
    interval: tuple[float, float] | None = None,
    guided_channels: int | None = None,
) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): out = uncond + w (cond - uncond).

    The conditional and unconditional predictions come from ONE forward on the batch
    concatenated with its null-conditioned copy (twice the batch, one call), unlike
    Diff-SCM's reference, which runs two. w = 1 gives the conditional model, w = 0 the
    unconditional one.

    Args:
      model_fn: the denoiser.
      scale: guidance weight w (may be traced).
      null_cond: the null condition, broadcastable to cond leaf by leaf.
      interval: optional (t_lo, t_hi): guide only for t_lo <= t <= t_hi and use the
        conditional prediction elsewhere (Kynkäänniemi et al. 2024); t in the model's units.
      guided_channels: guide only the first k output channels and take the rest from the
        conditional half (learned-sigma models: k = C). None guides every channel;
        DiT's reference guides 3 of 4 latent channels (k = 3 reproduces that quirk).
    """

    def guided(x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        batch = x_t.shape[0]

        def both(_):
            pair = jax.tree.map(
                lambda c, n: jnp.concatenate([c, n]), cond, broadcast_null(null_cond, cond)
            )
            out = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), pair)
            cond_out, uncond_out = out[:batch], out[batch:]
            mixed = uncond_out + scale * (cond_out - uncond_out)
            if guided_channels is not None:
                k = guided_channels
                mixed = jnp.concatenate([mixed[..., :k], cond_out[..., k:]], axis=-1)
            return mixed.astype(cond_out.dtype)

        if interval is None:
            return both(None)
        lo, hi = interval
        inside = (t >= lo) & (t <= hi)

        def plain(_):
            return model_fn(x_t, t, cond)

        def mixed(_):
            return jnp.where(process.expand(inside, x_t) > 0, both(None), plain(None))

        # In a sampler every sample shares t, so a step runs either the doubled forward or
        # the plain one, never both.
        branch = jnp.where(jnp.all(inside), 1, jnp.where(jnp.any(inside), 2, 0))
        return jax.lax.switch(branch, [plain, both, mixed], None)

    return guided


def gradient_guidance(
    model_fn: ModelFn,
    schedule: Schedule,
    energy_fn: EnergyFn,
    scale: float | jax.Array,
    *,
    on: str = "x0",
) -> ModelFn:
    """Guidance by the gradient of a differentiable energy (lower energy = more wanted).

    eps <- eps + scale * sigma_t * grad_{x_t} E  (classifier guidance, Dhariwal & Nichol 2021
    eq. 14 with E = -log p(y | x_t)); x0 is re-derived from the new eps and the output is
    returned in the model's own prediction type.

    Args:
      energy_fn: E(x, t, cond) -> (B,) per-sample energies.
      on: "x_t": E evaluated on x_t itself; "x0": E evaluated on the denoiser's x0 estimate
        and differentiated through the denoiser (Chung et al. 2023, "DPS").
    """
    if on not in ("x_t", "x0"):
        raise InputError(f"on must be 'x_t' or 'x0', got {on!r}")

    def guided(x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        if on == "x_t":
            out = model_fn(x_t, t, cond)
            grad = jax.grad(lambda x: jnp.sum(energy_fn(x, t, cond)))(x_t)
        else:

            def energy_of_x0(x):
                out = model_fn(x, t, cond)
                pred, _ = process.split_output(schedule, out, x)
                x0, _ = process.predict_x0_eps(schedule, pred, x, t)
                return jnp.sum(energy_fn(x0, t, cond)), out

            grad, out = jax.grad(energy_of_x0, has_aux=True)(x_t)
        pred, var_values = process.split_output(schedule, out, x_t)
        x0, eps = process.predict_x0_eps(schedule, pred, x_t, t)
        alpha, sigma = process.coefficients(schedule, t, x_t)
        eps = eps + scale * sigma * grad
        x0 = (x_t - sigma * eps) / jnp.maximum(alpha, 1e-6)
        new = process.prediction_from(schedule, x0, eps, t).astype(out.dtype)
        return new if var_values is None else jnp.concatenate([new, var_values], axis=-1)

    return guided
