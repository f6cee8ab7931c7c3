"""DiT checkpoint conversion: facebookresearch layout (round trips through export_facebook,
safetensors and torch pickles), diffusers DiTTransformer2DModel parity, error messages.
Tests needing torch / diffusers are marked `ref` and skip when those are absent."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf.convert.common import CheckpointError
from jaxcf.convert.dit import (
    detect_layout,
    dit_params_from_diffusers,
    dit_params_from_facebook,
    export_facebook,
    load_dit_checkpoint,
)
from jaxcf.models.dit import DiT, dit_param_count_formula

TOY = dict(
    input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10
)


def build(seed: int | None = 1, **kw) -> DiT:
    """An abstract DiT (no initialiser compiles); seed=None leaves it abstract, otherwise
    every parameter gets N(0, 0.1^2) numpy noise (zero-initialised layers included)."""
    model = nnx.eval_shape(lambda: DiT(**{**TOY, **kw}, rngs=nnx.Rngs(0)))
    if seed is not None:
        rng = np.random.default_rng(seed)
        noise = lambda p: jnp.asarray(0.1 * rng.standard_normal(p.shape), jnp.float32)
        nnx.update(model, jax.tree.map(noise, nnx.state(model, nnx.Param)))
    return model


def params_of(model: DiT) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_same_params(a: dict, b: dict) -> None:
    flat_a, flat_b = (dict(jax.tree_util.tree_leaves_with_path(p)) for p in (a, b))
    assert flat_a.keys() == flat_b.keys()
    for path, value in flat_a.items():
        np.testing.assert_array_equal(flat_b[path], value, err_msg=jax.tree_util.keystr(path))


def sample_inputs(batch: int = 2, size: int = 8, channels: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    t = np.array([17, 901][:batch], np.int64)
    labels = np.array([3, 10][:batch], np.int64)  # a class and the null label
    return x, t, labels


@pytest.fixture(scope="module")
def source():
    """A randomised jaxcf DiT, its facebook-style state dict and its output."""
    model = build(seed=1)
    state = export_facebook(nnx.state(model, nnx.Param), input_size=8)
    x, t, labels = sample_inputs()
    out = np.asarray(model(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)}))
    return model, state, out


# --- facebookresearch layout -------------------------------------------------------------------


def test_export_facebook_keys_and_shapes(source):
    _, state, _ = source
    per_block = {
        "attn.qkv.weight": (96, 32),
        "attn.proj.weight": (32, 32),
        "mlp.fc1.weight": (128, 32),
        "mlp.fc2.weight": (32, 128),
        "adaLN_modulation.1.weight": (192, 32),
    }
    want = {
        "x_embedder.proj.weight": (32, 4, 2, 2),
        "pos_embed": (1, 16, 32),
        "t_embedder.mlp.0.weight": (32, 256),
        "t_embedder.mlp.2.weight": (32, 32),
        "y_embedder.embedding_table.weight": (11, 32),  # 10 classes + null row
        "final_layer.adaLN_modulation.1.weight": (64, 32),
        "final_layer.linear.weight": (32, 32),  # p*p*2C = 32 outputs
        **{f"blocks.{i}.{k}": v for i in range(2) for k, v in per_block.items()},
    }
    for key, shape in want.items():
        assert state[key].shape == shape, key
    biases = {k for k in state if k.endswith(".bias")}
    assert set(state) == set(want) | biases
    assert {k.replace(".bias", ".weight") for k in biases} <= set(want)
    assert detect_layout(state) == "facebook"


def test_facebook_roundtrip_in_memory(source):
    model, state, out = source
    target = build(seed=2)
    params = dit_params_from_facebook(state, nnx.state(target, nnx.Param), input_size=8)
    nnx.update(target, params)
    assert_same_params(params_of(target), params_of(model))
    x, t, labels = sample_inputs()
    got = target(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)})
    np.testing.assert_array_equal(np.asarray(got), out)
    assert np.abs(out).max() > 1e-2


def test_facebook_safetensors_into_abstract_model(source, tmp_path):
    from safetensors.numpy import save_file

    model, state, out = source
    path = tmp_path / "dit.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    target = build(seed=None)  # abstract: nothing initialised before loading
    params = load_dit_checkpoint(path, target)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    assert_same_params(params_of(target), params_of(model))
    x, t, labels = sample_inputs()
    got = target(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)})
    np.testing.assert_array_equal(np.asarray(got), out)


def test_half_precision_export_loads(source, tmp_path):
    # fp16 files round the fixed position embedding; it must still be recognised.
    model, state, _ = source
    half = {k: np.ascontiguousarray(v.astype(np.float16)) for k, v in state.items()}
    target = build(seed=None)
    load_dit_checkpoint(save(half, tmp_path / "dit16.safetensors"), target)
    for got, want in zip(
        jax.tree.leaves(params_of(target)), jax.tree.leaves(params_of(model)), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-3, rtol=2e-3)


def test_diffusers_folder_is_accepted(tmp_path):
    with pytest.raises(CheckpointError, match="a folder without a checkpoint"):
        load_dit_checkpoint(tmp_path, build(seed=None))


def save(state: dict, path):
    from safetensors.numpy import save_file

    save_file(state, str(path))
    return path


def _extra(state):
    return {**state, "blocks.2.attn.qkv.weight": state["blocks.1.attn.qkv.weight"]}, "blocks.2"


def _missing(state):
    return {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}, "blocks.1.mlp.fc2.bias"


def _wrong_shape(state):
    return {**state, "final_layer.linear.weight": state["final_layer.linear.weight"][:16]}, "final"


def _pos_grid(state):
    bigger = np.zeros((1, 64, 32), np.float32)
    return {**state, "pos_embed": bigger}, "pos_embed"


@pytest.mark.parametrize("corrupt", [_extra, _missing, _wrong_shape, _pos_grid])
def test_facebook_errors_name_the_key(source, corrupt):
    _, state, _ = source
    bad, key = corrupt(state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        dit_params_from_facebook(bad, nnx.state(build(seed=None), nnx.Param), input_size=8)


def test_checkpoint_and_model_mismatches(source, tmp_path):
    _, state, _ = source
    path = save(state, tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match="freq_shift"):  # facebook weights, diffusers model
        load_dit_checkpoint(path, build(seed=None, freq_shift=1.0))
    with pytest.raises(CheckpointError, match="patch grid"):  # trained for 8x8, model 16x16
        load_dit_checkpoint(path, build(seed=None, input_size=16))
    with pytest.raises(CheckpointError, match="y_embed"):  # class-conditional weights
        load_dit_checkpoint(path, build(seed=None, num_classes=0))
    two_missing = {
        k: v for k, v in state.items() if k not in ("pos_embed", "blocks.0.mlp.fc1.bias")
    }
    with pytest.raises(CheckpointError, match=r"2 missing keys: .*blocks\.0\.mlp\.fc1\.bias"):
        load_dit_checkpoint(save(two_missing, tmp_path / "bad.safetensors"), build(seed=None))
    with pytest.raises(CheckpointError, match="known layout"):
        detect_layout({"encoder.conv_in.weight": np.zeros(1)}, "vae.safetensors")
    with pytest.raises(CheckpointError, match="cross-attention"):
        export_facebook(nnx.state(build(seed=3, context_dim=8), nnx.Param), input_size=8)


# --- torch-based references (pytest -m ref) ----------------------------------------------------


@pytest.mark.ref
def test_facebook_training_pickle_prefers_ema(source, tmp_path):
    torch = pytest.importorskip("torch")
    model, state, _ = source
    to_torch = lambda sd: {k: torch.from_numpy(v) for k, v in sd.items()}
    raw = to_torch(export_facebook(nnx.state(build(seed=7), nnx.Param), input_size=8))
    ckpt = {
        "model": raw,  # raw weights differ from the EMA ones: taking them would fail
        "ema": to_torch(state),
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "args": argparse.Namespace(model="DiT-S/2", image_size=64, num_classes=10),
    }
    path = tmp_path / "0400000.pt"
    torch.save(ckpt, path)
    target = build(seed=None)
    load_dit_checkpoint(path, target)
    assert_same_params(params_of(target), params_of(model))


def _diffusers_dit(learn_sigma: bool, seed: int = 0):
    """A small random diffusers DiT whose per-block embedders are copies of block 0's (the
    layout of converted checkpoints, and the architecture of jaxcf's shared embedder)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8 if learn_sigma else None,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_eps=1e-6,  # diffusers' default 1e-5 in the pre-MLP norm; original DiT uses 1e-6
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # also the zero-initialised adaLN / output layers
            p.copy_(0.1 * torch.randn_like(p))
        shared = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(shared)
    return model


@pytest.mark.ref
@pytest.mark.parametrize("learn_sigma", [True, False], ids=["sigma", "eps"])
def test_diffusers_parity(learn_sigma, tmp_path):
    torch = pytest.importorskip("torch")
    ref = _diffusers_dit(learn_sigma)
    x, t, labels = sample_inputs()
    with torch.no_grad():
        (want,) = ref(
            torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),  # channels-first
            timestep=torch.from_numpy(t),
            class_labels=torch.from_numpy(labels),
            return_dict=False,
        )
    want = want.numpy().transpose(0, 2, 3, 1)  # back to channels-last
    assert want.shape == (2, 8, 8, 8 if learn_sigma else 4)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert detect_layout(state) == "diffusers"
    jax_model = build(seed=None, learn_sigma=learn_sigma, freq_shift=1.0)
    nnx.update(jax_model, dit_params_from_diffusers(state, nnx.state(jax_model, nnx.Param)))
    got = np.asarray(jax_model(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)}))
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # measured 2.8e-6
    # Through the file loader: save_pretrained writes diffusion_pytorch_model.safetensors.
    ref.save_pretrained(tmp_path)
    from_file = build(seed=None, learn_sigma=learn_sigma, freq_shift=1.0)
    load_dit_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors", from_file)
    got2 = from_file(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)})
    np.testing.assert_array_equal(np.asarray(got2), got)
    # The facebook timestep frequencies give a different model: the shift matters.
    shift0 = build(seed=None, learn_sigma=learn_sigma, freq_shift=0.0)
    nnx.update(shift0, dit_params_from_diffusers(state, nnx.state(shift0, nnx.Param)))
    got0 = np.asarray(shift0(jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)}))
    assert np.abs(got0 - want).max() > 1e-3


@pytest.mark.ref
def test_diffusers_diverged_embedders_and_bad_keys_rejected():
    torch = pytest.importorskip("torch")
    ref = _diffusers_dit(learn_sigma=True)
    with torch.no_grad():
        ref.transformer_blocks[1].norm1.emb.timestep_embedder.linear_2.bias.add_(1e-3)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    key = r"transformer_blocks\.1\.norm1\.emb\.timestep_embedder\.linear_2\.bias.*shared"
    with pytest.raises(CheckpointError, match=key):
        dit_params_from_diffusers(state, nnx.state(build(seed=None, freq_shift=1.0), nnx.Param))
    # Unknown and missing keys are listed by name.
    state = {k: v.numpy() for k, v in _diffusers_dit(True).state_dict().items()}
    state.pop("proj_out_2.bias")
    state["transformer_blocks.0.attn1.to_q.lora"] = np.zeros(1, np.float32)
    target = nnx.state(build(seed=None, freq_shift=1.0), nnx.Param)
    with pytest.raises(CheckpointError, match=r"missing keys: proj_out_2\.bias"):
        dit_params_from_diffusers(state, target)
    state["proj_out_2.bias"] = np.zeros(32, np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*to_q\.lora"):
        dit_params_from_diffusers(state, target)


@pytest.mark.ref
@pytest.mark.parametrize(
    "depth,hidden,heads,patch,classes",
    [(2, 32, 2, 2, 10), (28, 1152, 16, 2, 1000)],  # toy and DiT-XL/2
    ids=["toy", "XL-2"],
)
def test_param_count_matches_diffusers(depth, hidden, heads, patch, classes):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):  # shapes only: DiT-XL/2 without allocating 3 GB
        ref = diffusers.DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=hidden // heads,
            in_channels=4,
            out_channels=8,
            num_layers=depth,
            sample_size=32,
            patch_size=patch,
            num_embeds_ada_norm=classes,
        )
    theirs = sum(p.numel() for p in ref.parameters())  # pos_embed is a buffer there too
    ours = dit_param_count_formula(depth, hidden, patch, 4, classes, learn_sigma=True)
    # diffusers' blocks each carry a timestep embedder (256 -> D -> D) and a label table
    # ((classes + 1) x D); jaxcf, like the original DiT, has one shared copy.
    duplicate = (256 * hidden + hidden) + (hidden * hidden + hidden) + (classes + 1) * hidden
    assert theirs == ours + (depth - 1) * duplicate
