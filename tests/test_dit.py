"""DiT: shapes, presets and parameter counts, adaLN-Zero init, bf16, remat, attention
control. Toy sizes on CPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf.models.dit import (
    PRESETS,
    DiT,
    dit_param_count_formula,
    sincos_pos_embed_2d,
    unpatchify,
)
from jaxcf.models.layers import AttentionEdit

TOY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2)


def randomize(model: nnx.Module, seed: int = 1, scale: float = 0.1) -> nnx.Module:
    """Replace every parameter by N(0, scale^2) numpy noise, so zero-initialised layers
    (adaLN, final linear) take part and a test comparing two paths can fail."""
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    noise = lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), jnp.float32)
    nnx.update(model, jax.tree.map(noise, params))
    return model


def build(seed: int = 1, scale: float = 0.1, **kw) -> DiT:
    """A DiT built abstractly, then given random parameters: this skips the initialisers'
    XLA compiles (~0.25 s per op and shape on CPU), which tests other than the init test
    do not need."""
    return randomize(nnx.eval_shape(lambda: DiT(**kw, rngs=nnx.Rngs(0))), seed, scale)


def inputs(batch: int = 2, size: int = 8, channels: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, size, channels)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)
    return x, t


def n_params(state) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize(
    "learn_sigma,num_classes,context_dim",
    [(True, 0, None), (False, 10, None), (True, 3, 12)],
    ids=["uncond-sigma", "labels-eps", "labels-context"],
)
def test_output_shapes(learn_sigma, num_classes, context_dim):
    model = build(**TOY, num_classes=num_classes, learn_sigma=learn_sigma, context_dim=context_dim)
    x, t = inputs()
    cond = {}
    if num_classes:
        cond["label"] = jnp.array([0, num_classes])  # a class and the null label
    if context_dim:
        cond["context"] = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, context_dim)))
        cond["context_mask"] = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = model(x, t, cond or None)
    assert out.shape == (2, 8, 8, 8 if learn_sigma else 4)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_condition_errors():
    model = build(**TOY, num_classes=3)
    x, t = inputs()
    with pytest.raises(ValueError, match="label"):
        model(x, t)
    with pytest.raises(ValueError, match="context"):
        model(x, t, {"label": jnp.zeros(2, jnp.int32), "context": jnp.zeros((2, 3, 4))})
    with pytest.raises(ValueError, match="expects latents"):
        model(jnp.zeros((2, 16, 16, 4)), t, {"label": jnp.zeros(2, jnp.int32)})


def test_pos_embed_layout_and_not_a_param():
    model = nnx.eval_shape(lambda: DiT(**TOY, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert not any("pos" in str(k) for k in params)
    assert n_params(nnx.state(model)) == n_params(nnx.state(model, nnx.Param))
    emb = sincos_pos_embed_2d(32, 4)  # (16, 32): first half encodes the column
    row, col = 2, 3
    w = 10000.0 ** (-np.arange(8) / 8)
    want = np.concatenate([np.sin(col * w), np.cos(col * w), np.sin(row * w), np.cos(row * w)])
    np.testing.assert_allclose(emb[row * 4 + col], want, rtol=1e-6, atol=1e-6)


def test_unpatchify_layout():
    # token (i, j) holds the values of pixel (i*p + a, j*p + b, c) at index (a*p + b)*C + c.
    gh, gw, p, c = 2, 3, 2, 2
    tokens = jnp.arange(gh * gw * p * p * c, dtype=jnp.float32).reshape(1, gh * gw, p * p * c)
    img = np.asarray(unpatchify(tokens, (gh, gw), p, c))
    for i, j, a, b, ch in np.ndindex(gh, gw, p, p, c):
        assert img[0, i * p + a, j * p + b, ch] == tokens[0, i * gw + j, (a * p + b) * c + ch]


def test_presets_param_counts():
    counts = {}
    for name, kw in PRESETS.items():
        abstract = nnx.eval_shape(lambda kw=kw: DiT(**kw, rngs=nnx.Rngs(0)))
        counts[name] = n_params(nnx.state(abstract, nnx.Param))
        formula = dit_param_count_formula(
            kw["depth"],
            kw["hidden_size"],
            kw["patch_size"],
            kw["in_channels"],
            kw["num_classes"],
            kw["learn_sigma"],
        )
        assert counts[name] == formula, name
    # Exact counts (position embedding excluded) and the DiT paper's Table 1 sizes.
    assert counts["DiT-S/2"] == 32_865_056
    assert counts["DiT-B/2"] == 130_315_808
    assert counts["DiT-L/2"] == 457_840_672
    assert counts["DiT-XL/2"] == 674_834_720
    assert counts["pcf_dit_brats128"] == 129_660_032
    for size, paper in {"S": 33e6, "B": 130e6, "L": 458e6, "XL": 675e6}.items():
        for patch in (2, 4, 8):
            assert abs(counts[f"DiT-{size}/{patch}"] / paper - 1) < 0.01, (size, patch)
    assert PRESETS["pcf_dit_brats128"]["input_size"] == 16
    assert PRESETS["pcf_dit_brats128"]["in_channels"] == 16


def test_formula_counts_toy_with_and_without_labels():
    for num_classes, learn_sigma, mlp_ratio in [(0, False, 4.0), (7, True, 2.0)]:
        kw = dict(TOY, num_classes=num_classes, learn_sigma=learn_sigma, mlp_ratio=mlp_ratio)
        model = nnx.eval_shape(lambda kw=kw: DiT(**kw, rngs=nnx.Rngs(0)))
        want = dit_param_count_formula(2, 32, 2, 4, num_classes, learn_sigma, mlp_ratio)
        assert n_params(nnx.state(model, nnx.Param)) == want


def test_zero_init_then_perturbed():
    model = DiT(**TOY, num_classes=3, rngs=nnx.Rngs(0))
    x, t = inputs()
    cond = {"label": jnp.array([1, 3])}
    assert float(jnp.abs(model(x, t, cond)).max()) == 0.0  # adaLN-Zero: identity + zero head
    # DiT's patch-conv init: xavier-uniform on the flattened (C*p*p -> D) weight.
    kernel = np.asarray(model.patch_embed.kernel[...])
    bound = np.sqrt(6 / (4 * 2 * 2 + 32))
    assert 0.9 * bound < np.abs(kernel).max() <= bound
    randomize(model)
    out = model(x, t, cond)
    assert float(jnp.abs(out).max()) > 1e-3
    other_label = model(x, t, {"label": jnp.array([2, 3])})
    assert float(jnp.abs(out[0] - other_label[0]).max()) > 1e-4  # the label reaches the output
    np.testing.assert_array_equal(out[1], other_label[1])


def test_bf16_close_to_fp32():
    x, t = inputs()
    cond = {"label": jnp.array([1, 2])}
    models = [build(**TOY, num_classes=3, dtype=dtype) for dtype in (None, jnp.bfloat16)]
    params = nnx.state(models[1], nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))  # bf16 compute only
    graphdefs = [nnx.graphdef(m) for m in models]

    @jax.jit  # one compile for both models
    def forward(params):
        return [nnx.merge(g, params)(x, t, cond) for g in graphdefs]

    out32, out16 = forward(params)
    assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9); through 2 blocks the error stays
    # within 3% of the output's scale, and it is not zero (the compute really is bf16).
    err = float(jnp.abs(out16 - out32).max() / jnp.abs(out32).max())
    assert 1e-4 < err < 0.03, err


def test_remat_same_output_and_gradient():
    x, t = inputs()
    cond = {"label": jnp.array([0, 1])}
    kw = dict(TOY, depth=1, num_classes=2)  # one block keeps the (slow) CPU compile short
    graphdefs = [nnx.graphdef(build(**kw, remat=r)) for r in (False, True)]
    params = nnx.state(build(**kw), nnx.Param)

    def loss(graphdef, params, x):
        out = nnx.merge(graphdef, params)(x, t, cond)
        return jnp.mean(out**2), out

    @jax.jit  # one compile for both variants (two compiles cost ~4x as much on CPU)
    def both(params, x):
        grad = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)
        results = [grad(g, params, x) for g in graphdefs]
        # Gradient w.r.t. x alone, parameters closed over as constants (guidance-style),
        # which nnx.remat's default graph mode cannot run.
        x_only = jax.grad(lambda x: loss(graphdefs[1], params, x)[0])(x)
        return results, x_only

    # remat is really there: the rematerialised block appears as a remat primitive.
    jaxprs = [str(jax.make_jaxpr(functools.partial(loss, g))(params, x)) for g in graphdefs]
    assert "remat" not in jaxprs[0] and "remat" in jaxprs[1]
    [((v0, o0), g0), ((v1, o1), g1)], gx = both(params, x)
    np.testing.assert_allclose(o1, o0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(gx, g0[1], rtol=1e-5, atol=1e-8)
    g0, g1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert min(float(jnp.abs(g).max()) for g in g0) > 0
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8)


def test_attention_control_maps_and_output():
    model = build(**TOY, num_classes=3, context_dim=12, scale=0.2)
    x, t = inputs()
    cond = {
        "label": jnp.array([0, 1]),
        "context": jnp.asarray(np.random.default_rng(4).standard_normal((2, 5, 12))),
    }
    calls = []

    def control(name, kind, grid):
        calls.append((name, kind, tuple(grid)))
        return AttentionEdit(return_probs=True)

    plain = model(x, t, cond)  # flash / dot_product_attention path
    forward = nnx.capture(lambda m: m(x, t, cond, control=control), nnx.Intermediate)
    edited, maps = forward(model)  # explicit softmax path, recording maps
    assert set(calls) == {
        (f"blocks.{i}{suffix}", kind, (4, 4))
        for i in range(2)
        for suffix, kind in (("", "self"), (".cross", "cross"))
    }
    np.testing.assert_allclose(edited, plain, atol=1e-5)
    assert float(jnp.abs(plain).max()) > 1e-2
    for i in range(2):
        block = maps["blocks"][i]
        (self_probs,) = block["attention_probs"]
        (cross_probs,) = block["cross_attention_probs"]
        assert self_probs.shape == (2, 2, 16, 16) and cross_probs.shape == (2, 2, 16, 5)
        for probs in (self_probs, cross_probs):
            np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
            assert float(probs.min()) >= 0 and float(probs.std()) > 1e-4  # not uniform
