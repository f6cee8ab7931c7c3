"""The training state: one pytree that is jitted, sharded and checkpointed whole."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """step () int32; params / ema: {"model": ..., "text": ...} trained parameters and their
    exponential moving average; opt_state: optax state.

    Frozen weights (the VAE of a latent model, prompt embeddings read from a file) are NOT
    here: the task holds them (task.frozen, loaded from their own paths whenever the task
    is built) and the train step takes them as a separate argument, so checkpoints never
    carry copies of them."""

    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any
