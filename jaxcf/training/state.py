"""The training state: one pytree that is jitted, sharded and checkpointed whole."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """step () int32; params / ema: {"model": ..., "text": ...} trained parameters and their
    exponential moving average; opt_state: optax state; frozen: parameters used but not
    trained (e.g. the VAE of a latent diffusion model), {} when none."""

    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any
    frozen: Any
