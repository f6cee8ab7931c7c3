"""Stable Diffusion's latent UNet: jaxcf.models.sd_unet and its converter
jaxcf.convert.diffusers_unet.

Fast tests: shapes and input errors, state-dict round trips in both key layouts (diffusers
and single-file SD), missing / unexpected keys named in the error, attention maps for
every self- and cross-attention with their shapes and names, an AttentionEdit from
`control` changing the output, the context mask, SD 1.5's parameter count (built
abstractly through jaxcf.models, once for all tests). The registry family "sd_unet":
flat fields and presets, params filled by the converter giving SDUNet's outputs through
apply_fn, attention maps by the registry's route named as the control saw them, edits
through apply_fn, input errors, and DDIM with classifier-free guidance.
`ref` tests: parity with a random small diffusers UNet2DConditionModel (from a
save_pretrained folder, a pipeline folder's unet/, a bare safetensors file and a
single-file SD checkpoint), its attention probabilities, diffusers' own single-file
converter, and SD 1.5's full key table and parameter count on torch's meta device.

Tolerance: the issue asks <= 1e-4 in float32. Our forward pass differs from torch's only
in summation order; rounding errors add like a random walk, about sqrt(N) * sqrt(K) * u *
max|h| over N sequential layers with dot products of length K (u = 2^-24 ~ 6e-8). For
the test model (N ~ 40 norms / convs / matmuls, K <= 9 * 128, max|h| ~ 10 in the
residual streams) that is ~ 6 * 34 * 6e-8 * 10 ~ 1e-4 at most; measured: 2.1e-5 on
outputs up to 9.8 (attention maps 1.2e-5, with a context mask 1.9e-5), 5x under the
bound, while a real layout error moves outputs by 1e-1 and more (checked below: [sin,
cos] time features instead of SD's flip_sin_to_cos [cos, sin], 10.0). The reference's
parameters are redrawn with larger scales (weights 0.3, biases 0.1, norm scales
1 +- 0.1) so that every part of the network changes the outputs.
"""

import dataclasses
import functools
import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.convert.common import CheckpointError
from jaxcf.convert.diffusers_unet import (
    LDM_PREFIX,
    infer_config,
    key_table,
    ldm_key,
    ldm_names,
    load_sd_unet,
    sd_unet_params,
    sd_unet_state_dict,
)
from jaxcf.errors import InputError
from jaxcf.models.layers import AttentionEdit
from jaxcf.models.sd_unet import (
    SD15,
    SDUNet,
    SDUNetConfig,
    SDUNetDenoiser,
    param_count,
    sd_unet_config,
    select_maps,
)

ATOL = 1e-4  # float32 parity, see the module docstring
SD15_PARAMS = 859_520_964  # diffusers' UNet2DConditionModel for runwayml/stable-diffusion-v1-5
# Two levels: a cross-attention block at 8x8 (2 heads of 16) and a plain one at 4x4.
TINY = SDUNetConfig(
    sample_size=8,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=8,
)
# The diffusers config.json fields that describe TINY.
TINY_DIFFUSERS = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
}
TRANSFORMER_LAYERS = [
    "down_blocks.0.attentions.0.transformer_blocks.0",
    "mid_block.attentions.0.transformer_blocks.0",
    "up_blocks.1.attentions.0.transformer_blocks.0",
    "up_blocks.1.attentions.1.transformer_blocks.0",
]


def perturb(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Redraw every parameter at the reference's scales (see the module docstring): a
    fresh model has zero-initialised last convs, which would hide half of each ResBlock."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)

    def draw(path, x):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        if path[-1].key == "scale":
            return jnp.asarray(1 + 0.1 * noise)
        return jnp.asarray(noise * (0.3 if x.ndim > 1 else 0.1))

    values = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, values)
    nnx.update(model, state)
    return model


def build(config: SDUNetConfig = TINY, seed: int = 0) -> SDUNet:
    return perturb(SDUNet(config, rngs=nnx.Rngs(seed)), seed)


def inputs(batch: int = 2, size: int = 8, tokens: int = 7, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, 4)).astype(np.float32)
    context = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    t = np.array([10, 700][:batch])
    return jnp.asarray(x), jnp.asarray(t), jnp.asarray(context)


@functools.partial(nnx.jit, static_argnames=("control", "return_attention"))
def forward(model, x, t, context, context_mask=None, control=None, return_attention=False):
    """The model compiled whole (one XLA compile instead of one per eager op)."""
    return model(
        x, t, context, context_mask=context_mask, control=control, return_attention=return_attention
    )


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def tiny():
    return build()


@pytest.fixture(scope="module")
def sd15_abstract():
    """SD 1.5 built abstractly through the registry family (an SDUNet subclass with SDUNet's
    parameters), as models.abstract_params does: one ~9 s build serves the SDUNet and the
    registry tests."""
    config = {"family": "sd_unet", "preset": "sd15"}
    return nnx.eval_shape(lambda: models.build_module(config, jax.random.key(0)))


# --- the model ------------------------------------------------------------------------------


def test_shapes_timesteps_and_input_errors(tiny):
    x, t, context = inputs()
    out = forward(tiny, x, t, context)
    assert out.shape == (2, 8, 8, 4) and out.dtype == jnp.float32
    assert float(jnp.std(out)) > 0.1
    # int and float timesteps agree; a scalar is broadcast over the batch
    np.testing.assert_array_equal(tiny.time_features(t), tiny.time_features(t.astype(float)))
    np.testing.assert_array_equal(tiny._check(x, jnp.array(10), context), jnp.array([10, 10]))
    # the features are diffusers' flip_sin_to_cos=True: [cos, sin], frequencies 1e4^(-i/16)
    freqs = 10000.0 ** (-np.arange(16) / 16)
    want = np.concatenate([np.cos(700 * freqs), np.sin(700 * freqs)])
    np.testing.assert_allclose(tiny.time_features(t)[1], want, atol=2e-4)
    with pytest.raises(InputError, match="multiples of 2"):
        tiny(jnp.zeros((1, 6, 5, 4)), t[:1], context[:1])
    with pytest.raises(InputError, match=r"\(B, H, W, 4\)"):
        tiny(jnp.zeros((1, 8, 8, 3)), t[:1], context[:1])
    with pytest.raises(InputError, match=r"context must be \(B, L, 32\)"):
        tiny(x, t, jnp.zeros((2, 7, 16)))
    with pytest.raises(InputError, match="divisible"):
        dataclasses.replace(TINY, attention_head_dim=3)
    with pytest.raises(InputError, match="down block type"):
        dataclasses.replace(TINY, down_block_types=("AttnDownBlock2D", "DownBlock2D"))


def test_sd15_parameter_count(sd15_abstract):
    """SD 1.5's full config, built abstractly (nothing materialised): diffusers' count, for
    the module and for the registry's abstract params (nnx.split of the same build)."""
    assert type(sd15_abstract) is SDUNetDenoiser and sd15_abstract.config == SD15
    assert param_count(sd15_abstract) == SD15_PARAMS
    assert models.param_count(nnx.split(sd15_abstract)[1]) == SD15_PARAMS
    leaves = jax.tree.leaves(nnx.state(sd15_abstract, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.dtype == jnp.float32 for x in leaves)
    # diffusers' attention_head_dim=8 means 8 heads per layer, whatever the width
    block = sd15_abstract.down_blocks[2].attentions[0].transformer_blocks[0]
    assert block.attn1.heads == block.attn2.heads == 8
    assert block.attn2.to_k.kernel.shape == (768, 1280)


def test_config_from_diffusers():
    assert SDUNetConfig.from_diffusers(TINY_DIFFUSERS) == TINY
    sd15_json = {"attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64}
    assert SDUNetConfig.from_diffusers(sd15_json) == SD15
    with pytest.raises(InputError, match="class_embed_type"):
        SDUNetConfig.from_diffusers({**TINY_DIFFUSERS, "class_embed_type": "timestep"})


# --- attention maps and control ---------------------------------------------------------------


def test_attention_maps_for_every_layer(tiny):
    x, t, context = inputs()
    plain = forward(tiny, x, t, context)
    out, maps = forward(tiny, x, t, context, return_attention=True)
    assert max_diff(out, plain) < 1e-5  # the explicit softmax path gives the same numbers
    want = {f"{layer}.attn{n}" for layer in TRANSFORMER_LAYERS for n in (1, 2)}
    assert set(maps) == want
    positions = {"down_blocks": 64, "mid_block": 16, "up_blocks": 64}
    for name, probs in maps.items():
        q = positions[name.split(".")[0]]
        keys = q if name.endswith("attn1") else 7
        assert probs.shape == (2, 2, q, keys), name
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    cross = select_maps(maps, kind="cross", size=(8, 8))
    assert set(cross) == {n for n in want if n.endswith("attn2") and "mid" not in n}
    assert set(select_maps(maps, kind="self", place="mid")) == {f"{TRANSFORMER_LAYERS[1]}.attn1"}


def test_control_edits_change_the_output(tiny):
    """Scaling one context token's cross-attention weight changes the output; the control
    sees every layer with its kind and feature-map size; a control answering None is the
    plain model."""
    x, t, context = inputs()
    plain = forward(tiny, x, t, context)
    seen = []

    def log_only(name, kind, shape):
        seen.append((name, kind, shape))

    assert max_diff(forward(tiny, x, t, context, control=log_only), plain) == 0.0
    assert (
        len(seen) == 8
        and ("mid_block.attentions.0.transformer_blocks.0.attn2", "cross", (4, 4)) in seen
    )
    assert {kind for _, kind, _ in seen} == {"self", "cross"}

    scale = jnp.ones((7,)).at[3].set(5.0)

    def amplify_token_3(name, kind, shape):
        if kind == "cross":
            return AttentionEdit(prob_scale=scale, renormalize=True, return_probs=True)
        return None

    edited, maps = forward(tiny, x, t, context, control=amplify_token_3, return_attention=True)
    assert max_diff(edited, plain) > 1e-2
    _, plain_maps = forward(tiny, x, t, context, return_attention=True)
    name = f"{TRANSFORMER_LAYERS[0]}.attn2"
    # the recorded maps are after the edit: token 3 gains weight
    assert float(maps[name][..., 3].mean()) > float(plain_maps[name][..., 3].mean()) + 0.05


def test_context_mask_hides_tokens(tiny):
    x, t, context = inputs()
    mask = jnp.ones((2, 7), bool).at[:, 5:].set(False)
    masked = forward(tiny, x, t, context, mask)
    other = context.at[:, 5:].set(3.0)  # change only the masked tokens
    np.testing.assert_allclose(forward(tiny, x, t, other, mask), masked, atol=1e-5)
    assert max_diff(forward(tiny, x, t, context), masked) > 1e-3


# --- the converter (no torch) -----------------------------------------------------------------


def test_round_trip_both_layouts(tiny, tmp_path):
    """Our own state dict in each layout, saved and loaded back, gives the same outputs;
    a diffusers folder (config.json) needs no config, a pipeline folder's unet/ is found."""
    x, t, context = inputs()
    want = forward(tiny, x, t, context)
    unet = tmp_path / "pipeline" / "unet"
    unet.mkdir(parents=True)
    save_file(sd_unet_state_dict(tiny), str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "config.json").write_text(json.dumps(TINY_DIFFUSERS))
    ldm = sd_unet_state_dict(tiny, "ldm")
    assert all(k.startswith(LDM_PREFIX) for k in ldm)
    assert f"{LDM_PREFIX}output_blocks.2.0.skip_connection.weight" in ldm
    ldm["first_stage_model.decoder.conv_in.weight"] = np.zeros((2, 2), np.float32)
    ldm["cond_stage_model.transformer.x"] = np.zeros(2, np.float32)
    single = tmp_path / "sd15.safetensors"
    save_file(ldm, str(single))
    loads = [load_sd_unet(tmp_path / "pipeline"), load_sd_unet(unet), load_sd_unet(single, TINY)]
    for model, config in loads:
        assert config == TINY
        assert max_diff(forward(model, x, t, context), want) == 0.0


def test_config_inferred_from_a_bare_file(tmp_path):
    """Without config.json the sizes come from the shapes (heads and groups: SD 1.5's)."""
    config = dataclasses.replace(
        TINY,
        layers_per_block=2,
        attention_head_dim=8,
        norm_num_groups=32,
        transformer_layers_per_block=2,
        use_linear_projection=True,
        out_channels=3,
        sample_size=64,  # not in the shapes: SD 1.5's
    )
    abstract = nnx.eval_shape(lambda: SDUNet(config, rngs=nnx.Rngs(0)))
    for layout in ("diffusers", "ldm"):
        state = {k: np.zeros(v, np.float16) for k, v in _shapes(abstract, layout).items()}
        file = tmp_path / f"{layout}.safetensors"
        save_file(state, str(file))
        assert infer_config(state, layout, "test") == config
    _, loaded = load_sd_unet(file)  # the single-file one
    assert loaded == config


def _shapes(model: SDUNet, layout: str) -> dict[str, tuple]:
    """The torch-layout shapes of an (abstract) model's state dict."""
    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    table = key_table(model.config)
    if layout == "ldm":
        names = ldm_names(model.config)
        table = [(ldm_key(k, names), p, kind) for k, p, kind in table]
    shapes = {}
    for key, path, kind in table:
        leaf = tree
        for p in path:
            leaf = leaf[p]
        s = tuple(leaf.shape)
        shapes[key] = (
            (s[-1], s[-2], *s[:-2]) if kind == "conv" else s[::-1] if kind == "linear" else s
        )
    return shapes


def test_bf16_compute(tiny):
    """dtype=bfloat16: the same parameters (float32), bf16 convs and matmuls, float32 out."""
    x, t, context = inputs()
    half = nnx.eval_shape(lambda: SDUNet(TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    nnx.update(half, nnx.state(tiny, nnx.Param))
    out, ref = forward(half, x, t, context), forward(tiny, x, t, context)
    assert out.dtype == jnp.float32
    rel = max_diff(out, ref) / float(jnp.abs(ref).max())
    assert 1e-4 < rel < 0.1  # bf16 rounding (8 mantissa bits), not a different network


def test_mismatched_keys_are_listed(tiny, tmp_path):
    state = sd_unet_state_dict(tiny)
    del state["up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"]
    state["mid_block.attentions.0.extra.weight"] = np.zeros(2, np.float32)
    file = tmp_path / "bad.safetensors"
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as err:
        load_sd_unet(file, TINY)
    message = str(err.value)
    assert "\n" not in message and str(file) in message
    assert "1 missing keys: up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight" in (
        message
    )
    assert "1 unexpected keys: mid_block.attentions.0.extra.weight" in message

    ok = tmp_path / "ok.safetensors"
    save_file(sd_unet_state_dict(tiny), str(ok))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_sd_unet(ok, dataclasses.replace(TINY, cross_attention_dim=16))
    other = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": np.zeros(2, np.float32)}, str(other))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion UNet"):
        load_sd_unet(other)


def test_sd15_key_table_covers_the_model(sd15_abstract):
    """The key table names every parameter of SD 1.5's UNet exactly once."""
    table = key_table(SD15)
    assert len({k for k, _, _ in table}) == len(table) == 686
    paths = {p for _, p, _ in table}
    leaves = nnx.to_flat_state(nnx.state(sd15_abstract, nnx.Param))
    assert {tuple(p) for p, _ in leaves} == paths


# --- the models.build family "sd_unet" ----------------------------------------------------------

FAMILY = {"family": "sd_unet", "preset": "tiny"}


@functools.partial(jax.jit, static_argnums=0, static_argnames=("control", "return_attention"))
def apply(apply_fn, params, x, t, cond, control=None, return_attention=False):
    """The registry's apply_fn compiled whole (apply_fn is hashable: a static argument)."""
    return apply_fn(params, x, t, cond, control=control, return_attention=return_attention)


@pytest.fixture(scope="module")
def family(tiny):
    """The "tiny" preset through models.build, its params filled by the converter from the
    state dict of `tiny` (an SDUNet of the same config, parameters redrawn)."""
    apply_fn, params = models.build(FAMILY, jax.random.key(1))
    return apply_fn, sd_unet_params(sd_unet_state_dict(tiny), params, sd_unet_config(FAMILY))


def test_family_fields_are_the_config_fields():
    """Model config fields are SDUNetConfig's (plus dtype); the presets are configs; a
    field overrides its preset, an unknown one is named."""
    fields = {f.name for f in dataclasses.fields(SDUNetConfig)}
    accepted = set(inspect.signature(SDUNetDenoiser.__init__).parameters)
    assert accepted - {"self", "rngs", "dtype", "remat"} == fields
    assert sd_unet_config(FAMILY) == TINY
    assert sd_unet_config({"family": "sd_unet", "preset": "sd15"}) == SD15
    assert sd_unet_config({"family": "sd_unet"}) == SD15  # the constructor's defaults
    sd21 = sd_unet_config({"family": "sd_unet", "preset": "sd21"})
    assert sd21.heads == (5, 10, 20, 20) and sd21.cross_attention_dim == 1024
    wider = sd_unet_config({**FAMILY, "block_out_channels": [64, 64], "layers_per_block": 2})
    assert wider == dataclasses.replace(TINY, block_out_channels=(64, 64), layers_per_block=2)
    with pytest.raises(InputError, match=r"unknown field\(s\) \['heads'\]"):
        models.build({**FAMILY, "heads": 4}, jax.random.key(0))
    with pytest.raises(InputError, match="not divisible into 3 heads"):
        models.build({**FAMILY, "attention_head_dim": 3}, jax.random.key(0))
    with pytest.raises(InputError, match="must be 'sd_unet'"):
        sd_unet_config({"family": "unet", "preset": "tiny2d"})


def test_remat_gives_the_same_output_and_gradients(family):
    """model.remat recomputes each block's activations in the backward pass: the same loss
    and parameter gradients, and the same gradient with respect to the input alone."""
    apply_fn, params = family
    remat_fn, _ = models.build({**FAMILY, "remat": True}, jax.random.key(1))
    x, t, context = inputs()
    cond = {"context": context}
    loss = lambda f: jax.jit(jax.value_and_grad(lambda p: jnp.mean(f(p, x, t, cond) ** 2)))
    (v1, g1), (v2, g2) = loss(apply_fn)(params), loss(remat_fn)(params)
    assert float(v1) == pytest.approx(float(v2), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    grad_x = lambda f: jax.jit(jax.grad(lambda v: jnp.mean(f(params, v, t, cond) ** 2)))
    gx_plain, gx_remat = grad_x(apply_fn)(x), grad_x(remat_fn)(x)
    scale = float(jnp.max(jnp.abs(gx_plain)))
    assert scale > 0
    np.testing.assert_allclose(gx_remat, gx_plain, rtol=0, atol=1e-4 * scale)


def test_family_params_from_the_converter(tiny, family):
    """models.build's params filled from an SDUNet's state dict give the SDUNet's outputs
    through apply_fn (context mask included), and give that state dict back."""
    apply_fn, params = family
    x, t, context = inputs()
    mask = jnp.ones((2, 7), bool).at[1, 4:].set(False)
    out = apply(apply_fn, params, x, t, {"context": context, "context_mask": mask})
    want = forward(tiny, x, t, context, mask)
    assert out.shape == (2, 8, 8, 4) and out.dtype == jnp.float32
    assert max_diff(out, want) <= 1e-5  # the same float32 graph: measured 0.0
    assert max_diff(forward(tiny, x, t, context), want) > 1e-3  # the mask is seen
    back = sd_unet_state_dict(nnx.merge(apply_fn.graphdef, params))
    theirs = sd_unet_state_dict(tiny)
    assert set(back) == set(theirs)
    assert all(np.array_equal(back[k], theirs[k]) for k in theirs)


def test_family_attention_maps_through_the_registry(tiny, family):
    """return_attention through apply_fn: the maps of the layers whose control asked for
    them (return_probs=True), named as the control saw them, equal to SDUNet's own."""
    apply_fn, params = family
    x, t, context = inputs()
    seen = []

    def cross_maps(name, kind, shape):
        seen.append((name, kind, shape))
        return AttentionEdit(return_probs=True) if kind == "cross" else None

    out, maps = apply(
        apply_fn, params, x, t, {"context": context}, control=cross_maps, return_attention=True
    )
    want_out, want_maps = forward(tiny, x, t, context, return_attention=True)
    assert len(seen) == 8  # every attention asked once (at trace time)
    asked = {name for name, kind, _ in seen if kind == "cross"}
    assert set(maps) == asked == {f"{layer}.attn2" for layer in TRANSFORMER_LAYERS}
    for name in asked:
        assert maps[name].shape == want_maps[name].shape, name
        assert max_diff(maps[name], want_maps[name]) <= 1e-5, name
    assert max_diff(out, want_out) <= 1e-5
    with pytest.raises(InputError, match="needs a control"):
        apply_fn(params, x, t, {"context": context}, return_attention=True)


def test_family_control_edits_change_the_output(family):
    """An edit returned by the control changes apply_fn's output; a control answering None
    is the plain model; without return_attention apply_fn returns the prediction alone."""
    apply_fn, params = family
    x, t, context = inputs()
    cond = {"context": context}
    plain = apply(apply_fn, params, x, t, cond)

    def log_only(name, kind, shape):
        return None

    assert max_diff(apply(apply_fn, params, x, t, cond, control=log_only), plain) == 0.0
    scale = jnp.ones((7,)).at[3].set(5.0)

    def amplify_token_3(name, kind, shape):
        if kind == "cross":
            return AttentionEdit(prob_scale=scale, renormalize=True)
        return None

    edited = apply(apply_fn, params, x, t, cond, control=amplify_token_3)
    assert isinstance(edited, jax.Array) and edited.shape == plain.shape
    assert max_diff(edited, plain) > 1e-2


def test_family_input_errors(family):
    apply_fn, params = family
    x, t, context = inputs()
    with pytest.raises(InputError, match=r"cond must hold the prompt's tokens.*got None"):
        apply_fn(params, x, t, None)
    with pytest.raises(InputError, match=r"\(B, L, 32\).*got \['label'\]"):
        apply_fn(params, x, t, {"label": jnp.zeros((2,), jnp.int32)})
    with pytest.raises(InputError, match="no class conditioning"):
        apply_fn(params, x, t, {"context": context, "label": jnp.zeros((2,), jnp.int32)})
    with pytest.raises(InputError, match=r"context must be \(B, L, 32\)"):
        apply_fn(params, x, t, {"context": context[..., :16]})


def test_family_samples_with_classifier_free_guidance(family):
    """The family as a sampler's model_fn: DDIM on SD's schedule with classifier-free
    guidance (one forward on the doubled batch), a zero-token null condition."""
    apply_fn, params = family
    x, _, context = inputs()
    cond = {"context": context, "context_mask": jnp.ones((2, 7), bool)}
    null = {"context": jnp.zeros((1, 7, 32)), "context_mask": jnp.ones((1, 7), bool)}
    sched = D.scaled_linear()

    @jax.jit
    def sample(params, w):
        guided = D.classifier_free_guidance(functools.partial(apply_fn, params), w, null)
        return D.ddim_sample(guided, sched, x, num_steps=2, cond=cond)

    cond_only, uncond_only = sample(params, 1.0), sample(params, 0.0)
    assert cond_only.shape == x.shape and bool(jnp.all(jnp.isfinite(cond_only)))
    assert max_diff(cond_only, uncond_only) > 1e-3  # the prompt tokens reach the sample


# --- parity with diffusers (ref) ----------------------------------------------------------------


def _reference_unet(diffusers_config: dict, seed: int = 0):
    """A random small diffusers UNet2DConditionModel, parameters redrawn larger."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**diffusers_config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1) + float(is_norm_scale))
    return torch, ref


class _RecordingProcessor:
    """diffusers attention, computed explicitly so that the probabilities can be kept."""

    def __init__(self, name: str, store: dict):
        self.name, self.store = name, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k, v = (
            attn.head_to_batch_dim(attn.to_k(context)),
            attn.head_to_batch_dim(attn.to_v(context)),
        )
        probs = attn.get_attention_scores(q, k, None)
        self.store[self.name] = probs.reshape(-1, attn.heads, *probs.shape[1:]).numpy()
        out = attn.batch_to_head_dim(probs @ v)
        return attn.to_out[1](attn.to_out[0](out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch, ref = _reference_unet(TINY_DIFFUSERS)
    folder = tmp_path_factory.mktemp("sd_unet")
    ref.save_pretrained(folder / "unet")
    x, t, context = inputs()
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    x_nchw = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))
    run = lambda **kw: ref(
        x_nchw, torch.tensor(np.asarray(t)), torch.tensor(np.asarray(context)), **kw
    )
    with torch.no_grad():
        plain = run().sample.numpy().transpose(0, 2, 3, 1)
        masked = run(encoder_attention_mask=torch.tensor(mask)).sample.numpy()
        maps: dict = {}
        ref.set_attn_processor(
            {
                n: _RecordingProcessor(n.removesuffix(".processor"), maps)
                for n in ref.attn_processors
            }
        )
        recorded = run().sample.numpy().transpose(0, 2, 3, 1)
    want = {"plain": plain, "masked": masked.transpose(0, 2, 3, 1), "recorded": recorded}
    return folder, ref, mask, want, maps


@pytest.mark.ref
def test_diffusers_parity_all_layouts(reference, tmp_path):
    folder, ref, mask, want, ref_maps = reference
    x, t, context = inputs()
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    bare = tmp_path / "unet.safetensors"
    save_file(state, str(bare))
    ldm_file = tmp_path / "sd.safetensors"
    model, _ = load_sd_unet(folder)
    save_file(sd_unet_state_dict(model, "ldm"), str(ldm_file))
    loads = {
        "save_pretrained folder": load_sd_unet(folder / "unet"),
        "pipeline folder": load_sd_unet(folder),
        "bare safetensors": load_sd_unet(bare, TINY),
        "single-file SD": load_sd_unet(ldm_file, TINY),
    }
    for name, (model, config) in loads.items():
        assert config == TINY, name
        d = max_diff(forward(model, x, t, context), want["plain"])
        print(f"{name}: {d:.2e}")
        assert d <= ATOL, name
    print(f"max |out| = {np.abs(want['plain']).max():.2f}")

    model, _ = loads["save_pretrained folder"]
    out, maps = forward(model, x, t, context, return_attention=True)
    d_out = max_diff(out, want["recorded"])
    assert set(maps) == set(ref_maps)
    d_maps = max(max_diff(maps[n], ref_maps[n]) for n in maps)
    d_mask = max_diff(forward(model, x, t, context, jnp.asarray(mask)), want["masked"])
    print(f"with maps: output {d_out:.2e}, maps {d_maps:.2e}; context mask {d_mask:.2e}")
    assert d_out <= ATOL and d_maps <= ATOL and d_mask <= ATOL

    # the bound discriminates: [sin, cos] time features instead of SD's [cos, sin]
    wrong, _ = load_sd_unet(bare, dataclasses.replace(TINY, flip_sin_to_cos=False))
    d_wrong = max_diff(forward(wrong, x, t, context), want["plain"])
    print(f"flip_sin_to_cos=False: {d_wrong:.2e}")
    assert d_wrong > 100 * ATOL


@pytest.mark.ref
def test_single_file_layout_matches_diffusers_converter():
    """Our single-file (LDM) names, read by diffusers' own single-file converter, give back
    diffusers' state dict, for a three-level UNet with two layers per block."""
    torch = pytest.importorskip("torch")
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    cfg = {
        **TINY_DIFFUSERS,
        "block_out_channels": [8, 16, 16],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 2,
        "cross_attention_dim": 8,
        "norm_num_groups": 4,
    }
    _, ref = _reference_unet(cfg)
    model, _ = load_sd_unet_from_module(ref)
    ldm = sd_unet_state_dict(model, "ldm")
    back = single_file_utils.convert_ldm_unet_checkpoint(
        {k: torch.tensor(v) for k, v in ldm.items()}, dict(ref.config)
    )
    want = ref.state_dict()
    assert set(back) == set(want)
    assert max(float((back[k] - want[k]).abs().max()) for k in want) == 0.0


def load_sd_unet_from_module(ref):
    """Convert an in-memory diffusers UNet (no files)."""
    from jaxcf.convert.diffusers_unet import sd_unet_params

    config = SDUNetConfig.from_diffusers(dict(ref.config))
    model = nnx.eval_shape(lambda: SDUNet(config, rngs=nnx.Rngs(0)))
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    nnx.update(model, sd_unet_params(state, nnx.state(model, nnx.Param), config))
    return model, config


@pytest.mark.ref
def test_sd15_matches_diffusers_on_meta_device(sd15_abstract):
    """SD 1.5's diffusers UNet on torch's meta device (no memory): the same parameter
    count, and our key table gives every one of its tensors with its shape."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8
        )
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ref.parameters()) == SD15_PARAMS
    ours = _shapes(sd15_abstract, "diffusers")
    assert ours == shapes
