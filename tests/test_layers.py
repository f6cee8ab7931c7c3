"""Shared layers: timestep embedding, ResBlock, attention paths and attention control."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf.models import layers as L


def test_timestep_embedding_formula():
    t = jnp.array([0.0, 7.0, 999.0])
    emb = L.timestep_embedding(t, 8)
    freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
    expected = np.concatenate([np.cos(np.outer(t, freqs)), np.sin(np.outer(t, freqs))], -1)
    np.testing.assert_allclose(emb, expected, atol=1e-4)
    shifted = L.timestep_embedding(t, 8, freq_shift=1.0)  # diffusers' DiT: / (half - 1)
    freqs = np.exp(-math.log(10000) * np.arange(4) / 3)
    np.testing.assert_allclose(shifted[:, :4], np.cos(np.outer(t, freqs)), atol=1e-4)
    assert L.timestep_embedding(t, 7).shape == (3, 7)


def _qkv(seed=0, q_len=12, k_len=7):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (2, q_len, 3, 8))
    k = jax.random.normal(keys[1], (2, k_len, 3, 8))
    v = jax.random.normal(keys[2], (2, k_len, 3, 8))
    return q, k, v


def test_fast_and_explicit_attention_paths_agree():
    q, k, v = _qkv()
    fast, none = L.attention(q, k, v)
    explicit, probs = L.attention(q, k, v, L.AttentionEdit(return_probs=True))
    assert none is None
    np.testing.assert_allclose(explicit, fast, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Reference softmax attention in numpy.
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    ref_p = np.exp(logits - logits.max(-1, keepdims=True))
    ref_p /= ref_p.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5)


def test_neutral_control_changes_nothing_and_edits_do():
    q, k, v = _qkv(1)
    base, _ = L.attention(q, k, v)
    neutral = L.AttentionEdit(
        bias=jnp.zeros((1, 1, 1, 7)), prob_scale=jnp.ones((1, 1, 1, 7)), return_probs=True
    )
    out, _ = L.attention(q, k, v, neutral)
    np.testing.assert_allclose(out, base, atol=1e-5)
    # Blocking every key but one makes the output that key's value.
    mask = jnp.zeros((1, 1, 1, 7), bool).at[..., 3].set(True)
    out, _ = L.attention(q, k, v, L.AttentionEdit(mask=mask, return_probs=True))
    np.testing.assert_allclose(out, jnp.broadcast_to(v[:, 3:4], out.shape), atol=1e-5)
    # Scaling one token's probability (attention regulation) with renormalisation.
    scale = jnp.ones((1, 1, 1, 7)).at[..., 0].set(3.0)
    _, p = L.attention(
        q, k, v, L.AttentionEdit(prob_scale=scale, renormalize=True, return_probs=True)
    )
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    _, p0 = L.attention(q, k, v, L.AttentionEdit(return_probs=True))
    assert float(jnp.mean(p[..., 0])) > float(jnp.mean(p0[..., 0]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resblock_up_down_and_zero_init(spatial_dims):
    shape = (2,) + (8,) * spatial_dims + (16,)
    x = jax.random.normal(jax.random.key(0), shape)
    emb = jnp.ones((2, 64))
    block = L.ResBlock(spatial_dims, 16, 16, 64, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(block(x, emb), x, atol=1e-6)  # zero-initialised residual
    down = L.ResBlock(spatial_dims, 16, 32, 64, down=True, rngs=nnx.Rngs(0))
    assert down(x, emb).shape == (2,) + (4,) * spatial_dims + (32,)
    up = L.ResBlock(spatial_dims, 16, 8, 64, up=True, rngs=nnx.Rngs(0))
    assert up(x, emb).shape == (2,) + (16,) * spatial_dims + (8,)
    np.testing.assert_allclose(L.avg_pool2(jnp.ones(shape)), 1.0)


def test_dropout_only_with_rngs():
    block = L.ResBlock(2, 4, 4, 8, dropout=0.5, zero_out=False, rngs=nnx.Rngs(0))
    x, emb = jax.random.normal(jax.random.key(1), (1, 4, 4, 4)), jnp.ones((1, 8))
    np.testing.assert_array_equal(block(x, emb), block(x, emb))
    a = block(x, emb, nnx.Rngs(dropout=1))
    b = block(x, emb, nnx.Rngs(dropout=2))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_spatial_attention_records_maps_and_uses_kv_context():
    attn = L.SpatialAttention(
        16, heads=2, kv_context_dim=6, groups=8, name="probe", rngs=nnx.Rngs(0)
    )
    # Non-zero output projection so that context can change the result.
    attn.proj.kernel.set_value(
        jax.random.normal(jax.random.key(0), attn.proj.kernel.get_value().shape)
    )
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 16))
    ctx_a, ctx_b = jnp.ones((1, 3, 6)), -jnp.ones((1, 3, 6))
    control = lambda name, kind, shape: (
        L.AttentionEdit(return_probs=True) if name == "probe" else None
    )
    out, captured = nnx.capture(
        lambda m: m(x, kv_context=ctx_a, control=control), nnx.Intermediate
    )(attn)
    probs = captured["attention_probs"].get_value()[0]
    assert probs.shape == (1, 2, 16, 16 + 3)  # 16 positions + 3 context tokens
    assert float(jnp.max(jnp.abs(out - attn(x, kv_context=ctx_b)))) > 1e-3
    with pytest.raises(ValueError, match="needs context tokens"):
        attn(x)


def test_padding_mask_hides_context_tokens_and_combines_with_a_control_mask():
    cross = L.CrossAttention(8, 6, heads=2, groups=4, name="x", rngs=nnx.Rngs(0))
    cross.proj.kernel.set_value(jax.random.normal(jax.random.key(0), (8, 8)))
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
    ctx = jax.random.normal(jax.random.key(2), (1, 3, 6))
    pad = jnp.array([[1, 1, 0]])  # token 2 is padding
    changed = ctx.at[:, 2].set(100.0)
    np.testing.assert_allclose(cross(x, ctx, pad), cross(x, changed, pad), atol=1e-6)
    assert float(jnp.max(jnp.abs(cross(x, ctx) - cross(x, changed)))) > 1e-3
    # A control that also hides token 1 leaves token 0 alone: the masks combine.
    only0 = lambda name, kind, shape: L.AttentionEdit(
        mask=jnp.array([True, False, True])[None, None, None]
    )
    out = cross(x, ctx, pad, only0)
    np.testing.assert_allclose(out, cross(x, ctx.at[:, 1].set(-50.0), pad, only0), atol=1e-6)
    assert float(jnp.max(jnp.abs(out - cross(x, ctx.at[:, 0].set(-50.0), pad, only0)))) > 1e-3


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="heads of 64"):
        L.SpatialAttention(96, head_channels=64, rngs=nnx.Rngs(0))


def test_host_initialisers_work_under_vmap_and_jit():
    from jaxcf.models import init

    draw = init.torch_default()
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(lambda k: draw(k, (4, 5))))(keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], draw(keys[i], (4, 5)))


@pytest.mark.parametrize(
    "shape,groups", [((2, 5, 6, 64), 32), ((2, 3, 4, 5, 12), 32), ((3, 7, 8), 4)]
)
def test_groupnorm_matches_flax_groupnorm(shape, groups):
    """layers.GroupNorm computes its statistics itself (faster on XLA:CPU); it must give
    flax's GroupNorm on the same parameters, for 2-D, 3-D and token inputs, in bf16 too."""
    rng = np.random.default_rng(0)
    norm = L.GroupNorm(shape[-1], groups, eps=1e-6, rngs=nnx.Rngs(0))
    norm.norm.scale[...] = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    norm.norm.bias[...] = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 2, jnp.float32)
    want = norm.norm(x)
    np.testing.assert_allclose(norm(x), want, atol=2e-5, rtol=2e-5)
    got_bf16 = norm(x.astype(jnp.bfloat16))
    assert got_bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(got_bf16.astype(jnp.float32), want, atol=0.1, rtol=0.02)
