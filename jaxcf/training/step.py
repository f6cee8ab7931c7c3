"""The pure training step: one jitted update of the whole TrainState (its buffers donated),
with the task's frozen weights as a separate, undonated argument."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcf.training.optim import ema_decay, update_ema
from jaxcf.training.state import TrainState


def init_state(task: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0: the task's parameters, their EMA copy and fresh optimizer state."""
    params = task.params
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def make_train_step(
    task: Any, optimizer: optax.GradientTransformation, optim: Any, seed: int
) -> Callable[[TrainState, Any, dict], tuple[TrainState, dict]]:
    """train_step(state, frozen, batch) -> (state, metrics). frozen: the task's frozen
    weights (task.frozen; {} when none), a jit argument of their own: never donated (they
    are reused every step) and never closed over (a VAE would be folded into the compiled
    step as constants). The step's randomness is fold_in(key(seed), step), so a resumed run
    draws exactly what an uninterrupted one would."""
    base = jax.random.key(seed)

    def train_step(state: TrainState, frozen: Any, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base, state.step)
        grad_fn = jax.value_and_grad(task.loss, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, frozen, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = update_ema(state.ema, params, ema_decay(optim, state.step))
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        new = state.replace(step=state.step + 1, params=params, ema=ema, opt_state=opt_state)
        return new, metrics

    return train_step
