"""ADM UNet (2-D / 3-D), WDM presets and the model registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.models import wavelet
from jaxcf.models.layers import AttentionEdit


def _perturb(params, key, scale=0.05):
    """Random non-zero values everywhere, so zero-initialised layers take part. Drawn with
    NumPy: jax.random would compile a kernel per parameter shape (~0.3 s each on CPU)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    return jax.tree.map(
        lambda leaf: leaf + scale * rng.standard_normal(leaf.shape, np.float32), params
    )


CASES = {
    "tiny2d": ((2, 32, 32, 4), {"label": jnp.array([0, 2])}),
    "tiny3d": ((1, 16, 16, 16, 1), None),
}


@pytest.mark.parametrize("preset", sorted(CASES))
def test_unet_shapes_and_zero_init(preset):
    shape, cond = CASES[preset]
    apply_fn, params = models.build({"family": "unet", "preset": preset}, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), shape)
    t = jnp.arange(shape[0]) * 100
    out = jax.jit(apply_fn)(params, x, t, cond)
    assert out.shape == shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # the output conv starts at zero
    out = jax.jit(apply_fn)(_perturb(params, jax.random.key(2)), x, t, cond)
    assert float(jnp.std(out)) > 1e-3


@pytest.mark.parametrize("preset", ["wdm_tiny", "wdm_tiny_text"])
def test_wdm_runs_on_wavelet_coefficients(preset):
    apply_fn, params = models.build({"family": "wdm", "preset": preset}, jax.random.key(0))
    volume = jax.random.uniform(jax.random.key(1), (1, 16, 16, 16, 1), minval=-1, maxval=1)
    coeffs = wavelet.to_wavelet(volume)
    assert coeffs.shape == (1, 8, 8, 8, 8)
    cond = (
        {"context": jnp.ones((1, 5, 32)), "context_mask": jnp.ones((1, 5))}
        if "text" in preset
        else None
    )
    out = jax.jit(apply_fn)(_perturb(params, jax.random.key(2)), coeffs, jnp.array([10]), cond)
    assert out.shape == coeffs.shape and bool(jnp.all(jnp.isfinite(out)))
    assert wavelet.from_wavelet(out).shape == volume.shape


# Parameter counts of the reference implementations, instantiated in PyTorch on 2026-11-22
# with the papers' flags: vios-s/Diff-SCM's UNetModel (diff_scm/models/unet.py) and
# pfriedri/wdm-3d's UNetModel (run.sh settings). Equal counts pin the architecture: the
# label path, attention placement and (WDM) additive-skip channel bookkeeping.
REFERENCE_COUNTS = [
    ("unet", "diffscm_brats64", 27_144_900),
    ("unet", "diffscm_brats128", 28_029_700),
    ("unet", "pcf_unet_brats128", 28_029_700),  # Diff-SCM's 128 px network (see unet.py)
    ("wdm", "wdm128", 57_914_824),
    ("wdm", "wdm256", 83_158_728),
]


@pytest.mark.parametrize("family,preset,count", REFERENCE_COUNTS)
def test_presets_have_the_reference_parameter_counts(family, preset, count):
    assert models.param_count(models.abstract_params({"family": family, "preset": preset})) == count


def test_text_wdm_adds_cross_attention_and_a_deeper_bottleneck():
    base = models.param_count(models.abstract_params({"family": "wdm", "preset": "wdm128"}))
    text = models.param_count(models.abstract_params({"family": "wdm", "preset": "wdm128_text"}))
    assert text > base + 5e6  # 4 cross-attention levels, the bottleneck's included, + 2 blocks


def test_class_attention_makes_the_label_matter():
    apply_fn, params = models.build({"family": "unet", "preset": "tiny2d"}, jax.random.key(0))
    params = _perturb(params, jax.random.key(3))
    x = jax.random.normal(jax.random.key(1), (1, 32, 32, 4))
    f = jax.jit(apply_fn)
    healthy = f(params, x, jnp.array([50]), {"label": jnp.array([0])})
    tumour = f(params, x, jnp.array([50]), {"label": jnp.array([1])})
    assert float(jnp.max(jnp.abs(healthy - tumour))) > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        apply_fn(params, x, jnp.array([50]), None)


def test_bf16_compute_is_close_to_fp32():
    config = {"family": "unet", "preset": "tiny2d"}
    apply32, params = models.build(config, jax.random.key(0))
    apply16, _ = models.build(dict(config, dtype="bfloat16"), jax.random.key(0))
    params = _perturb(params, jax.random.key(4))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 4))
    args = (x, jnp.array([10, 900]), {"label": jnp.array([1, 2])})
    out32 = jax.jit(apply32)(params, *args)
    out16 = jax.jit(apply16)(params, *args)
    assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
    # bf16 keeps 8 mantissa bits: relative error of a deep conv net ~1e-2.
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 1e-5 < rel < 0.05, rel  # a difference at all shows bf16 was really used
    assert jax.tree.leaves(params)[0].dtype == jnp.float32


def test_remat_gives_the_same_output_and_gradient():
    config = {"family": "unet", "preset": "tiny3d"}
    plain, params = models.build(config, jax.random.key(0))
    remat, _ = models.build(dict(config, remat=True), jax.random.key(0))
    params = _perturb(params, jax.random.key(5))
    x = jax.random.normal(jax.random.key(1), (1, 16, 16, 16, 1))
    loss = lambda f: jax.jit(jax.value_and_grad(lambda p: jnp.mean(f(p, x, jnp.array([7])) ** 2)))
    (v1, g1), (v2, g2) = loss(plain)(params), loss(remat)(params)
    assert float(v1) == pytest.approx(float(v2), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # A gradient with respect to the input alone (guidance, latent correction), parameters
    # closed over from the outer trace.
    grad_x = lambda f: jax.jit(jax.grad(lambda x: jnp.mean(f(params, x, jnp.array([7])) ** 2)))
    gx_remat, gx_plain = grad_x(remat)(x), grad_x(plain)(x)
    scale = float(jnp.max(jnp.abs(gx_plain)))
    assert scale > 0
    np.testing.assert_allclose(gx_remat, gx_plain, rtol=0, atol=1e-4 * scale)


def test_attention_maps_through_build_and_no_change_to_the_output():
    apply_fn, params = models.build({"family": "unet", "preset": "tiny2d"}, jax.random.key(0))
    params = _perturb(params, jax.random.key(6))
    x = jax.random.normal(jax.random.key(1), (1, 32, 32, 4))
    args = (params, x, jnp.array([300]), {"label": jnp.array([1])})
    control = lambda name, kind, shape: AttentionEdit(return_probs=True)
    plain = jax.jit(apply_fn)(*args)
    out, maps = jax.jit(functools.partial(apply_fn, control=control, return_attention=True))(*args)
    np.testing.assert_allclose(out, plain, atol=1e-5)
    assert set(maps) == {"down.2.attn", "mid.0.attn", "up.0.attn", "up.1.attn"}
    for probs in maps.values():
        assert probs.shape == (1, 2, 16 * 16, 16 * 16 + 128)  # positions + label tokens
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)


@pytest.mark.parametrize(
    "preset,shape", [("tiny2d", (2, 32, 32, 4)), ("tiny3d", (1, 16, 16, 16, 1))]
)
def test_unet_in_a_sampler_scan_and_a_training_step(preset, shape):
    apply_fn, params = models.build({"family": "unet", "preset": preset}, jax.random.key(0))
    params = _perturb(params, jax.random.key(7), 0.02)
    cond = {"label": jnp.ones((shape[0],), jnp.int32)} if preset == "tiny2d" else None
    sched = D.linear()
    x_T = jax.random.normal(jax.random.key(1), shape)
    sample = jax.jit(
        lambda p, x: D.ddim_sample(functools.partial(apply_fn, p), sched, x, num_steps=4, cond=cond)
    )
    y = sample(params, x_T)
    assert y.shape == shape and bool(jnp.all(jnp.isfinite(y)))

    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, x0, key):
        def loss(p):
            return D.diffusion_loss(functools.partial(apply_fn, p), sched, x0, key, cond)[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    # A few steps on one batch and one noise draw must lower its loss.
    losses = []
    for _ in range(4):
        params, opt_state, value = train_step(params, opt_state, x_T, jax.random.key(2))
        losses.append(float(value))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses


def test_dropout_key_switches_dropout_on():
    apply_fn, params = models.build({"family": "wdm", "preset": "wdm_tiny_text"}, jax.random.key(0))
    params = _perturb(params, jax.random.key(8))
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 8))
    cond = {"context": jnp.ones((1, 3, 32))}
    f = jax.jit(apply_fn)
    np.testing.assert_array_equal(
        f(params, x, jnp.array([3]), cond), f(params, x, jnp.array([3]), cond)
    )
    a = f(params, x, jnp.array([3]), cond, dropout_key=jax.random.key(1))
    b = f(params, x, jnp.array([3]), cond, dropout_key=jax.random.key(2))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


@pytest.mark.parametrize(
    "config,message",
    [
        ({"preset": "tiny2d"}, "model.family is missing"),
        ({"family": "gan"}, "model.family must be one of"),
        ({"family": "unet", "preset": "huge"}, "not a unet preset"),
        ({"family": "unet", "preset": "tiny2d", "dtype": "float8"}, "model.dtype must be one of"),
        ({"family": "unet", "preset": "tiny2d", "chanels": 3}, "chanels"),
        (
            {"family": "unet", "preset": "tiny2d", "num_classes": 0},
            "class_attention needs num_classes",
        ),
    ],
)
def test_config_errors_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        models.build(config, jax.random.key(0))


def test_forward_flops_scale_with_batch():
    apply_fn, params = models.build({"family": "unet", "preset": "tiny3d"}, jax.random.key(0))
    one = models.forward_flops(
        apply_fn, params, jnp.ones((1, 16, 16, 16, 1)), jnp.zeros((1,), jnp.int32)
    )
    two = models.forward_flops(
        apply_fn, params, jnp.ones((2, 16, 16, 16, 1)), jnp.zeros((2,), jnp.int32)
    )
    assert one > 1e7
    assert two == pytest.approx(2 * one, rel=0.05)


def test_diffscm_label_path_has_a_zero_null_row_and_an_mlp():
    module = models.build_module(
        {"family": "unet", "preset": "tiny2d", "label_mlp": True}, jax.random.key(0)
    )
    null = module.label_embed(jnp.array([2]))
    np.testing.assert_array_equal(null, 0.0)  # padding_idx: the null label embeds to zero
    assert float(jnp.abs(module.label_embed(jnp.array([1]))).max()) > 0
    assert module.label_mlp.fc2.kernel.get_value().shape == (128, 128)


@pytest.mark.parametrize(
    "x_shape,t,cond,message",
    [
        ((1, 16, 16, 16, 4), [0], {"label": [0]}, "2-D UNet expects x of shape"),
        ((1, 32, 32, 3), [0], {"label": [0]}, "expects x of shape"),
        ((1, 33, 33, 4), [0], {"label": [0]}, "multiples of 2"),
        ((2, 32, 32, 4), [0, 1, 2], {"label": [0, 0]}, "t must be a scalar or"),
        ((1, 32, 32, 4), [0], {}, "class-conditional"),
        (
            (1, 32, 32, 4),
            [0],
            {"label": [0], "context": jnp.ones((1, 2, 8))},
            "without cross-attention",
        ),
    ],
)
def test_unet_input_errors_name_the_problem(x_shape, t, cond, message):
    apply_fn, params = models.build({"family": "unet", "preset": "tiny2d"}, jax.random.key(0))
    cond = {k: jnp.asarray(v) for k, v in cond.items()}
    with pytest.raises(ValueError, match=message):
        apply_fn(params, jnp.zeros(x_shape), jnp.asarray(t), cond)


def test_unconditional_unet_refuses_a_label():
    apply_fn, params = models.build({"family": "unet", "preset": "tiny3d"}, jax.random.key(0))
    with pytest.raises(ValueError, match="unconditional UNet"):
        apply_fn(
            params,
            jnp.zeros((1, 16, 16, 16, 1)),
            jnp.zeros((1,), jnp.int32),
            {"label": jnp.zeros((1,), jnp.int32)},
        )
