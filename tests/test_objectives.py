"""Training objectives: targets, weighting, condition dropout, learned-variance bound."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D
from jaxcf.diffusion import likelihood


@pytest.mark.parametrize(
    "sched",
    [D.linear(), D.linear(prediction="x0"), D.cosine(prediction="v"), D.rectified_flow()],
    ids=["eps", "x0", "v", "flow"],
)
@pytest.mark.parametrize("weighting", [None, "min_snr"])
def test_loss_gradient_descent_recovers_the_data_mean(sched, weighting):
    # A denoiser family with one free parameter, the mean: the loss is minimised at the
    # true mean only if the regression target matches the prediction type.
    mu_true, std = 0.4, 0.3
    data = mu_true + std * jax.random.normal(jax.random.key(0), (256, 8, 1))

    def loss(mu, key):
        model = D.gaussian_denoiser(sched, mu, std)
        return D.diffusion_loss(model, sched, data, key, weighting=weighting)[0]

    # Every prediction type is affine in mu, so for a fixed key the loss is quadratic in mu
    # and one secant step between two gradients lands on its minimiser.
    grad = jax.jit(jax.grad(loss))
    minimisers = []
    for i in range(4):
        key = jax.random.key(i)
        g0, g1 = grad(jnp.float32(-0.5), key), grad(jnp.float32(1.5), key)
        minimisers.append(-0.5 - float(g0) * 2.0 / float(g1 - g0))
    assert float(g1) > 0 > float(g0)
    assert abs(np.mean(minimisers) - mu_true) < 0.03


def test_loss_at_the_optimum_equals_the_irreducible_error():
    # For Gaussian data and eps-prediction, E|eps - E[eps|x_t]|^2 = alpha^2 s^2 / v per pixel.
    sched = D.linear()
    s = 0.5
    model = D.gaussian_denoiser(sched, 0.0, s)
    data = s * jax.random.normal(jax.random.key(1), (4096, 16, 1))
    loss, metrics = D.diffusion_loss(model, sched, data, jax.random.key(2))
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    expected = np.mean(abar * s**2 / (abar * s**2 + 1 - abar))
    assert float(loss) == pytest.approx(expected, rel=0.05)
    assert float(metrics["mse"]) == pytest.approx(float(loss))


def test_l1_loss_at_the_optimum_is_the_gaussian_mean_absolute_error():
    # The optimum's error eps - E[eps|x_t] is Gaussian with the variance above, so its
    # mean absolute value is sqrt(2 / pi) times its standard deviation (MAISI's L1Loss).
    sched = D.linear()
    s = 0.5
    model = D.gaussian_denoiser(sched, 0.0, s)
    data = s * jax.random.normal(jax.random.key(1), (4096, 16, 1))
    loss, metrics = D.diffusion_loss(model, sched, data, jax.random.key(2), distance="l1")
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    expected = np.mean(np.sqrt(2 / np.pi * abar * s**2 / (abar * s**2 + 1 - abar)))
    assert float(loss) == pytest.approx(expected, rel=0.05)
    assert float(metrics["l1"]) == pytest.approx(float(loss)) and "mse" in metrics
    with pytest.raises(ValueError, match=r"diffusion\.loss must be one of"):
        D.diffusion_loss(model, sched, data, jax.random.key(2), distance="huber")


def test_min_snr_weights():
    sched = D.linear()
    t = jnp.array([1, 500, 999])
    snr = sched.snr(t)
    np.testing.assert_allclose(
        D.loss_weights(sched, t, "min_snr"), jnp.minimum(snr, 5.0) / snr, rtol=1e-5
    )
    v_sched = D.linear(prediction="v")
    np.testing.assert_allclose(
        D.loss_weights(v_sched, t, "min_snr:1"), jnp.minimum(snr, 1.0) / (snr + 1), rtol=1e-5
    )
    np.testing.assert_allclose(D.loss_weights(sched, t, lambda t: t * 2.0), [2, 1000, 1998])
    with pytest.raises(ValueError, match="weighting must be"):
        D.loss_weights(sched, t, "p2")


def test_condition_dropout_rate_and_null_substitution():
    seen = []

    def model(x, t, cond):
        seen.append(cond["label"])
        return jnp.zeros_like(x)

    cond = {"label": jnp.zeros((4000,), jnp.int32)}
    null = {"label": jnp.array([7])}
    D.diffusion_loss(
        model,
        D.linear(),
        jnp.zeros((4000, 2, 1)),
        jax.random.key(0),
        cond,
        null_cond=null,
        cond_drop_prob=0.35,
    )
    labels = np.asarray(seen[0])
    assert set(np.unique(labels)) == {0, 7}
    assert abs(np.mean(labels == 7) - 0.35) < 0.03
    with pytest.raises(ValueError, match="needs both cond and null_cond"):
        D.diffusion_loss(
            model, D.linear(), jnp.zeros((2, 2, 1)), jax.random.key(0), cond_drop_prob=0.1
        )


def test_flow_timestep_sampling_distributions_and_shift():
    key = jax.random.key(0)
    uni = D.sample_timesteps(D.rectified_flow(), key, 20000)
    assert 0.0 <= float(uni.min()) and float(uni.max()) <= 1.0
    assert float(jnp.mean(uni)) == pytest.approx(0.5, abs=0.01)
    ln = D.sample_timesteps(D.rectified_flow(), key, 20000, distribution="logit_normal")
    assert float(jnp.median(ln)) == pytest.approx(0.5, abs=0.02)
    assert float(jnp.std(ln)) < float(jnp.std(uni))  # mass concentrated mid-trajectory
    shifted = D.sample_timesteps(D.rectified_flow(shift=3.0), key, 20000)
    assert float(jnp.mean(shifted)) > 0.6  # pushed toward noise
    ints = D.sample_timesteps(D.linear(), key, 20000)
    assert ints.dtype == jnp.int32 and int(ints.min()) == 0 and int(ints.max()) == 999


def test_learned_variance_bound_trains_only_the_variance_channels():
    sched = D.linear(variance="learned_range")
    base = D.gaussian_denoiser(D.linear(), 0.0, 0.5)
    data = 0.5 * jax.random.normal(jax.random.key(0), (64, 4, 1))

    def loss(params):
        pred_scale, var_value = params

        def model(x, t, cond):
            pred = pred_scale * base(x, t, cond)
            return jnp.concatenate([pred, jnp.full_like(pred, var_value)], -1)

        return D.diffusion_loss(model, sched, data, jax.random.key(3), vlb_weight=1.0)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)((1.0, 0.0))
    assert "vlb" in metrics and np.isfinite(float(metrics["vlb"]))
    assert float(value) == pytest.approx(float(metrics["mse"] + metrics["vlb"]), rel=1e-5)
    # The prediction's gradient comes from the MSE alone (the bound sees a stopped copy).
    mse_only = jax.grad(
        lambda s: D.diffusion_loss(
            lambda x, t, c: jnp.concatenate([s * base(x, t, c), jnp.zeros_like(x)], -1),
            sched,
            data,
            jax.random.key(3),
        )[1]["mse"]
    )(1.0)
    assert float(grads[0]) == pytest.approx(float(mse_only), rel=1e-5)
    assert float(grads[1]) != 0.0


def test_likelihood_pieces():
    m = jnp.array([0.3, -1.0])
    assert float(jnp.max(jnp.abs(likelihood.normal_kl(m, jnp.log(2.0), m, jnp.log(2.0))))) < 1e-7
    kl = likelihood.normal_kl(0.0, 0.0, 1.0, jnp.log(4.0))  # KL(N(0,1) || N(1,4))
    assert float(kl) == pytest.approx(np.log(2.0) + (1 + 1) / 8 - 0.5, rel=1e-5)
    # The 256 bins of the discretised Gaussian carry (almost) all of the probability.
    bins = jnp.linspace(-1, 1, 256)
    logp = likelihood.discretized_gaussian_log_likelihood(bins, 0.2, jnp.log(0.3))
    assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=2e-3)


def test_loss_is_jittable_under_grad_with_partial_params():
    sched = D.linear()

    def apply_fn(params, x, t, cond):
        return params["w"] * x

    loss = jax.jit(
        jax.grad(lambda p, x, k: D.diffusion_loss(functools.partial(apply_fn, p), sched, x, k)[0])
    )
    g = loss({"w": jnp.float32(0.1)}, jnp.ones((4, 3, 1)), jax.random.key(0))
    assert np.isfinite(float(g["w"]))
