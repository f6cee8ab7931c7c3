"""Every family builds through jaxcf.models.build and runs as a pure function under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.models.layers import AttentionEdit


def test_dit_builds_and_serves_as_a_model_fn():
    config = {"family": "dit", "preset": "DiT-S/2", "input_size": 8, "num_classes": 2, "depth": 2}
    apply_fn, params = models.build(config, jax.random.key(0))
    assert models.param_count(params) == models.param_count(models.abstract_params(config))
    model_fn = functools.partial(apply_fn, params)
    sched = D.linear(variance="learned_range")  # DiT learns sigma: 8 output channels
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    cond = {"label": jnp.array([0, 1])}
    y = jax.jit(
        lambda x: D.ddpm_sample(model_fn, sched, x, key=jax.random.key(2), num_steps=3, cond=cond)
    )(x)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


def test_vae_builds_with_encode_and_decode():
    config = {
        "family": "vae",
        "preset": "mri4",
        "block_out_channels": (16, 32),
        "norm_num_groups": 8,
    }
    apply_fn, params = models.build(config, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 4), minval=-1, maxval=1)
    mean, logvar = jax.jit(apply_fn.encode)(params, x)
    assert mean.shape == (2, 8, 8, 4) and logvar.shape == mean.shape
    assert jax.jit(apply_fn.decode)(params, mean).shape == x.shape
    recon, m2, _ = jax.jit(apply_fn)(params, x)
    np.testing.assert_allclose(m2, mean, atol=1e-6)
    sampled, _, _ = jax.jit(apply_fn)(params, x, key=jax.random.key(3))
    assert float(jnp.max(jnp.abs(sampled - recon))) > 1e-6  # a drawn latent, not the mean


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_every_family_lists_presets(family):
    table = models.presets(family)
    assert table and all(isinstance(v, dict) for v in table.values())


@pytest.mark.parametrize("preset,published_gmacs", [("DiT-B/2", 23.0), ("DiT-XL/2", 118.6)])
def test_dit_forward_cost_matches_the_paper(preset, published_gmacs):
    # Peebles & Xie 2023, Table 4: forward Gflops (multiply-accumulates) at 32x32x4 latents.
    apply_fn, params = models.build_abstract({"family": "dit", "preset": preset})
    x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    cond = {"label": jax.ShapeDtypeStruct((1,), jnp.int32)}
    gmacs = models.forward_flops(apply_fn, params, x, t, cond) / 2e9
    assert gmacs == pytest.approx(published_gmacs, rel=0.02)


def test_lowered_flops_agree_with_compiled():
    apply_fn, params = models.build({"family": "unet", "preset": "tiny2d"}, jax.random.key(0))
    args = (
        jnp.ones((1, 32, 32, 4)),
        jnp.zeros((1,), jnp.int32),
        {"label": jnp.zeros((1,), jnp.int32)},
    )
    compiled = jax.jit(apply_fn).lower(params, *args).compile().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, list | tuple) else compiled
    assert models.forward_flops(apply_fn, params, *args) == pytest.approx(
        compiled["flops"], rel=0.01
    )


def test_dit_cross_attention_maps_are_named_as_the_control_saw_them():
    config = {
        "family": "dit",
        "preset": "DiT-S/2",
        "input_size": 8,
        "depth": 1,
        "context_dim": 6,
        "num_classes": 0,
    }
    apply_fn, params = models.build(config, jax.random.key(0))
    seen = []

    def control(name, kind, shape):
        seen.append(name)
        return AttentionEdit(return_probs=True)

    x, t = jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,), jnp.int32)
    _, maps = apply_fn(
        params, x, t, {"context": jnp.ones((1, 3, 6))}, control=control, return_attention=True
    )
    assert sorted(maps) == sorted(seen) == ["blocks.0", "blocks.0.cross"]


def test_unknown_config_fields_are_listed():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['chanels'\]"):
        models.build({"family": "dit", "preset": "DiT-S/2", "chanels": 3}, jax.random.key(0))


def test_apply_fns_of_equal_graphs_are_one_static_argument():
    a, _ = models.build({"family": "unet", "preset": "tiny2d"}, jax.random.key(0))
    b, _ = models.build({"family": "unet", "preset": "tiny2d"}, jax.random.key(1))
    c, _ = models.build({"family": "unet", "preset": "tiny3d"}, jax.random.key(0))
    assert a == b and hash(a) == hash(b) and a != c
