"""Forward process, prediction conversions and the posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D


@pytest.mark.parametrize(
    "sched",
    [D.linear(), D.cosine(prediction="x0"), D.scaled_linear(prediction="v"), D.rectified_flow()],
    ids=["eps", "x0", "v", "flow"],
)
def test_prediction_conversions_roundtrip(sched):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (5, 4, 4, 2))
    eps = jax.random.normal(k2, x0.shape)
    t = (
        jnp.array([0.05, 0.3, 0.5, 0.8, 0.97])
        if sched.is_flow
        else jnp.array([0, 10, 400, 800, 999])
    )
    x_t = D.q_sample(sched, x0, t, eps)
    pred = D.prediction_from(sched, x0, eps, t)
    x0_back, eps_back = D.predict_x0_eps(sched, pred, x_t, t)
    np.testing.assert_allclose(x0_back, x0, atol=2e-3)  # eps-pred at t=999 amplifies by 1/alpha
    np.testing.assert_allclose(eps_back, eps, atol=2e-4)


def test_v_and_eps_x0_helpers_agree():
    s = D.linear()
    x0 = jnp.linspace(-1, 1, 12).reshape(3, 4, 1)
    eps = jnp.cos(x0 * 3)
    t = jnp.array([5, 500, 900])
    x_t = D.q_sample(s, x0, t, eps)
    np.testing.assert_allclose(D.x0_from_eps(s, x_t, t, eps), x0, atol=1e-4)
    np.testing.assert_allclose(D.eps_from_x0(s, x_t, t, x0), eps, atol=1e-4)
    a, sig = s.alpha_sigma(t)
    v = D.v_from_x0_eps(s, x0, eps, t)
    np.testing.assert_allclose(v, a[:, None, None] * eps - sig[:, None, None] * x0, atol=1e-6)


@pytest.mark.parametrize("t,s", [(500, 499), (500, 480), (20, -1), (999, 0)])
def test_posterior_matches_gaussian_conditioning(t, s):
    # Independent derivation: x_s = a_s x0 + sigma_s e1, x_t = sqrt(r) x_s + sqrt(1-r) e2,
    # r = abar_t / abar_s; condition the joint Gaussian of (x_s, x_t) on x_t.
    sched = D.linear()
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    abar_s = 1.0 if s < 0 else abar[s]
    r = abar[t] / abar_s
    var_s, var_t = 1 - abar_s, 1 - abar[t]
    cov = np.sqrt(r) * var_s
    x0 = np.array([0.3, -0.7])
    x_t = np.array([0.1, 0.9])
    mean_ref = np.sqrt(abar_s) * x0 + cov / var_t * (x_t - np.sqrt(abar[t]) * x0)
    var_ref = var_s - cov**2 / var_t
    tb, sb = jnp.full((2,), t), jnp.full((2,), s)
    mean, var = D.posterior_mean_variance(
        sched, jnp.asarray(x0)[:, None], jnp.asarray(x_t)[:, None], tb, sb
    )
    np.testing.assert_allclose(mean[:, 0], mean_ref, atol=1e-5)
    np.testing.assert_allclose(var[:, 0], var_ref, atol=1e-6)


def test_model_log_variance_kinds():
    x = jnp.zeros((1, 3))
    t, s = jnp.array([600]), jnp.array([599])
    small = D.model_log_variance(D.linear(), t, s, x)
    large = D.model_log_variance(D.linear(variance="fixed_large"), t, s, x)
    learned = D.linear(variance="learned_range")
    lo = D.model_log_variance(learned, t, s, x, -jnp.ones((1, 3)))
    hi = D.model_log_variance(learned, t, s, x, jnp.ones((1, 3)))
    mid = D.model_log_variance(learned, t, s, x, jnp.zeros((1, 3)))
    np.testing.assert_allclose(lo, jnp.broadcast_to(small, x.shape), rtol=1e-6)
    np.testing.assert_allclose(hi, jnp.broadcast_to(large, x.shape), rtol=1e-6)
    np.testing.assert_allclose(mid, jnp.broadcast_to(0.5 * (small + large), x.shape), rtol=1e-6)
    assert float(large[0, 0]) == pytest.approx(np.log(float(D.linear().betas[600])), rel=1e-5)
    with pytest.raises(ValueError, match="variance channels"):
        D.model_log_variance(learned, t, s, x)


def test_output_shape_errors_are_clear():
    s = D.linear(variance="learned_range")
    with pytest.raises(ValueError, match="needs 4 output channels"):
        D.ddpm_step(
            s,
            jnp.zeros((1, 3, 2)),
            jnp.zeros((1, 3, 2)),
            jnp.array([5]),
            jnp.array([4]),
            jnp.zeros((1, 3, 2)),
        )
    with pytest.raises(ValueError, match="differs from sample shape"):
        D.ddim_step(
            D.linear(),
            jnp.zeros((1, 3, 4)),
            jnp.zeros((1, 3, 2)),
            jnp.array([5]),
            jnp.array([4]),
            0.0,
        )
    with pytest.raises(ValueError, match="needs a rectified-flow schedule"):
        D.flow_sample(lambda x, t, c: x, D.linear(), jnp.zeros((1, 2)), num_steps=2)
    with pytest.raises(ValueError, match="needs a discrete"):
        D.ddim_sample(lambda x, t, c: x, D.rectified_flow(), jnp.zeros((1, 2)), num_steps=2)
