"""Classifier-free guidance in one batched forward, and gradient guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D


def _toy_model(calls):
    # Output depends on the label so that cond and uncond differ: x * (1 + label).
    def model(x, t, cond):
        calls.append(x.shape[0])
        scale = 1.0 + cond["label"].astype(jnp.float32)
        return x * scale.reshape(-1, *(1,) * (x.ndim - 1))

    return model


def test_cfg_uses_one_forward_on_the_doubled_batch():
    calls = []
    guided = D.classifier_free_guidance(_toy_model(calls), 3.0, {"label": jnp.array([0])})
    x = jnp.ones((4, 2, 2, 3))
    out = guided(x, jnp.full((4,), 10), {"label": jnp.full((4,), 1)})
    assert calls == [8]
    # uncond = x * 1, cond = x * 2 -> 1 + 3 * (2 - 1) = 4.
    np.testing.assert_allclose(out, 4.0)


@pytest.mark.parametrize("w,expected", [(0.0, 1.0), (1.0, 2.0)])
def test_cfg_limits(w, expected):
    guided = D.classifier_free_guidance(_toy_model([]), w, {"label": jnp.array([0])})
    out = guided(
        jnp.ones((2, 3, 1)), jnp.zeros((2,), jnp.int32), {"label": jnp.ones((2,), jnp.int32)}
    )
    np.testing.assert_allclose(out, expected)


def test_cfg_guided_channels_keeps_the_rest_conditional():
    guided = D.classifier_free_guidance(
        _toy_model([]), 3.0, {"label": jnp.array([0])}, guided_channels=2
    )
    out = guided(
        jnp.ones((1, 2, 4)), jnp.zeros((1,), jnp.int32), {"label": jnp.ones((1,), jnp.int32)}
    )
    np.testing.assert_allclose(out[..., :2], 4.0)
    np.testing.assert_allclose(out[..., 2:], 2.0)


def test_cfg_interval_guides_only_inside():
    guided = D.classifier_free_guidance(
        _toy_model([]), 3.0, {"label": jnp.array([0])}, interval=(100, 500)
    )
    x = jnp.ones((3, 2, 1))
    cond = {"label": jnp.ones((3,), jnp.int32)}
    out = jax.jit(guided)(x, jnp.array([50, 300, 800]), cond)  # mixed batch
    np.testing.assert_allclose(out[:, 0, 0], [2.0, 4.0, 2.0])
    out = jax.jit(guided)(x, jnp.full((3,), 800), cond)  # all outside: plain conditional
    np.testing.assert_allclose(out, 2.0)


def test_null_condition_must_match_structure():
    with pytest.raises(ValueError, match="null_cond does not match"):
        D.broadcast_null({"label": jnp.zeros((2,))}, {"label": jnp.zeros((3,))})


def test_select_cond_per_sample():
    cond = {"label": jnp.array([1, 2, 3]), "context": jnp.ones((3, 2, 4))}
    null = {"label": jnp.array([9]), "context": jnp.zeros((2, 4))}
    out = D.select_cond(jnp.array([True, False, True]), cond, null)
    np.testing.assert_array_equal(out["label"], [1, 9, 3])
    np.testing.assert_array_equal(out["context"].sum(axis=(1, 2)), [8, 0, 8])


def test_gradient_guidance_x_t_is_the_classifier_guidance_formula():
    sched = D.linear()
    model = D.gaussian_denoiser(sched, 0.0, 1.0)
    target = 2.0
    energy = lambda x, t, c: 0.5 * jnp.sum((x - target) ** 2, axis=(1, 2))
    guided = D.gradient_guidance(model, sched, energy, 0.7, on="x_t")
    x = jax.random.normal(jax.random.key(0), (2, 3, 1))
    t = jnp.array([300, 700])
    sigma = jnp.sqrt(1 - sched.alphas_cumprod[t])[:, None, None]
    np.testing.assert_allclose(
        guided(x, t, None), model(x, t, None) + 0.7 * sigma * (x - target), atol=1e-5
    )


def test_gradient_guidance_keeps_learned_variance_channels():
    sched = D.linear(variance="learned_range")
    model = D.gaussian_denoiser(sched, 0.0, 0.5)
    guided = D.gradient_guidance(model, sched, lambda x, t, c: jnp.sum(x, axis=(1, 2)), 1.0)
    x = jnp.ones((1, 3, 2))
    t = jnp.array([400])
    out, ref = guided(x, t, None), model(x, t, None)
    assert out.shape == (1, 3, 4)
    np.testing.assert_allclose(out[..., 2:], ref[..., 2:])
    assert float(jnp.max(jnp.abs(out[..., :2] - ref[..., :2]))) > 0.1


def test_learned_variance_channels_are_not_extrapolated():
    # A learned-sigma model: 2C channels, the prediction then the variance values. With
    # v = 0.2 (cond) / 0.0 (null) and w = 3, guiding every channel gives v = 0.6 (outside
    # the learned range's meaning); DiT / GLIDE keep the conditional variance: 0.2.
    def model(x, t, cond):
        v = jnp.where(cond["label"] == 0, 0.2, 0.0)[:, None, None, None]
        return jnp.concatenate([x, jnp.broadcast_to(v, x.shape)], axis=-1)

    x, t = jnp.ones((2, 4, 4, 3)), jnp.full((2,), 500)
    cond, null = {"label": jnp.zeros((2,), jnp.int32)}, {"label": jnp.array([2])}
    learned = D.linear(variance="learned_range")
    assert D.prediction_channels(learned, 3) == 3
    assert D.prediction_channels(D.linear(), 3) is None
    channels = D.prediction_channels(learned, 3)
    out = D.classifier_free_guidance(model, 3.0, null, guided_channels=channels)(x, t, cond)
    np.testing.assert_allclose(out[..., 3:], 0.2, atol=1e-7)
    every = D.classifier_free_guidance(model, 3.0, null)(x, t, cond)
    np.testing.assert_allclose(every[..., 3:], 0.6, atol=1e-6)


def test_promptable_dit_path_keeps_the_conditional_variance(monkeypatch):
    # The promptable method samples a learned_range model (its latent DiT) with DDPM, whose
    # step variance comes from the v channels. The eps halves of cond and null agree here,
    # so a guided run that keeps the conditional v (DiT / GLIDE) equals the unguided
    # conditional one; extrapolating v (0.6 instead of 0.2) changes every stochastic step.
    from jaxcf.counterfactual import promptable

    def model(x, t, cond):
        v = jnp.where(cond["label"] == 0, 0.2, 0.0)[:, None, None, None]
        return jnp.concatenate([0.1 * x, jnp.broadcast_to(v, x.shape)], axis=-1)

    sched = D.linear(50, variance="learned_range")
    x0 = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
    region = jnp.ones((2, 8, 8, 1))
    common = dict(
        key=jax.random.key(1),
        cond={"label": jnp.zeros((2,), jnp.int32)},
        null_cond={"label": jnp.array([2])},
        num_steps=10,
    )
    plain = promptable.promptable_sample(model, sched, x0, region, guidance_scale=None, **common)
    guided = promptable.promptable_sample(model, sched, x0, region, guidance_scale=3.0, **common)
    np.testing.assert_allclose(guided, plain, atol=1e-5)
    # The same run guiding every channel (the formula before the fix) differs.
    monkeypatch.setattr(promptable, "prediction_channels", lambda schedule, channels: None)
    every = promptable.promptable_sample(model, sched, x0, region, guidance_scale=3.0, **common)
    assert float(jnp.max(jnp.abs(every - plain))) > 1e-2
