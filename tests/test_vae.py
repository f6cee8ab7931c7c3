"""AutoencoderKL (jaxcf.models.vae) and its diffusers converter (jaxcf.convert.diffusers_vae).

Toy models get random parameters from numpy instead of flax's initialisers: XLA:CPU spends
tens of seconds compiling the per-shape random initialisers, while the tests only need
some fixed, non-trivial weights. Each jitted function below is compiled once and reused
with other parameter values of the same shapes. Parity tests against diffusers are marked
`ref`; torch and diffusers are imported inside them, so the rest runs without them.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf.convert.common import CheckpointError
from jaxcf.convert.diffusers_vae import (
    key_table,
    load_vae_checkpoint,
    vae_params_from_diffusers,
    vae_params_to_diffusers,
)
from jaxcf.models import vae as vae_module
from jaxcf.models.vae import (
    PRESETS,
    AutoencoderKL,
    Downsample,
    decode_modalities,
    encode_modalities,
    from_preset,
    kl_divergence,
    sample_posterior,
)

TOY = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
)
# Parameter counts of the presets; "sd" is diffusers' AutoencoderKL with the Stable
# Diffusion v1 VAE config (checked against diffusers in test_sd_layout_matches_diffusers).
PRESET_PARAMS = {
    "sd": 83_653_863,
    "mri4": 20_946_728,
    "mri3d": 9_972_613,
    "mri3d_small": 487_693,
    "cxr_small": 681_333,  # configs/vae_cxr.py (2-D, one channel; counted here, a regression pin)
}
# bf16 compute vs fp32: relative RMS error ||bf16 - fp32|| / ||fp32|| of the toy VAE's
# outputs (measured 0.025 reconstruction, 0.011 mean, 0.011 logvar; bf16 keeps 8 mantissa
# bits and the residual stream is bf16 through ~20 layers of random weights).
BF16_RTOL = 0.08
PARITY_TOL = 1e-4  # fp32 jaxcf vs fp32 torch (measured ~1e-5)


# --- helpers ------------------------------------------------------------------------------


def abstract(**kwargs) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract params) without running any initialiser."""
    return nnx.split(nnx.eval_shape(lambda: AutoencoderKL(**kwargs, rngs=nnx.Rngs(0))))


def random_params(state: nnx.State, seed: int = 0) -> nnx.State:
    """Fill params with fixed random numbers: kernels ~ N(0, 1 / fan_in), norm scales
    around 1, biases around 0 (so every parameter influences the output)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(path[-1].key)
        noise = rng.standard_normal(leaf.shape)
        if name == "kernel":
            value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            value = 1 + 0.1 * noise if name == "scale" else 0.1 * noise
        return value.astype(np.float32)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return state


def count(state: nnx.State) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state))


def pure_numpy(state: nnx.State) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.to_pure_dict(state))]


@pytest.fixture(scope="module")
def modalities() -> np.ndarray:
    """A toy 4-modality batch (B=2, 8x8, M=4) in [-1, 1]."""
    return np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def toy_abstract():
    return abstract(**TOY)


def copy(state: nnx.State) -> nnx.State:
    return jax.tree.map(lambda a: a, state)


@pytest.fixture(scope="module")
def toy(toy_abstract, modalities):
    """(graphdef, params, x): the 2-D toy VAE and an RGB batch made of the toy modalities
    replicated to 3 channels, one sample per (b, m) in b-major order, which is exactly what
    encode_modalities feeds the VAE."""
    graphdef, state = toy_abstract
    b, h, w, m = modalities.shape
    x = np.repeat(np.moveaxis(modalities, -1, 1).reshape(b * m, h, w, 1), 3, axis=-1)
    return graphdef, random_params(copy(state)), x


@pytest.fixture(scope="module")
def probe(toy):
    """One compiled function returning everything the 2-D tests look at."""
    graphdef, _, _ = toy

    @jax.jit
    def run(params, x, k1, k2):
        vae = nnx.merge(graphdef, params)
        recon, mean, logvar = vae(x)
        return {
            "recon": recon,
            "mean": mean,
            "logvar": logvar,
            "sampled": vae(x, rngs=k1, sample=True)[0],
            "latents": vae.encode_latents(x),
            "latents_k1": vae.encode_latents(x, k1),
            "z_k1": sample_posterior(mean, logvar, k1),
            "z_k2": sample_posterior(mean, logvar, k2),
        }

    return run


@pytest.fixture(scope="module")
def toy_out(toy, probe):
    _, params, x = toy
    return jax.device_get(probe(params, x, jax.random.key(1), jax.random.key(2)))


@pytest.fixture(scope="module")
def sd_abstract():
    return nnx.split(nnx.eval_shape(lambda: from_preset("sd", rngs=nnx.Rngs(0))))


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_counts(name, sd_abstract):
    if name == "sd":
        graphdef, state = sd_abstract
    else:
        graphdef, state = nnx.split(nnx.eval_shape(lambda: from_preset(name, rngs=nnx.Rngs(0))))
    n = count(state)
    print(f"VAE preset {name}: {n:,} parameters")
    assert n == PRESET_PARAMS[name]
    factor = nnx.merge(graphdef, state).downsample_factor
    assert factor == 2 ** (len(PRESETS[name]["block_out_channels"]) - 1)


def test_resblocks_start_random():
    """Unlike a diffusion UNet's, the VAE's ResBlocks do not zero their second conv
    (diffusers initialises it like any conv), so an untrained VAE is not the identity."""
    block = vae_module._resblock(2, 4, 4, 4, None, nnx.Rngs(0))
    assert np.abs(np.asarray(block.conv2.kernel[...])).min() > 0


def test_bad_inputs_raise(toy_abstract):
    graphdef, state = toy_abstract
    encode = lambda s, x: nnx.merge(graphdef, s).encode(x)
    with pytest.raises(ValueError, match=r"H, W, 3\)"):
        jax.eval_shape(encode, state, jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32))
    with pytest.raises(ValueError, match="divisible by 2"):
        jax.eval_shape(encode, state, jax.ShapeDtypeStruct((1, 8, 7, 3), jnp.float32))
    with pytest.raises(ValueError, match="sample=True needs rngs"):
        jax.eval_shape(
            lambda s, x: nnx.merge(graphdef, s)(x, sample=True),
            state,
            jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32),
        )
    with pytest.raises(ValueError, match="spatial_dims"):
        AutoencoderKL(**TOY, spatial_dims=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown VAE preset"):
        from_preset("sdxl", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_downsample_pads_only_at_the_end(spatial_dims):
    """With the kernel's first tap as a delta, output i reads input 2i on every axis: the
    zero pad is after the last element (padding=1 on both sides would read 2i - 1)."""
    down = nnx.eval_shape(lambda: Downsample(spatial_dims, 1, rngs=nnx.Rngs(0)))
    kernel = np.zeros((3,) * spatial_dims + (1, 1), np.float32)
    kernel[(0,) * spatial_dims] = 1.0
    down.conv.kernel.set_value(jnp.asarray(kernel))
    down.conv.bias.set_value(jnp.zeros((1,)))
    x = np.arange(6**spatial_dims, dtype=np.float32).reshape((1,) + (6,) * spatial_dims + (1,))
    y = np.asarray(down(jnp.asarray(x)))
    np.testing.assert_array_equal(y, x[(slice(None),) + (slice(0, None, 2),) * spatial_dims])


# --- forward ------------------------------------------------------------------------------


def test_shapes_2d(toy_out):
    o = toy_out
    assert o["mean"].shape == o["logvar"].shape == o["latents"].shape == (8, 4, 4, 4)
    assert o["recon"].shape == o["sampled"].shape == (8, 8, 8, 3)
    assert all(v.dtype == np.float32 for v in o.values())
    assert np.std(o["recon"]) > 1e-2  # random weights give a non-trivial output


def test_shapes_3d():
    """The volumetric variant, with remat (its training setting): (1, 8, 4, 8, 1) volumes ->
    (1, 4, 2, 4, 4) latents -> (1, 8, 4, 8, 2)."""
    kw = {**TOY, "in_channels": 1, "out_channels": 2, "spatial_dims": 3, "remat": True}
    graphdef, state = abstract(**kw)
    params = random_params(state, seed=3)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 8, 4, 8, 1)).astype(np.float32)
    recon, mean, logvar = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
    assert mean.shape == logvar.shape == (1, 4, 2, 4, 4)
    assert recon.shape == (1, 8, 4, 8, 2) and recon.dtype == jnp.float32
    assert np.all(np.isfinite(recon)) and np.std(recon) > 1e-2


def test_posterior_sampling(toy_out):
    o = toy_out
    # A key gives one draw (encode_latents and sample_posterior agree), another key
    # another one; sample=True decodes a draw, sample=False the mean.
    np.testing.assert_allclose(o["latents_k1"] / 0.18215, o["z_k1"], rtol=1e-6, atol=1e-7)
    assert np.mean(np.abs(o["z_k1"] - o["z_k2"]) > 1e-4) > 0.99
    assert np.abs(o["sampled"] - o["recon"]).max() > 1e-3
    # Scaled latents: scaling_factor * mean.
    np.testing.assert_allclose(o["latents"], 0.18215 * o["mean"], rtol=1e-6)
    # Draws have the posterior's spread (512 of them).
    z_score = (o["z_k1"] - o["mean"]) / np.exp(0.5 * o["logvar"])
    assert 0.7 < np.std(z_score) < 1.3 and abs(np.mean(z_score)) < 0.2
    # An nnx.Rngs works as `rngs` too: its "sample" stream (or the default one) is used.
    key = vae_module._key(nnx.Rngs(sample=0))
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_logvar_is_clamped(toy, probe):
    _, params, x = toy
    # Zero quant_conv weights make the moments equal its bias: logvar 100, -100, 5, -5.
    pure = nnx.to_pure_dict(params)
    pure["quant_conv"] = {
        "kernel": np.zeros_like(pure["quant_conv"]["kernel"]),
        "bias": np.array([0, 0, 0, 0, 100, -100, 5, -5], np.float32),
    }
    state = jax.tree.map(np.asarray, params)  # a copy; the fixture stays as it is
    nnx.replace_by_pure_dict(state, pure)
    out = probe(state, x, jax.random.key(1), jax.random.key(2))
    np.testing.assert_array_equal(out["logvar"][0, 0, 0], [20, -30, 5, -5])
    np.testing.assert_array_equal(out["mean"], 0)


def test_kl_divergence():
    kl = jax.jit(kl_divergence)
    rng = np.random.default_rng(0)
    mean, logvar = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 3, 4))
    want = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
    got = kl(jnp.asarray(mean), jnp.asarray(logvar))
    assert got.shape == (2,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    zeros = jnp.zeros((2, 2, 3, 4))
    np.testing.assert_array_equal(kl(zeros, zeros), [0, 0])
    np.testing.assert_allclose(kl(zeros + 1, zeros), [12, 12])  # 0.5 * 24 dims * 1^2


def test_bf16_close_to_fp32(toy, toy_out):
    _, params, x = toy
    graphdef, _ = abstract(**TOY, dtype=jnp.bfloat16)
    recon, mean, logvar = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
    assert recon.dtype == mean.dtype == logvar.dtype == jnp.float32
    for name, got in (("recon", recon), ("mean", mean), ("logvar", logvar)):
        ref = toy_out[name]
        assert np.all(np.isfinite(got))
        err = np.linalg.norm(np.asarray(got) - ref) / np.linalg.norm(ref)
        print(f"bf16 vs fp32 {name}: relative RMS error {err:.3f}")
        assert 0 < err < BF16_RTOL  # > 0: the compute really ran in bf16


# --- several MRI modalities through the RGB VAE ---------------------------------------------


def test_modalities_shapes_with_the_sd_vae(sd_abstract):
    """Paper 000: a (B, 128, 128, 4) BraTS slice -> (B, 16, 16, 16) SD latents and back."""
    graphdef, state = sd_abstract
    x = jax.ShapeDtypeStruct((2, 128, 128, 4), jnp.float32)
    enc = jax.eval_shape(lambda s, x: encode_modalities(nnx.merge(graphdef, s), x), state, x)
    assert enc.shape == (2, 16, 16, 16)
    dec = jax.eval_shape(lambda s, z: decode_modalities(nnx.merge(graphdef, s), z), state, enc)
    assert dec.shape == (2, 128, 128, 4) and dec.dtype == jnp.float32


def test_modalities_match_per_modality_calls(toy, toy_out, modalities):
    """encode_modalities = the VAE on each modality replicated to RGB (the probe's batch),
    latents side by side; decode_modalities = the mean of the decoded RGB channels."""
    graphdef, params, _ = toy

    @jax.jit
    def run(params, x):
        vae = nnx.merge(graphdef, params)
        z = encode_modalities(vae, x)
        return z, decode_modalities(vae, z)

    z, back = run(params, modalities)
    assert z.shape == (2, 4, 4, 16) and back.shape == (2, 8, 8, 4)
    b, m = 2, 4
    # Sample b * M + m of the probe; its recon decodes the mean, which equals the scaled
    # latents divided back (to rounding).
    z_ref = toy_out["latents"].reshape(b, m, 4, 4, 4)
    back_ref = toy_out["recon"].mean(-1).reshape(b, m, 8, 8)
    for i in range(m):
        np.testing.assert_allclose(z[..., 4 * i : 4 * i + 4], z_ref[:, i], atol=1e-5)
        np.testing.assert_allclose(back[..., i], back_ref[:, i], atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4"):
        decode_modalities(nnx.merge(graphdef, params), jnp.zeros((1, 4, 4, 6)))


# --- checkpoints ----------------------------------------------------------------------------


def test_export_import_roundtrip(toy, toy_abstract):
    _, params, _ = toy
    state = vae_params_to_diffusers(params)
    assert state["encoder.down_blocks.0.downsamplers.0.conv.weight"].shape == (8, 8, 3, 3)
    assert state["decoder.up_blocks.0.upsamplers.0.conv.weight"].shape == (16, 16, 3, 3)
    assert state["encoder.mid_block.attentions.0.to_q.weight"].shape == (16, 16)
    assert state["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"].shape == (16, 8, 1, 1)
    assert "decoder.up_blocks.1.resnets.1.norm2.bias" in state  # layers_per_block + 1
    loaded = vae_params_from_diffusers(state, copy(toy_abstract[1]))
    for a, b in zip(pure_numpy(loaded), pure_numpy(params), strict=True):
        np.testing.assert_array_equal(a, b)

    # Older checkpoints name the attention projections query / key / value / proj_attn.
    rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in state.items():
        for new, old in rename.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[k] = v
    assert "decoder.mid_block.attentions.0.proj_attn.bias" in legacy
    loaded = vae_params_from_diffusers(legacy, copy(toy_abstract[1]))
    for a, b in zip(pure_numpy(loaded), pure_numpy(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_errors(toy, toy_abstract, tmp_path):
    _, params, _ = toy
    state = vae_params_to_diffusers(params)
    fresh = lambda: copy(toy_abstract[1])
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.extra\.weight"):
        vae_params_from_diffusers({**state, "encoder.extra.weight": np.zeros(3)}, fresh())
    gone = "decoder.up_blocks.1.resnets.0.conv1.bias"
    with pytest.raises(CheckpointError, match=r"1 missing keys: decoder\.up_blocks\.1"):
        vae_params_from_diffusers({k: v for k, v in state.items() if k != gone}, fresh())
    wrong = "encoder.conv_in.weight"
    bad = {**state, wrong: np.zeros((8, 4, 3, 3), np.float32)}
    with pytest.raises(CheckpointError, match=r"encoder\.conv_in\.weight: shape \(8, 4, 3, 3\)"):
        vae_params_from_diffusers(bad, fresh())
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=r"nope\.safetensors"):
        load_vae_checkpoint(missing, fresh())
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        load_vae_checkpoint(tmp_path, fresh())  # a folder without a checkpoint


def test_safetensors_file_without_torch(toy, toy_abstract, tmp_path):
    from safetensors.numpy import save_file

    _, params, _ = toy
    save_file(vae_params_to_diffusers(params), tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = load_vae_checkpoint(tmp_path, copy(toy_abstract[1]))  # the folder, as diffusers'
    for a, b in zip(pure_numpy(loaded), pure_numpy(params), strict=True):
        np.testing.assert_array_equal(a, b)


# --- parity with diffusers ------------------------------------------------------------------


def _diffusers_vae(**config):
    """diffusers' AutoencoderKL with `config` and the standard encoder / decoder blocks."""
    diffusers = pytest.importorskip("diffusers")
    levels = len(config["block_out_channels"])
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        **config,
    )


@pytest.mark.ref
def test_sd_layout_matches_diffusers(sd_abstract):
    """Every tensor of the SD v1 VAE config maps onto the "sd" preset with its shape."""
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only, no 83M-parameter initialisation
        reference = _diffusers_vae(**PRESETS["sd"], norm_num_groups=32, sample_size=512)
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == PRESET_PARAMS["sd"]
    tree = nnx.to_pure_dict(sd_abstract[1])
    table = key_table(tree)
    assert {k for k, _, _ in table} == set(shapes)
    for key, path, layout in table:
        leaf = tree
        for p in path:
            leaf = leaf[p]
        want = shapes[key]
        ours = np.empty(leaf.shape, np.float32)
        if layout == "conv":
            ours = np.moveaxis(ours, (-1, -2), (0, 1))
        elif layout == "linear":
            ours = ours.T
        assert ours.shape == want, key


@pytest.mark.ref
def test_parity_with_diffusers(tmp_path):
    config = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
    )
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = _diffusers_vae(**config, sample_size=16)
    with torch.no_grad():  # perturb every tensor, so norms and biases are not at 1 / 0
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    reference.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        posterior = reference.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
        want = [
            t.permute(0, 2, 3, 1).numpy()
            for t in (posterior.mean, posterior.logvar, reference.decode(posterior.mean).sample)
        ]

    graphdef, state = abstract(**config)
    params = vae_params_from_diffusers(
        {k: v.numpy() for k, v in reference.state_dict().items()}, state
    )

    @jax.jit
    def run(params, x):
        vae = nnx.merge(graphdef, params)
        mean, logvar = vae.encode(x)
        return mean, logvar, vae.decode(mean)

    for name, got, ref in zip(("mean", "logvar", "decoded"), run(params, x), want, strict=True):
        err = float(np.abs(np.asarray(got) - ref).max())
        print(f"diffusers parity {name}: max |diff| {err:.2e}")
        assert err <= PARITY_TOL, (name, err)

    # The same through a folder written by save_pretrained (diffusion_pytorch_model.safetensors).
    reference.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    from_file = load_vae_checkpoint(pathlib.Path(tmp_path), abstract(**config)[1])
    for got, ref in zip(run(from_file, x), want, strict=True):
        assert np.abs(np.asarray(got) - ref).max() <= PARITY_TOL

    # And back: exported params load strictly into diffusers with identical tensors.
    exported = {
        k: torch.from_numpy(np.array(v)) for k, v in vae_params_to_diffusers(params).items()
    }
    reference.load_state_dict(exported, strict=True)
