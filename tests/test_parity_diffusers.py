"""Step-by-step parity of jaxcf's samplers and schedules with diffusers' schedulers.

Both sides run the same closed-form mixture denoiser (jaxcf.diffusion.mixture_denoiser, a
jax function; the torch side calls it on numpy copies), start from the same x_T and use the
same per-step noise (jaxcf's `step_noise(key, i, shape)`), and every intermediate sample is
compared. To isolate sampler arithmetic from schedule arithmetic, the jaxcf schedule is built
from the diffusers scheduler's own float32 `alphas_cumprod`; the schedules themselves are
compared separately at the end.

Tolerances. One update from the same input is compared tightly: jaxcf's step function is
fed diffusers' previous sample (and, for multistep solvers, diffusers' stored history) and
must land within STEP_TOL = 1e-5 of diffusers' next sample. Whole chains are compared to a
bound that grows with their length (:func:`chain_tol`): each update may round differently
in the two libraries (float32, different operation order), and those differences add up.

The analytic model acts per sample element (its only cross-pixel coupling is a per-sample
sum), and diffusers' schedulers are elementwise apart from `_threshold_sample`, which
flattens all non-batch dims like jaxcf's `dynamic_threshold`, so the same (B, H, W, C)
arrays are fed to both libraries.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

import jaxcf.diffusion as jd  # noqa: E402

pytestmark = [
    pytest.mark.ref,
    # diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array on a torch tensor.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

STEP_TOL = 1e-5  # max |difference| of one update from the same input (float32 both sides)
ROUNDING_ULPS = 8  # per-update rounding difference allowed in chain_tol, in ulps of x_max
T = 1000
SHAPE = (4, 8, 8, 3)
# Per-channel component means (broadcast over H, W): with std 0.5 the x0 estimates reach
# |x0| ~ 2.5, so clipping and dynamic thresholding (max value 1.5) actually bite.
MEANS = np.array([[1.5, -1.5, 0.5], [-1.5, 1.5, -0.5]], np.float32)
STD = 0.5
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# diffusers' thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.5.
THRESHOLD = functools.partial(jd.dynamic_threshold, quantile=0.995, max_value=1.5)


# --- helpers ------------------------------------------------------------------------------


def _x_T(seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(SHAPE, np.float32))


def _to_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _to_jax(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(x.detach().cpu().numpy().astype(np.float32))


def _batch(t, dtype=jnp.int32) -> jax.Array:
    """A scalar time as the (B,) array jaxcf's model_fn and step functions take."""
    return jnp.full((SHAPE[0],), t, dtype)


def _schedule(ref, prediction: str = "eps", variance: str = "fixed_small") -> jd.Schedule:
    return jd.from_alphas_cumprod(
        ref.alphas_cumprod.numpy(), prediction=prediction, variance=variance
    )


# Jitted functions take the schedule as an argument, so tests sharing a configuration
# share their compilations.


@jax.jit
def _apply_model(schedule: jd.Schedule, x: jax.Array, t: jax.Array, cond=None) -> jax.Array:
    return jd.mixture_denoiser(schedule, MEANS, STD)(x, t, cond)


def _model(schedule: jd.Schedule):
    """The analytic denoiser as a jaxcf model_fn(x_t, t, cond)."""
    return functools.partial(_apply_model, schedule)


_ddpm_step = jax.jit(jd.ddpm_step, static_argnames="x0_transform")
_ddim_step = jax.jit(jd.ddim_step, static_argnames="x0_transform")
_ddim_invert_step = jax.jit(jd.ddim_invert_step)


@functools.partial(jax.jit, static_argnames="x0_transform")
def _dpm_step(schedule, x, x0_prev, t, t_p, t_n, second, x0_transform=None):
    """jaxcf's dpm_solver_pp scan body: data prediction at t, then the multistep update."""
    x0, _ = jd.denoise(schedule, _apply_model(schedule, x, t), x, t, x0_transform)
    return jd.dpm_solver_pp_step(schedule, x0, x0_prev, x, t_p, t, t_n, second), x0


@jax.jit
def _flow_step(schedule, x, t, t_next):
    u = jd.flow_velocity(schedule, _apply_model(schedule, x, t), x, t)
    return x + (t_next - t)[:, None, None, None] * u


def _ref_model(model, x: torch.Tensor, t, dtype=jnp.int32) -> torch.Tensor:
    """The same jax model, called on a torch sample (t: the time jaxcf's model expects)."""
    return _to_torch(model(_to_jax(x), _batch(t, dtype)))


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _assert_steps_close(step, x_start, theirs) -> None:
    """Per-step parity from the same input: step(i, x) is jaxcf's update i applied to x,
    where x is diffusers' sample before update i (x_start for i = 0); every result must be
    within STEP_TOL of diffusers' sample after update i."""
    assert len(theirs) > 0
    inputs = [jnp.asarray(x_start, jnp.float32), *(_to_jax(x) for x in theirs[:-1])]
    diffs = [
        _max_diff(step(i, x), b.numpy())
        for i, (x, b) in enumerate(zip(inputs, theirs, strict=True))
    ]
    worst = int(np.argmax(diffs))
    assert diffs[worst] <= STEP_TOL, (
        f"step {worst}/{len(diffs)} from the same input: max |diff| {diffs[worst]:.3g} > {STEP_TOL}"
    )


def chain_tol(theirs) -> float:
    """The bound on |ours - theirs| after a whole chain of n = len(theirs) updates.

    Let e_i be the difference after update i and d_i what update i alone adds (the two
    libraries' float32 rounding of the same arithmetic). Then e_i <= L_i e_{i-1} + d_i, with
    L_i the Lipschitz constant of the update. The reverse updates here do not expand
    differences (they contract N(0, I) toward data of std 0.5, L_i <= 1), so
    e_n <= sum_i d_i. Each update is a handful of float32 multiply-adds, each rounding to
    within half an ulp; in the worst case the two libraries' results differ by
    ROUNDING_ULPS ulps of the largest value on the chain, x_max:
        e_n <= n * ROUNDING_ULPS * eps_float32 * x_max.
    (The per-step check above bounds each d_i by STEP_TOL on the same input; this is the
    accumulation. Measured here: 1.0e-5 after the 1000-step DDPM chain, against a bound of
    ~3e-3.)"""
    x_max = max(float(np.max(np.abs(x.numpy()))) for x in theirs)
    return len(theirs) * ROUNDING_ULPS * float(np.finfo(np.float32).eps) * max(x_max, 1.0)


def _assert_final_close(ours, theirs) -> None:
    """The fused (one lax.scan) sampler against diffusers' last sample, within chain_tol."""
    tol = chain_tol(theirs)
    diff = _max_diff(ours, theirs[-1].numpy())
    assert diff <= tol, f"after {len(theirs)} steps: max |diff| {diff:.3g} > chain_tol {tol:.3g}"


def _next_times(ts: np.ndarray) -> np.ndarray:
    return np.concatenate([ts[1:], [-1]]).astype(np.int32)


# --- DDPM ---------------------------------------------------------------------------------


def _ddpm_parity(monkeypatch, key, *, prediction, variance, num_steps, spacing, clip=False):
    ref = DDPMScheduler(
        num_train_timesteps=T,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        variance_type=variance,
        clip_sample=clip,
        timestep_spacing=spacing,
    )
    ref.set_timesteps(num_steps)
    schedule = _schedule(ref, prediction, variance)
    model = _model(schedule)
    transform = jd.static_clip if clip else None
    ts = jd.respace(T, num_steps, spacing)
    np.testing.assert_array_equal(ref.timesteps.numpy(), ts)
    noises = [jd.step_noise(key, i, SHAPE) for i in range(len(ts))]

    t_prevs = _next_times(ts)

    def ours(i, x):
        t, t_prev = _batch(ts[i]), _batch(t_prevs[i])
        x_prev, _ = _ddpm_step(
            schedule, model(x, t), x, t, t_prev, noises[i], x0_transform=transform
        )
        return x_prev

    # DDPMScheduler.step draws its noise internally: hand it jaxcf's noise of the same step.
    current, drawn = {}, []

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == SHAPE
        i = current["i"]
        drawn.append(i)
        # diffusers adds noise whenever t > 0, so also on the last step of a chain that ends
        # above t = 0 (trailing spacing); there it hands back zeros: jaxcf, like DDPM's
        # Algorithm 2 and guided-diffusion, adds none on the step to the clean image.
        return _to_torch(noises[i] if i < len(ts) - 1 else jnp.zeros(SHAPE)).to(dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", randn_tensor)
    sample, theirs = _to_torch(_x_T()), []
    for i, t in enumerate(ref.timesteps):
        current["i"] = i
        sample = ref.step(_ref_model(model, sample, int(t)), t, sample).prev_sample
        theirs.append(sample)
    # diffusers draws noise whenever t > 0 (so on the last step too when it starts at t > 0).
    assert drawn == [i for i, t in enumerate(ts) if t > 0]

    _assert_steps_close(ours, _x_T(), theirs)
    final = jd.ddpm_sample(
        model,
        schedule,
        _x_T(),
        key=key,
        num_steps=num_steps,
        spacing=spacing,
        x0_transform=transform,
    )
    _assert_final_close(final, theirs)
    return final


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddpm_matches_diffusers(monkeypatch, key, prediction, variance):
    _ddpm_parity(
        monkeypatch, key, prediction=prediction, variance=variance, num_steps=50, spacing="leading"
    )


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize(("spacing", "num_steps"), [("linspace", 50), ("trailing", 30)])
def test_ddpm_spacing_matches_diffusers(monkeypatch, key, spacing, num_steps, variance):
    _ddpm_parity(
        monkeypatch,
        key,
        prediction="eps",
        variance=variance,
        num_steps=num_steps,
        spacing=spacing,
    )


def test_ddpm_full_chain_matches_diffusers(monkeypatch, key):
    _ddpm_parity(
        monkeypatch, key, prediction="eps", variance="fixed_small", num_steps=T, spacing="leading"
    )


def test_ddpm_clip_sample_matches_static_clip(monkeypatch, key):
    clipped = _ddpm_parity(
        monkeypatch,
        key,
        prediction="eps",
        variance="fixed_small",
        num_steps=50,
        spacing="leading",
        clip=True,
    )
    ref = DDPMScheduler(num_train_timesteps=T)
    schedule = _schedule(ref)
    unclipped = jd.ddpm_sample(_model(schedule), schedule, _x_T(), key=key, num_steps=50)
    # The clip must have changed the samples, or this test checks nothing about clipping.
    assert float(jnp.max(jnp.abs(clipped - unclipped))) > 0.1


# --- DDIM ---------------------------------------------------------------------------------


def _ddim_parity(key, *, prediction="eps", eta=0.0, spacing="leading", num_steps=50, clip=False):
    ref = DDIMScheduler(
        num_train_timesteps=T,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        clip_sample=clip,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
    )
    ref.set_timesteps(num_steps)
    schedule = _schedule(ref, prediction)
    model = _model(schedule)
    transform = jd.static_clip if clip else None
    ts = jd.respace(T, num_steps, spacing)
    np.testing.assert_array_equal(ref.timesteps.numpy(), ts)
    noises = [jd.step_noise(key, i, SHAPE) for i in range(len(ts))]

    t_prevs = _next_times(ts)

    def ours(i, x):
        t, t_prev = _batch(ts[i]), _batch(t_prevs[i])
        x_prev, _ = _ddim_step(
            schedule, model(x, t), x, t, t_prev, noises[i], eta=eta, x0_transform=transform
        )
        return x_prev

    sample, theirs = _to_torch(_x_T()), []
    for i, t in enumerate(ref.timesteps):
        out = _ref_model(model, sample, int(t))
        sample = ref.step(
            out,
            t,
            sample,
            eta=eta,
            use_clipped_model_output=clip,
            variance_noise=_to_torch(noises[i]),
        ).prev_sample
        theirs.append(sample)

    _assert_steps_close(ours, _x_T(), theirs)
    final = jd.ddim_sample(
        model,
        schedule,
        _x_T(),
        key=key,
        num_steps=num_steps,
        eta=eta,
        spacing=spacing,
        x0_transform=transform,
    )
    _assert_final_close(final, theirs)
    return final


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(key, spacing, eta):
    # 50 steps divide T: DDIMScheduler.step steps from t to t - T // n, which is not the next
    # entry of its own trailing grid when n does not divide T (n = 30: 966 -> 933, while the
    # grid, and jaxcf, go 966 -> 932); jaxcf always steps to the next grid entry.
    _ddim_parity(key, eta=eta, spacing=spacing)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_ddim_prediction_types_match_diffusers(key, prediction):
    _ddim_parity(key, prediction=prediction, eta=0.5)


def test_ddim_clip_matches_use_clipped_model_output(key):
    # jaxcf re-derives eps from the clipped x0, i.e. diffusers' use_clipped_model_output=True.
    clipped = _ddim_parity(key, clip=True)
    schedule = _schedule(DDIMScheduler(num_train_timesteps=T))
    unclipped = jd.ddim_sample(_model(schedule), schedule, _x_T(), num_steps=50)
    assert float(jnp.max(jnp.abs(clipped - unclipped))) > 0.1


# --- DDIM inversion -----------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_inversion_matches_diffusers(spacing):
    num_steps = 50
    ref = DDIMInverseScheduler(
        num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing
    )
    ref.set_timesteps(num_steps)
    schedule = _schedule(ref)
    model = _model(schedule)
    ascending = jd.respace(T, num_steps, spacing)[::-1]
    np.testing.assert_array_equal(ref.timesteps.numpy(), ascending)
    x_0 = jnp.asarray(MEANS[0]) + STD * _x_T(seed=1)  # a draw from one mixture component

    # model_time="target": the model is evaluated at the level being stepped to, which is
    # how diffusers' pipelines call DDIMInverseScheduler (model(x, t); step(out, t, x)).
    t_from = np.concatenate([[-1], ascending[:-1]])

    def ours(i, x):
        t, t_to = _batch(t_from[i]), _batch(ascending[i])
        return _ddim_invert_step(schedule, model(x, t_to), x, t, t_to, t_to)

    sample, theirs = _to_torch(x_0), []
    for t in ref.timesteps:
        sample = ref.step(_ref_model(model, sample, int(t)), t, sample).prev_sample
        theirs.append(sample)

    _assert_steps_close(ours, x_0, theirs)
    final = jd.ddim_invert(
        model, schedule, x_0, num_steps=num_steps, spacing=spacing, model_time="target"
    )
    _assert_final_close(final, theirs)


# --- DPM-Solver++ 2M ----------------------------------------------------------------------


def _dpm_parity(*, num_steps, thresholding, prediction="eps", spacing="linspace"):
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        thresholding=thresholding,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.5,
        timestep_spacing=spacing,
    )
    ref.set_timesteps(num_steps)
    schedule = _schedule(ref, prediction)
    model = _model(schedule)
    transform = THRESHOLD if thresholding else None
    ts = jd.dpm_solver_timesteps(T, num_steps, spacing)
    np.testing.assert_array_equal(ref.timesteps.numpy(), ts)

    # The bookkeeping of jaxcf's dpm_solver_pp driver: the previous step's time (the first
    # step points at itself), and second order except on the first and the final step.
    t_prev_step = np.concatenate([ts[:1], ts[:-1]])
    t_next = _next_times(ts)
    second = (np.arange(len(ts)) > 0) & (t_next >= 0)
    sample, theirs, their_x0 = _to_torch(_x_T()), [], []
    for t in ref.timesteps:
        sample = ref.step(_ref_model(model, sample, int(t)), t, sample).prev_sample
        theirs.append(sample)
        their_x0.append(ref.model_outputs[-1].clone())  # the (thresholded) data prediction

    def ours(i, x):
        # The multistep history from the same place: diffusers' previous data prediction.
        x0_prev = _to_jax(their_x0[i - 1]) if i else jnp.zeros(SHAPE, jnp.float32)
        times = _batch(ts[i]), _batch(t_prev_step[i]), _batch(t_next[i])
        x_next, _ = _dpm_step(
            schedule, x, x0_prev, *times, _batch(second[i], jnp.bool_), x0_transform=transform
        )
        return x_next

    _assert_steps_close(ours, _x_T(), theirs)
    final = jd.dpm_solver_pp(
        model, schedule, _x_T(), num_steps=num_steps, spacing=spacing, x0_transform=transform
    )
    _assert_final_close(final, theirs)
    return final


@pytest.mark.parametrize("num_steps", [20, 25])
def test_dpm_solver_pp_matches_diffusers(num_steps):
    _dpm_parity(num_steps=num_steps, thresholding=False)


@pytest.mark.parametrize("num_steps", [20, 25])
def test_dpm_solver_pp_thresholding_matches_diffusers(num_steps):
    thresholded = _dpm_parity(num_steps=num_steps, thresholding=True)
    schedule = _schedule(DPMSolverMultistepScheduler(num_train_timesteps=T))
    plain = jd.dpm_solver_pp(_model(schedule), schedule, _x_T(), num_steps=num_steps)
    # The threshold must have changed the samples, or this test checks nothing about it.
    assert float(jnp.max(jnp.abs(thresholded - plain))) > 0.1


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_dpm_solver_pp_prediction_types_match_diffusers(prediction):
    _dpm_parity(num_steps=20, thresholding=False, prediction=prediction)


# --- rectified flow (FlowMatchEulerDiscreteScheduler) ---------------------------------------


@pytest.mark.parametrize("num_steps", [20, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_diffusers(num_steps, shift):
    schedule = jd.rectified_flow(T, shift=shift)
    model = _model(schedule)
    times = jd.flow_times(num_steps, shift, spacing="diffusers")
    if shift == 1.0:
        ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
        ref.set_timesteps(num_steps)
    else:
        # Given num_inference_steps and shift != 1, diffusers shifts twice (once in __init__
        # for sigma_min, again in set_timesteps); passing the unshifted grid shifts once.
        ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
        ref.set_timesteps(sigmas=np.linspace(1.0, 1.0 / T, num_steps))
    np.testing.assert_allclose(ref.sigmas.numpy(), times, rtol=0, atol=1e-6)

    # The velocity model is evaluated at sigma (= jaxcf's t) on both sides; diffusers'
    # pipelines would pass timestep = 1000 sigma to a network instead.
    pairs = list(itertools.pairwise(times))

    def ours(i, x):
        t, t_next = pairs[i]
        return _flow_step(schedule, x, _batch(t, jnp.float32), _batch(t_next, jnp.float32))

    sample, theirs = _to_torch(_x_T()), []
    for i, t in enumerate(ref.timesteps):
        out = _ref_model(model, sample, float(ref.sigmas[i]), jnp.float32)
        sample = ref.step(out, t, sample).prev_sample
        theirs.append(sample)

    _assert_steps_close(ours, _x_T(), theirs)
    final = jd.flow_sample(
        model, schedule, _x_T(), num_steps=num_steps, shift=shift, spacing="diffusers"
    )
    _assert_final_close(final, theirs)


# --- schedules and timestep grids ---------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "config"),
    [
        (jd.linear, {"beta_schedule": "linear"}),
        (
            jd.scaled_linear,
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        ),
        (jd.cosine, {"beta_schedule": "squaredcos_cap_v2"}),
    ],
    ids=["linear", "scaled_linear", "cosine"],
)
def test_schedule_matches_diffusers(make, config):
    ref = DDPMScheduler(num_train_timesteps=T, **config)
    ours = make(T)
    np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=1e-6, atol=0)
    # Tolerance 1e-6 absolute (abar <= 1): jaxcf takes the cumulative product in float64 and
    # rounds once, diffusers multiplies 1000 float32 factors, each rounding adding up to 2^-24
    # (6e-8) relative error. Those errors mostly cancel (observed: <= 5e-7, i.e. a few float32
    # ulps), but not to the 1 ulp an exact comparison would need.
    np.testing.assert_allclose(
        np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6
    )


NUM_STEPS = [1, 3, 7, 10, 20, 25, 50, 99, 250, 333, 1000]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_respace_matches_set_timesteps(spacing):
    for n in NUM_STEPS:
        ref = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        ref.set_timesteps(n)
        np.testing.assert_array_equal(jd.respace(T, n, spacing), ref.timesteps.numpy(), str(n))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_dpm_solver_timesteps_match_diffusers(spacing):
    for n in NUM_STEPS[:-1]:  # 1000 + 1 points do not fit a 1000-step leading/linspace grid
        ref = DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        ref.set_timesteps(n)
        ours = jd.dpm_solver_timesteps(T, n, spacing)
        np.testing.assert_array_equal(ours, ref.timesteps.numpy(), str(n))
