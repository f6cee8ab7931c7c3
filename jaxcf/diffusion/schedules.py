"""Noise schedules and timestep respacing.

A :class:`Schedule` is a pytree of float32 arrays plus static fields. Discrete schedules
(linear, scaled-linear, cosine) follow x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with
integer t in [0, T); the rectified-flow schedule follows x_t = (1 - t) x0 + t eps with
continuous t in [0, 1]. Everything downstream only asks a schedule for (alpha_t, sigma_t),
so samplers and conversions are written once for both families.

Arrays are computed in float64 and stored as float32 (as guided-diffusion does), so they
agree with diffusers' float32 cumulative products to ~1e-6 (see tests/test_schedules.py).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxcf.errors import InputError

PREDICTIONS = ("eps", "x0", "v", "flow")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")
SPACINGS = ("leading", "trailing", "linspace")


@struct.dataclass
class Schedule:
    """Noise schedule.

    Attributes:
      betas: (T,) float32 per-step betas (discrete schedules; None for flow).
      alphas_cumprod: (T,) float32 abar_t (discrete schedules; None for flow).
      num_timesteps: T, the number of training timesteps (static).
      prediction: what the denoiser predicts: "eps", "x0", "v" (discrete) or "flow"
        (velocity dx_t/dt = eps - x0, flow schedules) (static).
      variance: reverse-process variance for ancestral sampling: "fixed_small" (posterior
        variance), "fixed_large" (beta_t) or "learned_range" (model outputs 2C channels,
        Nichol & Dhariwal 2021 eq. 15) (static).
      kind: "discrete" or "flow" (static).
      shift: rectified-flow time shift s, t -> s t / (1 + (s - 1) t) (static, flow only).
    """

    betas: jax.Array | None
    alphas_cumprod: jax.Array | None
    num_timesteps: int = struct.field(pytree_node=False, default=1000)
    prediction: str = struct.field(pytree_node=False, default="eps")
    variance: str = struct.field(pytree_node=False, default="fixed_small")
    kind: str = struct.field(pytree_node=False, default="discrete")
    shift: float = struct.field(pytree_node=False, default=1.0)

    @property
    def is_flow(self) -> bool:
        return self.kind == "flow"

    def alpha_bar(self, t: jax.Array) -> jax.Array:
        """abar_t for integer t (any shape); t < 0 means the clean data (abar = 1)."""
        if self.is_flow:
            raise InputError("alpha_bar is defined for discrete schedules only")
        t = jnp.asarray(t)
        abar = self.alphas_cumprod[jnp.clip(t, 0, self.num_timesteps - 1)]
        return jnp.where(t < 0, jnp.float32(1.0), abar)

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Signal and noise scales (alpha_t, sigma_t) with x_t = alpha_t x0 + sigma_t eps.

        Args:
          t: timesteps of any shape: int (discrete; t < 0 is clean data) or float in [0, 1]
            (flow).
        Returns:
          (alpha, sigma), float32 arrays shaped like t.
        """
        if self.is_flow:
            t = jnp.asarray(t, jnp.float32)
            return 1.0 - t, t
        abar = self.alpha_bar(t)
        return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

    def snr(self, t: jax.Array) -> jax.Array:
        """Signal-to-noise ratio alpha_t^2 / sigma_t^2."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha**2 / sigma**2


def _check(prediction: str, variance: str, kind: str) -> None:
    if prediction not in PREDICTIONS:
        raise InputError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if variance not in VARIANCES:
        raise InputError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if kind == "flow" and prediction == "v":
        raise InputError(
            "v-prediction assumes alpha^2 + sigma^2 = 1; use 'flow' with flow schedules"
        )
    if kind == "discrete" and prediction == "flow":
        raise InputError("prediction 'flow' needs a rectified-flow schedule (rectified_flow())")


def from_betas(
    betas: np.ndarray, *, prediction: str = "eps", variance: str = "fixed_small"
) -> Schedule:
    """Discrete schedule from a (T,) array of betas (cumulative product taken in float64)."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
        raise InputError("betas must be a 1-D array with values in (0, 1)")
    _check(prediction, variance, "discrete")
    abar = np.cumprod(1.0 - betas)
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(abar, jnp.float32),
        num_timesteps=len(betas),
        prediction=prediction,
        variance=variance,
    )


def from_alphas_cumprod(
    alphas_cumprod: np.ndarray, *, prediction: str = "eps", variance: str = "fixed_small"
) -> Schedule:
    """Discrete schedule from a (T,) array of abar_t, e.g. taken from another library."""
    abar = np.asarray(alphas_cumprod, np.float64)
    prev = np.concatenate([[1.0], abar[:-1]])
    sched = from_betas(1.0 - abar / prev, prediction=prediction, variance=variance)
    return sched.replace(alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32))


def linear(
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    prediction: str = "eps",
    variance: str = "fixed_small",
) -> Schedule:
    """DDPM linear betas (Ho et al. 2020): beta_start -> beta_end over T steps."""
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    return from_betas(betas, prediction=prediction, variance=variance)


def scaled_linear(
    num_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    *,
    prediction: str = "eps",
    variance: str = "fixed_small",
) -> Schedule:
    """Stable Diffusion's schedule: betas linear in sqrt(beta), then squared."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
    return from_betas(betas, prediction=prediction, variance=variance)


def cosine(
    num_timesteps: int = 1000,
    *,
    offset: float = 0.008,
    max_beta: float = 0.999,
    prediction: str = "eps",
    variance: str = "fixed_small",
) -> Schedule:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at max_beta."""

    def abar(u: np.ndarray) -> np.ndarray:
        return np.cos((u + offset) / (1.0 + offset) * math.pi / 2) ** 2

    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    betas = np.minimum(1.0 - abar(u[1:]) / abar(u[:-1]), max_beta)
    return from_betas(betas, prediction=prediction, variance=variance)


def rectified_flow(
    num_timesteps: int = 1000, *, shift: float = 1.0, prediction: str = "flow"
) -> Schedule:
    """Rectified flow x_t = (1 - t) x0 + t eps, t in [0, 1], velocity target eps - x0.

    `num_timesteps` is kept for models that embed t * T (MAISI uses 1000). `shift` is the
    time shift applied to sampled training times and to sampling grids; use
    :func:`resolution_shift` for MAISI's resolution-dependent value. MAISI's networks
    predict x0 - eps (the negative of this convention): negate their output.
    """
    _check(prediction, "fixed_small", "flow")
    if shift <= 0:
        raise InputError(f"shift must be > 0, got {shift}")
    return Schedule(
        betas=None,
        alphas_cumprod=None,
        num_timesteps=num_timesteps,
        prediction=prediction,
        kind="flow",
        shift=float(shift),
    )


def shift_time(t: jax.Array | np.ndarray, shift: float):
    """Time shift t -> s t / (1 + (s - 1) t) (SD3 / MAISI); maps [0, 1] onto itself."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(
    spatial_shape: tuple[int, ...], base_shape: tuple[int, ...] = (32, 32, 32), scale: float = 1.0
) -> float:
    """MAISI's resolution-dependent shift: (numel / base_numel) ** (1 / ndim) * scale."""
    ratio = math.prod(spatial_shape) / math.prod(base_shape)
    return float(ratio ** (1.0 / len(spatial_shape)) * scale)


# --- timestep respacing -------------------------------------------------------------------


def space_timesteps(num_timesteps: int, section_counts: str) -> np.ndarray:
    """guided-diffusion section strings -> sorted (ascending) int timesteps.

    "ddimN" picks the integer stride whose range(0, T, stride) has exactly N elements;
    "a,b,c" splits [0, T) into equal sections and takes a, b, c evenly spaced steps
    (rounded) from each.
    """
    text = section_counts.strip()
    if text.startswith("ddim"):
        wanted = int(text[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return np.arange(0, num_timesteps, stride, dtype=np.int64)
        raise InputError(f"cannot make exactly {wanted} DDIM steps from {num_timesteps}")
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise InputError(
            f"spacing {section_counts!r} is not one of {SPACINGS}, 'ddimN' "
            "or a list like '10,10,20'"
        )
    counts = [int(c) for c in text.split(",")]
    base, extra = divmod(num_timesteps, len(counts))
    start, picked = 0, []
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise InputError(f"section {i} has {size} steps, cannot take {count}")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        picked += [start + round(k * stride) for k in range(count)]
        start += size
    return np.array(sorted(set(picked)), dtype=np.int64)


def respace(
    num_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """Descending int32 timesteps for sampling with `num_steps` model evaluations.

    spacing: diffusers' "leading" (diffusers' default), "trailing" or "linspace" (Lin et al.
    2023, Table 2), or a guided-diffusion section string ("ddim100", "10,10,20"), whose
    step count must equal `num_steps`.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise InputError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if spacing == "leading":
        ratio = num_timesteps // num_steps
        steps = np.arange(num_steps, dtype=np.int64)[::-1] * ratio + steps_offset
    elif spacing == "trailing":
        ratio = num_timesteps / num_steps
        steps = np.round(np.arange(num_timesteps, 0, -ratio)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, num_timesteps - 1, num_steps).round()[::-1].astype(np.int64)
    else:
        steps = space_timesteps(num_timesteps, spacing)[::-1]
        if len(steps) != num_steps:
            raise InputError(
                f"spacing {spacing!r} gives {len(steps)} steps but num_steps={num_steps}"
            )
    if steps.max() >= num_timesteps or steps.min() < 0:
        raise InputError(f"respaced timesteps fall outside [0, {num_timesteps})")
    return steps.astype(np.int32)


def flow_times(num_steps: int, shift: float = 1.0, spacing: str = "uniform") -> np.ndarray:
    """(num_steps + 1,) descending float32 times from 1 to 0 for flow sampling.

    "uniform": linspace(1, 0, n + 1), then shifted (MAISI's RFlowScheduler).
    "diffusers": linspace(1, 1/T, n) shifted, then 0 appended, with T = 1000
    (diffusers' FlowMatchEulerDiscreteScheduler given the same shift).
    """
    if spacing == "uniform":
        grid = np.linspace(1.0, 0.0, num_steps + 1)
        return shift_time(grid, shift).astype(np.float32)
    if spacing == "diffusers":
        grid = shift_time(np.linspace(1.0, 1.0 / 1000, num_steps), shift)
        return np.concatenate([grid, [0.0]]).astype(np.float32)
    raise InputError(f"flow spacing must be 'uniform' or 'diffusers', got {spacing!r}")


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> np.ndarray:
    """RePaint resampling trajectory (Lugmayr et al. 2022, Alg. 1) over respaced step indices.

    Returns an int32 array of step indices in [-1, num_steps - 1]: starting at num_steps - 1
    (pure noise), a decrease by one is a denoising step, an increase by one a re-noising
    step q(x_{j+1} | x_j); -1 is the clean image. Every `jump_length`-th index below
    num_steps - jump_length is revisited `jump_n_sample - 1` extra times by jumping back up
    `jump_length` steps. RePaint's defaults are 250 steps, jump length 10, 10 resamplings.
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise InputError("jump_length and jump_n_sample must be >= 1")
    jumps_left = dict.fromkeys(range(0, num_steps - jump_length, jump_length), jump_n_sample - 1)
    trajectory, j = [], num_steps
    while j > 0:
        j -= 1
        trajectory.append(j)
        if jumps_left.get(j, 0) > 0:
            jumps_left[j] -= 1
            trajectory.extend(range(j + 1, j + jump_length + 1))
            j += jump_length
    trajectory.append(-1)
    return np.asarray(trajectory, np.int32)
