"""Optimizer and EMA from the `optim` config group."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcf.errors import InputError


def learning_rate(optim: Any, num_steps: int) -> optax.Schedule:
    """Linear warmup to optim.lr over optim.warmup_steps, then "constant" or "cosine" decay
    to optim.lr * optim.min_lr_ratio at num_steps."""
    warmup = int(optim.warmup_steps)
    if optim.schedule == "constant":
        after = optax.constant_schedule(optim.lr)
    elif optim.schedule == "cosine":
        decay_steps = max(num_steps - warmup, 1)
        after = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.min_lr_ratio)
    else:
        raise InputError(f"optim.schedule must be 'constant' or 'cosine', got {optim.schedule!r}")
    if warmup <= 0:
        return after
    ramp = optax.linear_schedule(0.0, optim.lr, warmup)
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(optim: Any, num_steps: int) -> optax.GradientTransformation:
    """Gradient-norm clipping (optim.grad_clip; 0 disables) then AdamW with decoupled
    weight decay (Loshchilov & Hutter 2019), as the papers' training recipes."""
    if optim.name != "adamw":
        raise InputError(f"optim.name must be 'adamw', got {optim.name!r}")
    parts = []
    if optim.grad_clip and optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate(optim, num_steps),
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
    )
    return optax.chain(*parts)


def ema_decay(optim: Any, step: jax.Array) -> jax.Array:
    """optim.ema_decay, ramped as min(decay, (1 + step) / (10 + step)) when ema_warmup, so
    the average is not dominated by the initial weights in short runs."""
    decay = jnp.float32(optim.ema_decay)
    if optim.ema_warmup:
        step = step.astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return decay


def update_ema(ema: Any, params: Any, decay: jax.Array) -> Any:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
