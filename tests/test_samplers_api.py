"""The symmetric sampler API: `strength=` on every sampler, start levels, flow_invert.

strength < 1 must run exactly the last k = round(strength * num_steps) steps of the
sampler's own grid (checked against Python loops over the public step functions and by
recording the times the model sees); flow_invert followed by flow_sample must round-trip
with the convergence order of its solver (checked against the exact flow map of Gaussian
data, whose velocity is linear in x).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D

MU, S = 0.3, 0.5
SHAPE = (4, 8, 8, 1)


def _x(seed=0, shape=SHAPE):
    return jax.random.normal(jax.random.key(seed), shape)


def _recording(model, seen):
    """model_fn that appends the (scalar) time of every evaluation to `seen`."""

    def model_fn(x, t, cond):
        jax.debug.callback(lambda tt: seen.append(float(tt[0])), t)
        return model(x, t, cond)

    return model_fn


# --- (a) strength = 1 is the default call, bit for bit ---------------------------------------


def test_strength_one_equals_default_call():
    x, key = _x(), jax.random.key(1)
    sched = D.linear(variance="learned_range")
    model = D.gaussian_denoiser(sched, MU, S)
    for sample, kw in (
        (D.ddpm_sample, dict(num_steps=20)),
        (D.ddim_sample, dict(num_steps=20, eta=0.5)),
        (D.dpm_solver_pp, dict(num_steps=10)),
        (D.repaint_sample, dict(num_steps=20, jump_length=5, jump_n_sample=3)),
    ):
        default = sample(model, sched, x, key=key, **kw)
        np.testing.assert_array_equal(
            sample(model, sched, x, key=key, strength=1.0, **kw), default, sample.__name__
        )
    flow = D.rectified_flow()
    fmodel = D.gaussian_denoiser(flow, MU, S)
    for fn in (D.flow_sample, D.flow_invert):
        default = fn(fmodel, flow, x, num_steps=10, solver="heun")
        np.testing.assert_array_equal(
            fn(fmodel, flow, x, num_steps=10, solver="heun", strength=1.0), default
        )


# --- (b) strength < 1 runs exactly the last k steps -------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_start_timestep_is_the_first_of_the_last_k(spacing):
    ts = D.respace(1000, 50, spacing)
    for strength, k in ((1.0, 50), (0.6, 30), (0.31, 16), (0.001, 0)):
        expected = int(ts[50 - k]) if k else -1
        assert D.start_timestep(1000, 50, strength, spacing) == expected
    assert D.start_timestep(1000, 50, 1.0, spacing) == ts[0]


def test_ddpm_partial_equals_loop_over_the_last_k_steps():
    # The model's output depends on t (the Gaussian denoiser's posterior), so running any
    # other timesteps, or drawing step i's noise from another index, changes the result.
    sched = D.cosine(variance="fixed_large")
    model = D.gaussian_denoiser(sched, MU, S)
    x, key = _x(2), jax.random.key(12)
    num_steps, strength = 25, 0.6
    ts = D.respace(1000, num_steps, "trailing")[num_steps - 15 :]
    assert ts[0] == D.start_timestep(1000, num_steps, strength, "trailing")
    y = x
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tb, tpb = jnp.full((4,), t), jnp.full((4,), t_prev)
        y, _ = D.ddpm_step(sched, model(y, tb, None), y, tb, tpb, D.step_noise(key, i, x.shape))
    seen = []
    scanned = D.ddpm_sample(
        _recording(model, seen),
        sched,
        x,
        key=key,
        num_steps=num_steps,
        spacing="trailing",
        strength=strength,
    )
    jax.effects_barrier()
    assert seen == [float(t) for t in ts]
    np.testing.assert_allclose(scanned, y, atol=1e-6)


def test_repaint_partial_equals_loop_over_the_last_k_levels():
    sched = D.linear(variance="learned_range")
    model = D.gaussian_denoiser(sched, MU, S)
    x, key = _x(3), jax.random.key(5)
    num_steps, strength, jump, n_sample = 20, 0.5, 3, 2
    levels = D.respace(1000, num_steps)[num_steps - 10 :][::-1]  # ascending, last 10 levels
    levels = np.concatenate([[-1], levels])
    trajectory = D.repaint_schedule(10, jump, n_sample)
    assert trajectory.max() == 9  # jumps stay within the last k levels
    y, denoised_at = x, []
    for i, (j, j_next) in enumerate(itertools.pairwise(trajectory)):
        tb, tnb = jnp.full((4,), levels[j + 1]), jnp.full((4,), levels[j_next + 1])
        noise = D.step_noise(key, i, x.shape)
        if j_next < j:
            denoised_at.append(float(levels[j + 1]))
            y, _ = D.ddpm_step(sched, model(y, tb, None), y, tb, tnb, noise)
        else:
            y = D.renoise_step(sched, y, tb, tnb, noise)
    seen = []
    scanned = D.repaint_sample(
        _recording(model, seen),
        sched,
        x,
        key=key,
        num_steps=num_steps,
        jump_length=jump,
        jump_n_sample=n_sample,
        strength=strength,
    )
    jax.effects_barrier()
    assert seen == denoised_at
    assert seen[0] == D.start_timestep(1000, num_steps, strength) == 450
    np.testing.assert_allclose(scanned, y, atol=1e-6)


def test_partial_ddpm_and_repaint_equal_a_cut_schedule():
    # With leading spacing, the last k of n respaced steps are the full grid of a schedule
    # cut to k * stride timesteps (the workaround callers used before strength=).
    sched = D.linear(variance="learned_range")
    model = D.gaussian_denoiser(sched, MU, S)
    x, key = _x(4), jax.random.key(6)
    cut = sched.replace(num_timesteps=8 * 50)
    np.testing.assert_array_equal(
        D.ddpm_sample(model, sched, x, key=key, num_steps=20, strength=0.4),
        D.ddpm_sample(model, cut, x, key=key, num_steps=8),
    )
    np.testing.assert_array_equal(
        D.repaint_sample(model, sched, x, key=key, num_steps=20, jump_length=3, strength=0.4),
        D.repaint_sample(model, cut, x, key=key, num_steps=8, jump_length=3),
    )


def test_partial_flow_sample_runs_the_last_k_intervals():
    flow = D.rectified_flow(shift=3.0)
    model = D.gaussian_denoiser(flow, MU, S)
    times = D.flow_times(10, 3.0)
    start = D.flow_start_time(10, 0.3, shift=3.0)
    assert start == float(times[7])
    seen = []
    D.flow_sample(_recording(model, seen), flow, _x(), num_steps=10, strength=0.3)
    jax.effects_barrier()
    np.testing.assert_allclose(seen, times[7:-1], rtol=1e-6)  # Euler: one call per step


def test_partial_dpm_solver_pp_runs_the_last_k_steps():
    sched = D.linear()
    model = D.gaussian_denoiser(sched, MU, S)
    seen = []
    D.dpm_solver_pp(_recording(model, seen), sched, _x(), num_steps=10, strength=0.5)
    jax.effects_barrier()
    assert seen == [float(t) for t in D.dpm_solver_timesteps(1000, 10)[5:]]


def test_flow_invert_times_mirror_flow_sample():
    # Heun: every step reads t_i then t_{i+1}, except the one starting at t = 0, which reads
    # only t_1 (the model never sees t = 0, as flow_sample's last step never does).
    flow = D.rectified_flow()
    model = D.gaussian_denoiser(flow, MU, S)
    up = D.flow_times(4)[::-1]  # 0, .25, .5, .75, 1
    for solver, expected in (
        ("euler", [0.25, 0.5, 0.75, 1.0]),
        ("heun", [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]),
    ):
        seen = []
        D.flow_invert(_recording(model, seen), flow, _x(), num_steps=4, solver=solver)
        jax.effects_barrier()
        assert seen == expected, solver
        seen = []
        D.flow_sample(_recording(model, seen), flow, _x(), num_steps=4, solver=solver)
        jax.effects_barrier()
        assert 0.0 not in seen and seen[0] == 1.0, solver
    assert up[0] == 0.0


# --- (c) flow_invert -> flow_sample round trips -----------------------------------------------


def _exact_flow_map(x0, t):
    """The probability-flow map of N(MU, S^2 I) data to time t: the marginal there is
    N((1 - t) MU, (1 - t)^2 S^2 + t^2), and the (linear) ODE moves x0 along its z-score."""
    return (1 - t) * MU + np.sqrt((1 - t) ** 2 * S**2 + t**2) * (x0 - MU) / S


@pytest.mark.parametrize(
    "solver,prediction,ratio,bound",
    # Measured max errors at 20 / 40 / 80 steps (the same for both predictions), latent
    # vs the exact map | round trip: Euler 0.085 / 0.042 / 0.021 | 0.087 / 0.044 / 0.022
    # (halving: first order); Heun 8.9e-3 / 1.9e-3 / 4.2e-4 | 3.3e-3 / 9.3e-4 / 2.4e-4
    # (quartering or better: second order). `ratio` is the least error(n) / error(2n)
    # allowed; `bound` caps the 80-step round trip with ~25% room. "x0" prediction would
    # give NaN if the model were ever evaluated at t = 0 (eps = (x - x0) / t).
    [("euler", "flow", 1.8, 0.028), ("heun", "flow", 3.3, 3e-4), ("heun", "x0", 3.3, 3e-4)],
)
def test_flow_invert_round_trip_converges_with_solver_order(solver, prediction, ratio, bound):
    flow = D.rectified_flow(prediction=prediction)
    model = D.gaussian_denoiser(flow, MU, S)
    x0 = MU + S * _x(7)
    latent_errors, errors = [], []
    for n in (20, 40, 80):
        z = D.flow_invert(model, flow, x0, num_steps=n, solver=solver)
        latent_errors.append(float(jnp.max(jnp.abs(z - _exact_flow_map(x0, 1.0)))))
        back = D.flow_sample(model, flow, z, num_steps=n, solver=solver)
        errors.append(float(jnp.max(jnp.abs(back - x0))))
    assert np.isfinite(errors).all()
    for errs in (latent_errors, errors):
        assert errs[0] / errs[1] > ratio and errs[1] / errs[2] > ratio, errs
    assert errors[2] < bound, errors
    if solver == "euler":  # and not faster than first order
        assert errors[0] / errors[1] < 2.5 and errors[1] / errors[2] < 2.5, errors


@pytest.mark.parametrize(
    "solver,latent_bound,bound", [("euler", 0.12, 0.04), ("heun", 0.018, 5e-3)]
)
def test_partial_flow_invert_ends_where_partial_flow_sample_starts(solver, latent_bound, bound):
    # strength 0.6 of 50 steps with shift 3: the latent must sit at flow_start_time (0.818),
    # i.e. equal the exact flow map there, where the partial flow_sample starts. Measured
    # max errors, latent | round trip: Euler 0.096 | 0.031, Heun 0.014 | 0.0041 (the shift
    # leaves few, long steps near t = 0). Ending one grid point off (t = 0.806 or 0.830)
    # moves the exact latent by 0.04, so the recorded last time is checked too.
    flow = D.rectified_flow(shift=3.0)
    model = D.gaussian_denoiser(flow, MU, S)
    x0 = MU + S * _x(8)
    t = D.flow_start_time(50, 0.6, shift=3.0)
    assert t == pytest.approx(float(D.shift_time(0.6, 3.0)), abs=1e-6)
    seen = []
    z = D.flow_invert(_recording(model, seen), flow, x0, num_steps=50, solver=solver, strength=0.6)
    jax.effects_barrier()
    assert seen[-1] == t and min(seen) > 0
    assert float(jnp.max(jnp.abs(z - _exact_flow_map(x0, t)))) < latent_bound
    back = D.flow_sample(model, flow, z, num_steps=50, solver=solver, strength=0.6)
    assert float(jnp.max(jnp.abs(back - x0))) < bound


@pytest.mark.parametrize(
    "solver,steps,bound", [("euler", (80, 160), 0.025), ("heun", (40, 80), 3e-3)]
)
def test_flow_invert_round_trip_on_a_two_mode_mixture(solver, steps, bound):
    # Non-linear velocity (the component posterior switches). 8 pixels, as the DDIM
    # inversion test: in many more dimensions the mode switch is so sharp that both solvers
    # need hundreds of steps before they stop flipping modes. Measured max errors: Euler
    # 0.034 / 0.016 at 80 / 160 steps, Heun 0.011 / 0.0014 at 40 / 80.
    flow = D.rectified_flow()
    model = D.mixture_denoiser(flow, jnp.array([-1.0, 1.0]).reshape(2, 1, 1), 0.2)
    x0 = jnp.array([-1.1, -0.8, 0.9, 1.25])[:, None, None] * jnp.ones((4, 8, 1))
    x0 = x0 + 0.1 * jax.random.normal(jax.random.key(0), x0.shape)
    errors = []
    for n in steps:
        z = D.flow_invert(model, flow, x0, num_steps=n, solver=solver)
        assert float(jnp.std(z)) > 0.5  # genuinely encoded to a noisy latent
        back = D.flow_sample(model, flow, z, num_steps=n, solver=solver)
        errors.append(float(jnp.max(jnp.abs(back - x0))))
    assert errors[1] < bound and errors[1] < errors[0] / 1.8, errors


# --- (d) validation --------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_strength_outside_unit_interval_is_rejected(strength):
    sched, flow = D.linear(), D.rectified_flow()
    model, fmodel = D.gaussian_denoiser(sched, MU, S), D.gaussian_denoiser(flow, MU, S)
    x, key = _x(), jax.random.key(0)
    calls = [
        lambda: D.ddpm_sample(model, sched, x, key=key, num_steps=10, strength=strength),
        lambda: D.ddim_sample(model, sched, x, num_steps=10, strength=strength),
        lambda: D.ddim_invert(model, sched, x, num_steps=10, strength=strength),
        lambda: D.dpm_solver_pp(model, sched, x, num_steps=10, strength=strength),
        lambda: D.repaint_sample(model, sched, x, key=key, num_steps=10, strength=strength),
        lambda: D.flow_sample(fmodel, flow, x, num_steps=10, strength=strength),
        lambda: D.flow_invert(fmodel, flow, x, num_steps=10, strength=strength),
        lambda: D.start_timestep(1000, 10, strength),
        lambda: D.flow_start_time(10, strength),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
            call()


def test_strength_zero_runs_no_step():
    sched, flow = D.linear(), D.rectified_flow()
    model, fmodel = D.gaussian_denoiser(sched, MU, S), D.gaussian_denoiser(flow, MU, S)
    x, key = _x(), jax.random.key(0)
    np.testing.assert_array_equal(
        D.ddpm_sample(model, sched, x, key=key, num_steps=10, strength=0.0), x
    )
    np.testing.assert_array_equal(
        D.repaint_sample(model, sched, x, key=key, num_steps=10, strength=0.0), x
    )
    np.testing.assert_array_equal(D.flow_invert(fmodel, flow, x, num_steps=10, strength=0.0), x)
    assert D.start_timestep(1000, 10, 0.0) == -1
    assert D.flow_start_time(10, 0.0) == 0.0


def test_flow_invert_rejects_bad_solver_and_discrete_schedule():
    flow = D.rectified_flow()
    with pytest.raises(ValueError, match="solver must be"):
        D.flow_invert(D.gaussian_denoiser(flow, MU, S), flow, _x(), num_steps=4, solver="rk4")
    sched = D.linear()
    with pytest.raises(ValueError, match="flow_invert needs a rectified-flow schedule"):
        D.flow_invert(D.gaussian_denoiser(sched, MU, S), sched, _x(), num_steps=4)
