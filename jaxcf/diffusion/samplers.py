"""Samplers: pure functions, each one `jax.lax.scan` over a precomputed timestep array.

    x_0 = sampler(model_fn, schedule, x_T, *, key, num_steps, cond=None, ...)

`num_steps` (and the spacing / strength options that shape the timestep array) must be
static under jit; everything else may be traced. The noise of step i is drawn from
`jax.random.fold_in(key, i)`; hooks get `fold_in(fold_in(key, i), 1)` (before) and
`fold_in(fold_in(key, i), 2)` (after). Each update is also exposed as a single-step
function (`ddpm_step`, `ddim_step`, ...) for users who write their own loops.

Step hooks run user code around every model step without forking a sampler:
  before(x_t, t, key) -> x_t                      e.g. latent correction by an energy gradient
  after(x_next, x_t, t, t_next, key) -> x_next    e.g. mask-prompt replacement of a known region
with t, t_next (B,) arrays in the model's time units (t_next = -1: the clean image).

`x0_transform` (applied to every x0 estimate, eps re-derived from it) defaults to None:
a sampler knows no data range. Callers that do pass it, e.g. a training space's
`x0_transform` (jaxcf.training.spaces: `static_clip` / `wavelet_clip` to the data range,
as guided-diffusion's `clip_denoised=True` and diffusers' `clip_sample=True`); without it
the samples of an imperfect model can leave the data range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf.diffusion import process
from jaxcf.diffusion.schedules import Schedule, flow_times, repaint_schedule, respace
from jaxcf.errors import InputError

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
Transform = Callable[[jax.Array], jax.Array] | None


class StepHooks(NamedTuple):
    """Functions run before and after every model step (see the module docstring)."""

    before: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None
    after: Callable[..., jax.Array] | None = None


def step_noise(key: jax.Array, i: int | jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """The Gaussian noise a sampler draws at step i (exposed for parity checks)."""
    return jax.random.normal(jax.random.fold_in(key, i), shape, dtype)


def _require(schedule: Schedule, flow: bool, name: str) -> None:
    if schedule.is_flow != flow:
        wanted = "a rectified-flow" if flow else "a discrete (linear / cosine / ...)"
        raise InputError(f"{name} needs {wanted} schedule, got kind={schedule.kind!r}")


def strength_steps(num_steps: int, strength: float) -> int:
    """How many of `num_steps` respaced steps a partial trajectory of `strength` covers."""
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"strength must be in [0, 1], got {strength}")
    return round(strength * num_steps)


def _last_steps(grid: np.ndarray, num_steps: int, strength: float) -> np.ndarray:
    """The tail of a descending time grid that a partial trajectory of `strength` runs.

    The one place every sampler's `strength=` is decided: the last k = strength_steps(...)
    steps of `num_steps`. `grid` is the sampler's own descending grid, either the step
    times (num_steps entries, discrete samplers) or the step boundaries (num_steps + 1
    entries, flow); the tail keeps k entries, or k + 1 boundaries. Its first entry is the
    level the chain starts from.
    """
    return grid[num_steps - strength_steps(num_steps, strength) :]


def start_timestep(
    num_timesteps: int, num_steps: int, strength: float = 1.0, spacing: str = "leading"
) -> int:
    """The training timestep at which a partial ddpm / ddim / repaint chain starts.

    With k = round(strength * num_steps), the samplers run the last k respaced steps of
    respace(num_timesteps, num_steps, spacing), so the first timestep they evaluate is
    ts[num_steps - k]: noise the input to exactly this level (`q_sample`) before calling
    them, or `ddim_invert` to it with the same arguments. -1 (the clean image, nothing to
    noise) when k = 0. (dpm_solver_pp starts at dpm_solver_timesteps(...)[num_steps - k].)
    """
    tail = _last_steps(respace(num_timesteps, num_steps, spacing), num_steps, strength)
    return int(tail[0]) if len(tail) else -1


def flow_start_time(
    num_steps: int, strength: float = 1.0, *, shift: float = 1.0, spacing: str = "uniform"
) -> float:
    """The flow time in [0, 1] at which `flow_sample(..., strength=strength)` starts.

    times[num_steps - k] of flow_times(num_steps, shift, spacing), k = round(strength *
    num_steps); `flow_invert` with the same arguments ends there. Noise an input to it with
    x_t = (1 - t) x0 + t eps. Pass the schedule's shift (flow_sample's default).
    """
    return float(_last_steps(flow_times(num_steps, shift, spacing), num_steps, strength)[0])


def _scan(step, x_T, key, times, times_next, hooks, carry=None, extra=None):
    """Run `step(x, carry, t, t_next, noise_key, i, extra_i) -> (x_next, carry)` over times.

    times / times_next: (N,) numpy arrays (static); t, t_next are passed as (B,) arrays.
    """
    if key is None:
        key = jax.random.key(0)
    hooks = hooks or StepHooks()
    batch = x_T.shape[0]

    def body(state, inputs):
        x, carry = state
        i, t, t_next, extra_i = inputs
        k = jax.random.fold_in(key, i)
        tb = jnp.full((batch,), t)
        tnb = jnp.full((batch,), t_next)
        if hooks.before is not None:
            x = hooks.before(x, tb, jax.random.fold_in(k, 1))
        x_next, carry = step(x, carry, tb, tnb, k, i, extra_i)
        if hooks.after is not None:
            x_next = hooks.after(x_next, x, tb, tnb, jax.random.fold_in(k, 2))
        return (x_next.astype(x.dtype), carry), None

    n = len(times)
    if n == 0:
        return x_T
    xs = (jnp.arange(n), jnp.asarray(times), jnp.asarray(times_next), extra)
    (x, _), _ = jax.lax.scan(body, (x_T.astype(jnp.float32), carry), xs)
    return x


def _next(ts: np.ndarray) -> np.ndarray:
    return np.concatenate([ts[1:], [-1]]).astype(np.int32)


# --- DDPM ancestral -----------------------------------------------------------------------


def ddpm_step(
    schedule: Schedule,
    out: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    noise: jax.Array,
    *,
    x0_transform: Transform = None,
) -> tuple[jax.Array, jax.Array]:
    """Ancestral step x_t -> x_{t_prev} ~ p(x_{t_prev} | x_t) (Ho et al. 2020, Alg. 2).

    The mean is the posterior q(x_{t_prev} | x_t, x0_hat); the variance follows
    schedule.variance. No noise is added on the last step (t_prev < 0).
    Returns (x_prev, x0_hat).
    """
    pred, var_values = process.split_output(schedule, out, x_t)
    x0, _ = process.denoise(schedule, pred, x_t, t, x0_transform)
    mean, _ = process.posterior_mean_variance(schedule, x0, x_t, t, t_prev)
    log_var = process.model_log_variance(schedule, t, t_prev, x_t, var_values)
    keep = process.expand(t_prev >= 0, x_t)
    return mean + keep * jnp.exp(0.5 * log_var) * noise, x0


def ddpm_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    key: jax.Array,
    num_steps: int | None = None,
    cond: Any = None,
    spacing: str = "leading",
    strength: float = 1.0,
    x0_transform: Transform = None,
    hooks: StepHooks | None = None,
) -> jax.Array:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) over `num_steps` respaced steps
    (default: all T).

    With strength < 1 only the last k = round(strength * num_steps) respaced steps run
    (SDEdit-style partial sampling): x_T must be the input noised to the first of them,
    :func:`start_timestep` (num_timesteps, num_steps, strength, spacing).
    """
    _require(schedule, False, "ddpm_sample")
    num_steps = num_steps or schedule.num_timesteps
    ts = respace(schedule.num_timesteps, num_steps, spacing)
    ts = _last_steps(ts, num_steps, strength)

    def step(x, carry, t, t_prev, k, i, _):
        noise = jax.random.normal(k, x.shape, jnp.float32)
        x_prev, _ = ddpm_step(
            schedule, model_fn(x, t, cond), x, t, t_prev, noise, x0_transform=x0_transform
        )
        return x_prev, carry

    return _scan(step, x_T, key, ts, _next(ts), hooks)


# --- DDIM and its inversion ---------------------------------------------------------------


def ddim_step(
    schedule: Schedule,
    out: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    noise: jax.Array,
    *,
    eta: float | jax.Array = 0.0,
    x0_transform: Transform = None,
) -> tuple[jax.Array, jax.Array]:
    """DDIM step (Song et al. 2021, eq. 12) with stochasticity eta.

    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s noise,
    s = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)).
    The s * noise term is always added (diffusers-Flax and maxdiffusion drop it).
    Returns (x_prev, x0_hat).
    """
    pred, _ = process.split_output(schedule, out, x_t)
    x0, eps = process.denoise(schedule, pred, x_t, t, x0_transform)
    abar_t = process.expand(schedule.alpha_bar(t), x_t)
    abar_prev = process.expand(schedule.alpha_bar(t_prev), x_t)
    std = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - std**2, 0.0))
    return jnp.sqrt(abar_prev) * x0 + direction * eps + std * noise, x0


def ddim_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    key: jax.Array | None = None,
    num_steps: int,
    cond: Any = None,
    eta: float | jax.Array = 0.0,
    spacing: str = "leading",
    strength: float = 1.0,
    x0_transform: Transform = None,
    hooks: StepHooks | None = None,
) -> jax.Array:
    """DDIM sampling. With strength < 1 only the last round(strength * num_steps) steps
    run, starting from x_T at level :func:`start_timestep` (num_timesteps, num_steps,
    strength, spacing): the decoder matching :func:`ddim_invert` with the same num_steps,
    spacing and strength. `key` is needed when eta > 0 or hooks draw noise."""
    _require(schedule, False, "ddim_sample")
    ts = respace(schedule.num_timesteps, num_steps, spacing)
    ts = _last_steps(ts, num_steps, strength)

    # A literal eta = 0 draws no noise (random normals dominate a step's cost on CPU);
    # a traced eta always draws it.
    deterministic = isinstance(eta, int | float) and eta == 0

    def step(x, carry, t, t_prev, k, i, _):
        noise = 0.0 if deterministic else jax.random.normal(k, x.shape, jnp.float32)
        out = model_fn(x, t, cond)
        x_prev, _ = ddim_step(
            schedule, out, x, t, t_prev, noise, eta=eta, x0_transform=x0_transform
        )
        return x_prev, carry

    return _scan(step, x_T, key, ts, _next(ts), hooks)


def ddim_invert_step(
    schedule: Schedule,
    out: jax.Array,
    x: jax.Array,
    t_from: jax.Array,
    t_to: jax.Array,
    t_model: jax.Array,
    *,
    x0_transform: Transform = None,
) -> jax.Array:
    """Deterministic DDIM encoding step x_{t_from} -> x_{t_to}, t_to > t_from.

    `out` is the denoiser evaluated at time t_model on x. Its prediction is read at the
    level of x (t_from); from the clean image (t_from < 0) x0 is x itself and eps is the
    model's, read at t_model. x_to = alpha_to x0 + sigma_to eps.
    """
    pred, _ = process.split_output(schedule, out, x)
    clean = t_from < 0
    level = jnp.where(clean, t_model, t_from)
    x0, eps = process.denoise(schedule, pred, x, level, x0_transform)
    x0 = jnp.where(process.expand(clean, x) > 0, x, x0)
    alpha, sigma = process.coefficients(schedule, t_to, x)
    return alpha * x0 + sigma * eps


def ddim_invert(
    model_fn: ModelFn,
    schedule: Schedule,
    x_0: jax.Array,
    *,
    num_steps: int,
    cond: Any = None,
    strength: float = 1.0,
    spacing: str = "leading",
    model_time: str = "target",
    x0_transform: Transform = None,
    hooks: StepHooks | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """DDIM inversion: encode x_0 deterministically along the respaced trajectory.

    Runs the first k = round(strength * num_steps) steps upward (clean -> t_1 -> ... -> t_k,
    ascending respaced timesteps) and returns x at t_k, which is where
    `ddim_sample(..., strength=strength)` with the same num_steps and spacing starts.

    model_time: at which time the denoiser is evaluated on x_{t_i} when stepping to t_{i+1}:
      "target" (default): t_{i+1}, the time at which the decoder later evaluates it, as
        diffusers' pipelines call DDIMInverseScheduler. Round trips are ~1.4-2x closer than
        with "current" (tests/test_samplers_closed_form.py).
      "current": t_i, the level of its input (guided-diffusion's ddim_reverse_sample, which
        Diff-SCM's reference uses). The first step from the clean image uses t_1 in both.
    cond: the condition used while encoding (Diff-SCM encodes with the null label).
    """
    _require(schedule, False, "ddim_invert")
    if model_time not in ("current", "target"):
        raise InputError(f"model_time must be 'current' or 'target', got {model_time!r}")
    ts = respace(schedule.num_timesteps, num_steps, spacing)
    ascending = _last_steps(ts, num_steps, strength)[::-1]
    t_from = np.concatenate([[-1], ascending[:-1]]).astype(np.int32)
    if model_time == "current":
        evaluate_at = np.where(t_from < 0, ascending[:1], t_from).astype(np.int32)
    else:
        evaluate_at = ascending

    def step(x, carry, t, t_to, k, i, t_model):
        t_model = jnp.full(t.shape, t_model)
        out = model_fn(x, t_model, cond)
        return ddim_invert_step(
            schedule, out, x, t, t_to, t_model, x0_transform=x0_transform
        ), carry

    return _scan(step, x_0, key, t_from, ascending, hooks, extra=jnp.asarray(evaluate_at))


# --- DPM-Solver++ (2M) --------------------------------------------------------------------


def dpm_solver_timesteps(num_timesteps: int, num_steps: int, spacing: str = "linspace"):
    """diffusers' DPMSolverMultistepScheduler timesteps (it drops the final t=0 of an
    (n+1)-point linspace / leading grid and finishes at sigma = 0 instead)."""
    if spacing in ("linspace", "leading"):
        return respace(num_timesteps, num_steps + 1, spacing)[:-1]
    return respace(num_timesteps, num_steps, spacing)


def _log_snr_half(alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """lambda = log(alpha / sigma), finite even at sigma = 0."""
    return jnp.log(alpha) - jnp.log(jnp.maximum(sigma, 1e-20))


def dpm_solver_pp_step(
    schedule: Schedule,
    x0: jax.Array,
    x0_prev: jax.Array,
    x: jax.Array,
    t_prev_step: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    second_order: jax.Array,
) -> jax.Array:
    """One DPM-Solver++ multistep update (Lu et al. 2022b, Alg. 2, midpoint form).

    x0 / x0_prev: data predictions at t and at the previous step t_prev_step.
    x_next = (sigma_n / sigma) x - alpha_n (e^{-h} - 1) (x0 + (1 / 2r) (x0 - x0_prev)),
    h = lambda_n - lambda, r = (lambda - lambda_prev) / h; the bracket reduces to x0 for
    the first-order (DDIM-equivalent) update.
    """
    alpha, sigma = process.coefficients(schedule, t, x)
    alpha_n, sigma_n = process.coefficients(schedule, t_next, x)
    # e^{-h} = (sigma_n alpha) / (alpha_n sigma): exact, and 0 at the final sigma_n = 0.
    exp_neg_h = sigma_n * alpha / (alpha_n * sigma)
    a_p, s_p = process.coefficients(schedule, t_prev_step, x)
    lam, lam_n, lam_p = (
        _log_snr_half(*pair) for pair in ((alpha, sigma), (alpha_n, sigma_n), (a_p, s_p))
    )
    second = process.expand(second_order, x) > 0
    r = jnp.where(second, (lam - lam_p) / (lam_n - lam), 1.0)
    correction = jnp.where(second, 0.5 / r, 0.0)
    return (sigma_n / sigma) * x - alpha_n * (exp_neg_h - 1.0) * (x0 + correction * (x0 - x0_prev))


def dpm_solver_pp(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    key: jax.Array | None = None,
    num_steps: int,
    cond: Any = None,
    order: int = 2,
    spacing: str = "linspace",
    strength: float = 1.0,
    x0_transform: Transform = None,
    hooks: StepHooks | None = None,
) -> jax.Array:
    """DPM-Solver++ 2M (Lu et al. 2022b), the multistep second-order data-prediction solver.

    First-order on the first step and on the last (which lands on sigma = 0), second-order
    in between, as diffusers' DPMSolverMultistepScheduler with `final_sigmas_type="zero"`.
    Pass `x0_transform=partial(dynamic_threshold, quantile=0.995)` for Imagen thresholding.
    With strength < 1 only the last k = round(strength * num_steps) steps run (the first of
    them first-order), from x_T at level dpm_solver_timesteps(T, num_steps, spacing)[num_steps
    - k] (its grid differs from respace's for "linspace" / "leading").
    """
    _require(schedule, False, "dpm_solver_pp")
    if order not in (1, 2):
        raise InputError(f"order must be 1 or 2, got {order}")
    ts = dpm_solver_timesteps(schedule.num_timesteps, num_steps, spacing)
    ts = _last_steps(ts, num_steps, strength)
    prev_step = np.concatenate([ts[:1], ts[:-1]]).astype(np.int32)
    t_next = _next(ts)
    second = (np.arange(len(ts)) > 0) & (t_next >= 0) & (order == 2)

    def step(x, x0_prev, t, t_n, k, i, extra):
        t_p, use_second = extra
        pred, _ = process.split_output(schedule, model_fn(x, t, cond), x)
        x0, _ = process.denoise(schedule, pred, x, t, x0_transform)
        t_p = jnp.full(t.shape, t_p)
        x_next = dpm_solver_pp_step(
            schedule, x0, x0_prev, x, t_p, t, t_n, jnp.full(t.shape, use_second)
        )
        return x_next, x0

    extra = (jnp.asarray(prev_step), jnp.asarray(second))
    return _scan(
        step, x_T, key, ts, t_next, hooks, carry=jnp.zeros_like(x_T, jnp.float32), extra=extra
    )


# --- rectified flow -----------------------------------------------------------------------


def flow_velocity(
    schedule: Schedule, out: jax.Array, x: jax.Array, t: jax.Array, x0_transform: Transform = None
) -> jax.Array:
    """Velocity dx/dt = eps - x0 implied by any prediction type at (x, t)."""
    pred, _ = process.split_output(schedule, out, x)
    if schedule.prediction == "flow" and x0_transform is None:
        return pred.astype(jnp.float32)
    x0, eps = process.denoise(schedule, pred, x, t, x0_transform)
    return eps - x0


def _check_solver(solver: str) -> None:
    if solver not in ("euler", "heun"):
        raise InputError(f"solver must be 'euler' or 'heun', got {solver!r}")


def flow_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    key: jax.Array | None = None,
    num_steps: int,
    cond: Any = None,
    solver: str = "euler",
    shift: float | None = None,
    spacing: str = "uniform",
    strength: float = 1.0,
    x0_transform: Transform = None,
    hooks: StepHooks | None = None,
) -> jax.Array:
    """Integrate the rectified-flow ODE from t = 1 (noise) to t = 0 (data).

    solver: "euler" (MAISI, diffusers FlowMatchEuler) or "heun" (second order; the last
    step to t = 0 stays Euler, as in Karras et al. 2022, Alg. 1). The time grid is
    :func:`flow_times` with `shift` (default: the schedule's) and `spacing`.
    With strength < 1 only the last k = round(strength * num_steps) steps of that grid run,
    from x_T at time :func:`flow_start_time` (num_steps, strength, shift=..., spacing=...):
    the decoder matching :func:`flow_invert` with the same arguments.
    """
    _require(schedule, True, "flow_sample")
    _check_solver(solver)
    shift = schedule.shift if shift is None else shift
    times = _last_steps(flow_times(num_steps, shift, spacing), num_steps, strength)

    def velocity(x, t):
        return flow_velocity(schedule, model_fn(x, t, cond), x, t, x0_transform)

    def step(x, carry, t, t_n, k, i, _):
        dt = process.expand(t_n - t, x)
        u = velocity(x, t)
        x_euler = x + dt * u
        if solver == "euler":
            return x_euler, carry
        x_next = jax.lax.cond(
            t_n[0] > 0,
            lambda: x + dt * 0.5 * (u + velocity(x_euler, t_n)),
            lambda: x_euler,
        )
        return x_next, carry

    return _scan(step, x_T, key, times[:-1], times[1:], hooks)


def flow_invert(
    model_fn: ModelFn,
    schedule: Schedule,
    x_0: jax.Array,
    *,
    num_steps: int,
    cond: Any = None,
    solver: str = "euler",
    shift: float | None = None,
    spacing: str = "uniform",
    strength: float = 1.0,
    x0_transform: Transform = None,
    key: jax.Array | None = None,
    hooks: StepHooks | None = None,
) -> jax.Array:
    """Encode x_0: integrate the rectified-flow ODE upward from t = 0 (data).

    The twin of :func:`ddim_invert`: walks flow_sample's grid (same num_steps, shift,
    spacing) backwards over its first k = round(strength * num_steps) steps, from 0 up to
    :func:`flow_start_time` (1 at strength = 1), where `flow_sample(..., strength=strength)`
    starts. Time-reversed solvers, each the mirror of flow_sample's step over the same
    interval [t_i, t_{i+1}] (the decoder reads the velocity at its upper end t_{i+1} first):
      "euler": x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_{i+1}), the velocity read at the
        upper end, where the Euler decoder reads it (ddim_invert's model_time="target"):
        only d v / d x, not d v / d t, is left in the round-trip error, and the model is
        never evaluated at t = 0.
      "heun": Heun's method upward (v at t_i, then at t_{i+1} on the Euler guess), except
        the step that STARTS at t = 0, which is the "euler" step above: the mirror of
        flow_sample keeping its step that LANDS on t = 0 Euler (both read the velocity only
        at the step's t > 0 end). Round trips are first order in the step for "euler",
        second order for "heun" (tests/test_samplers_api.py).
    hooks: as for the samplers, with t < t_next (the time of x, the time stepped to).
    """
    _require(schedule, True, "flow_invert")
    _check_solver(solver)
    shift = schedule.shift if shift is None else shift
    ascending = _last_steps(flow_times(num_steps, shift, spacing), num_steps, strength)[::-1]

    def velocity(x, t):
        return flow_velocity(schedule, model_fn(x, t, cond), x, t, x0_transform)

    def step(x, carry, t, t_n, k, i, _):
        dt = process.expand(t_n - t, x)

        def euler():  # read at the upper end t_n > 0
            return x + dt * velocity(x, t_n)

        if solver == "euler":
            return euler(), carry

        def heun():
            u = velocity(x, t)
            return x + dt * 0.5 * (u + velocity(x + dt * u, t_n))

        return jax.lax.cond(t[0] > 0, heun, euler), carry

    return _scan(step, x_0, key, ascending[:-1], ascending[1:], hooks)


# --- RePaint resampling ---------------------------------------------------------------------


def renoise_step(
    schedule: Schedule, x: jax.Array, t: jax.Array, t_up: jax.Array, noise: jax.Array
) -> jax.Array:
    """Forward jump q(x_{t_up} | x_t) = N(sqrt(abar_up / abar_t) x, (1 - abar_up / abar_t) I)."""
    ratio = process.expand(schedule.alpha_bar(t_up) / schedule.alpha_bar(t), x)
    return jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * noise


def repaint_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    key: jax.Array,
    num_steps: int = 250,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    cond: Any = None,
    spacing: str = "leading",
    strength: float = 1.0,
    x0_transform: Transform = None,
    hooks: StepHooks | None = None,
) -> jax.Array:
    """Ancestral sampling along a RePaint resampling trajectory (Lugmayr et al. 2022).

    The trajectory (:func:`repaint_schedule`) is an integer array, so the whole loop,
    jumps included, is one scan; each step is either a DDPM step down or a re-noising jump
    up. Hooks run on the DDPM steps only; with an `after` hook that pastes the known region
    (forward-noised, or drawn from the posterior as in Shen et al. 2024, Alg. 1) this is
    RePaint inpainting.
    With strength < 1 the trajectory is repaint_schedule(k, jump_length, jump_n_sample)
    over only the last k = round(strength * num_steps) respaced timesteps (jumps never go
    above the first of them), and x_T must be at level :func:`start_timestep`
    (num_timesteps, num_steps, strength, spacing).
    """
    _require(schedule, False, "repaint_sample")
    ts = _last_steps(respace(schedule.num_timesteps, num_steps, spacing), num_steps, strength)
    levels = np.concatenate([[-1], ts[::-1]]).astype(np.int32)
    trajectory = repaint_schedule(len(ts), jump_length, jump_n_sample)
    times, times_next = levels[trajectory[:-1] + 1], levels[trajectory[1:] + 1]
    down = trajectory[1:] < trajectory[:-1]
    hooks = hooks or StepHooks()

    def step(x, carry, t, t_n, k, i, is_down):
        noise = jax.random.normal(k, x.shape, jnp.float32)

        def denoise_branch():
            x_in = x if hooks.before is None else hooks.before(x, t, jax.random.fold_in(k, 1))
            out = model_fn(x_in, t, cond)
            x_next, _ = ddpm_step(schedule, out, x_in, t, t_n, noise, x0_transform=x0_transform)
            if hooks.after is not None:
                x_next = hooks.after(x_next, x_in, t, t_n, jax.random.fold_in(k, 2))
            return x_next.astype(jnp.float32)

        def renoise_branch():
            return renoise_step(schedule, x, t, t_n, noise)

        return jax.lax.cond(is_down, denoise_branch, renoise_branch), carry

    return _scan(step, x_T, key, times, times_next, None, extra=jnp.asarray(down))
