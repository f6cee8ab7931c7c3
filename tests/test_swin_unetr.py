"""Paper 002's transformer segmenter: jaxcf's Swin-UNETR (MONAI layout) and its converter
from MONAI state dicts, checked number for number against MONAI's SwinUNETR."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf.convert.common import CheckpointError
from jaxcf.convert.swin_unetr import load_swin_unetr_checkpoint, swin_unetr_params
from jaxcf.errors import InputError
from jaxcf.models.swin_unetr import PRESETS, SwinUNETR, window_and_shift

# Small enough for CPU, deep enough that every stage has a shifted block; windows of 7 on a
# 64 x 32 x 32 input give padded maps (32 x 16 x 16 -> 35 x 21 x 21), a stage whose window
# shrinks on two axes only (8 x 4 x 4: window (7, 4, 4), shift (3, 0, 0)) and fully shrunk
# windows at the bottom (MONAI's index quirk). (A 32^3 input would leave one voxel at the
# bottom, where torch's instance norm refuses to run; so does jaxcf's model.)
SMALL = dict(
    in_channels=2,
    out_channels=3,
    feature_size=12,
    depths=(2, 2, 2, 2),
    num_heads=(1, 1, 2, 2),
    window_size=7,
)


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _abstract(config: dict) -> nnx.State:
    return nnx.state(nnx.eval_shape(lambda: SwinUNETR(**config, rngs=nnx.Rngs(0))), nnx.Param)


# -- without torch -----------------------------------------------------------------------------


def test_window_shrinks_to_small_maps_without_shift():
    assert window_and_shift((16, 16, 16), (7, 7, 7), (3, 3, 3)) == ((7, 7, 7), (3, 3, 3))
    assert window_and_shift((8, 4, 4), (7, 7, 7), (3, 3, 3)) == ((7, 4, 4), (3, 0, 0))
    assert window_and_shift((7, 2), (7, 7), (3, 3)) == ((7, 2), (0, 0))


def test_toy_segmenter_maps_a_volume_to_per_voxel_logits():
    model = nnx.eval_shape(lambda: SwinUNETR(**PRESETS["toy"], rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 64, 32, 96, 1), jnp.float32)
    )
    assert out.shape == (2, 64, 32, 96, 2) and out.dtype == jnp.float32


def test_2d_segmenter_runs_and_items_are_independent():
    """Instance norm keeps no batch statistics: an item's logits do not depend on the other
    items of its batch."""
    model = SwinUNETR(**dict(SMALL, spatial_dims=2, window_size=4), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    x = jax.random.normal(jax.random.key(0), (2, 32, 64, 2))
    logits = forward(params, x)
    assert logits.shape == (2, 32, 64, 3) and logits.dtype == jnp.float32
    other = forward(params, jnp.stack([x[1], -x[0]]))
    np.testing.assert_allclose(other[0], logits[1], rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_dtype():
    """Parameters stay float32 and logits come back float32; a shifted Swin block computed in
    bfloat16 stays near its float32 result. (A whole network in bfloat16 takes XLA:CPU tens
    of seconds to compile.)"""
    low = nnx.eval_shape(lambda: SwinUNETR(**PRESETS["toy"], dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(low, nnx.Param))} == {
        np.dtype("float32")
    }
    out = nnx.eval_shape(
        lambda m, x: m(x), low, jax.ShapeDtypeStruct((1, 64, 64, 64, 1), jnp.float32)
    )
    assert out.dtype == jnp.float32
    from jaxcf.models.swin_unetr import _SwinBlock

    x = jax.random.normal(jax.random.key(0), (1, 9, 10, 12))
    outs = []
    for dtype in (None, jnp.bfloat16):  # the same key: the same parameters
        block = _SwinBlock(12, 2, (4, 4), (2, 2), 4.0, True, dtype=dtype, rngs=nnx.Rngs(0))
        outs.append(nnx.jit(lambda b, x: b(x))(block, x.astype(dtype or jnp.float32)))
    assert outs[1].dtype == jnp.bfloat16
    err = jnp.abs(outs[1].astype(jnp.float32) - outs[0]).max()
    assert float(err) < 0.05 * float(jnp.abs(outs[0]).max())


def test_sides_must_be_multiples_of_32():
    model = nnx.eval_shape(lambda: SwinUNETR(**PRESETS["toy"], rngs=nnx.Rngs(0)))
    with pytest.raises(
        InputError, match=r"divisible by patch_size\*\*5 = 32.*\(1, 48, 32, 32, 1\)"
    ):
        model(jnp.zeros((1, 48, 32, 32, 1)))
    with pytest.raises(InputError, match=r"\(1, 32, 32, 32, 1\) leaves one voxel"):
        model(jnp.zeros((1, 32, 32, 32, 1)))
    with pytest.raises(InputError, match=r"expects x of shape \(B, D, H, W, 1\)"):
        model(jnp.zeros((1, 64, 32, 32, 2)))


def test_constructor_refuses_invalid_widths():
    with pytest.raises(InputError, match="num_heads\\[1\\] = 5 does not divide"):
        SwinUNETR(**dict(SMALL, num_heads=(1, 5, 2, 2)), rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match="multiple of 12"):
        SwinUNETR(**dict(SMALL, feature_size=16), rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match="only 'instance'"):
        SwinUNETR(**dict(SMALL, norm_name="batch"), rngs=nnx.Rngs(0))


def test_presets_have_monais_parameter_counts():
    # MONAI's SwinUNETR(in 4, out 3, feature_size 48): the 62.19 M of the BraTS 2021 model.
    assert _count(_abstract(PRESETS["brats"])) == 62_191_941
    # SwinUNETR(in 1, out 2, feature_size 12, depths 1-1-1-1, heads 1-2-3-4, window 4).
    assert _count(_abstract(PRESETS["toy"])) == 3_734_544


def test_converter_lists_missing_keys():
    params = _abstract(SMALL)
    with pytest.raises(CheckpointError, match=r"missing keys: swinViT\.patch_embed\.proj\.weight"):
        swin_unetr_params({"encoder.weight": np.zeros(3)}, params)


# -- against MONAI -----------------------------------------------------------------------------


def _monai(config: dict, seed: int = 0):
    torch = pytest.importorskip("torch")
    monai = pytest.importorskip("monai")
    torch.manual_seed(seed)
    reference = monai.networks.nets.SwinUNETR(**config).eval()
    with torch.no_grad():  # LayerNorm affines and biases off their trivial init
        for name, p in reference.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    return torch, reference, state


def _check_parity(config: dict, shape: tuple, seed: int = 0):
    torch, reference, state = _monai(config, seed)
    model = SwinUNETR(**config, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model, nnx.Param)
    params = swin_unetr_params(state, params)
    x = np.random.default_rng(seed).normal(size=(1, config["in_channels"], *shape))
    x = x.astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(
        params, jnp.asarray(np.moveaxis(x, 1, -1))
    )
    got = np.moveaxis(np.asarray(got), -1, 1)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    return state, params


@pytest.mark.ref
def test_swin_unetr_equals_monai_3d(tmp_path):
    """Random MONAI SwinUNETR -> converted -> same logits (float32, <= 1e-4); its training
    checkpoint ({"state_dict": ..., "epoch": ...}, DataParallel "module." keys) loads too."""
    state, params = _check_parity(SMALL, (64, 32, 32))
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    wrapped = {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    loaded = load_swin_unetr_checkpoint(path, _abstract(SMALL))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.ref
def test_pretrained_weights_start_a_network_with_a_new_head(tmp_path):
    """MONAI's BraTS weights predict 3 channels; paper 002 fine-tunes to 4 classes: with
    model.checkpoint_out_channels=3 every layer but the output is the checkpoint's."""
    from jaxcf.models.pretrained import build_pretrained

    torch, _, state = _monai(SMALL, seed=2)
    path = tmp_path / "brats.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    config = {"family": "swin_unetr", **SMALL, "out_channels": 4, "checkpoint": str(path)}
    with pytest.raises(CheckpointError, match=r"out/kernel: shape .* in the model"):
        build_pretrained(config, jax.random.key(0))
    with pytest.warns(UserWarning, match=r"2 parameters .* new output head\): out/bias, out/k"):
        _, params = build_pretrained({**config, "checkpoint_out_channels": 3}, jax.random.key(0))
    loaded = nnx.to_pure_dict(swin_unetr_params(state, _abstract(SMALL)))
    params = nnx.to_pure_dict(params)
    assert params["out"]["kernel"].shape[-1] == 4
    assert not np.allclose(params["out"]["kernel"][..., :3], loaded["out"]["kernel"])
    del params["out"], loaded["out"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.ref
def test_swin_unetr_equals_monai_2d():
    _check_parity(dict(SMALL, spatial_dims=2, window_size=4, downsample="mergingv2"), (64, 32))


@pytest.mark.ref
@pytest.mark.parametrize("mode", ["merging", "mergingv2"])
def test_patch_merging_equals_monai_on_odd_sides(mode):
    torch = pytest.importorskip("torch")
    swin = pytest.importorskip("monai.networks.nets.swin_unetr")
    from jaxcf.models.swin_unetr import _PatchMerging

    torch.manual_seed(0)
    reference = swin.MERGING_MODE[mode](dim=3, spatial_dims=3).eval()
    ours = _PatchMerging(3, 3, mode, dtype=None, rngs=nnx.Rngs(0))
    ours.norm.scale[...] = jnp.asarray(reference.norm.weight.detach().numpy() + 0.5)
    with torch.no_grad():
        reference.norm.weight.add_(0.5)
    ours.reduction.kernel[...] = jnp.asarray(reference.reduction.weight.detach().numpy().T)
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.ref
def test_converter_refuses_other_configurations():
    _, _, state = _monai(SMALL)
    params = _abstract(SMALL)
    extra = dict(state, **{"encoder2.layer.norm1.weight": np.ones(12, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder2\.layer\.norm1\.weight"):
        swin_unetr_params(extra, params)
    wrong = dict(state, **{"out.conv.conv.weight": np.zeros((4, 12, 1, 1, 1), np.float32)})
    with pytest.raises(CheckpointError, match=r"/out/kernel: shape \(1, 1, 1, 12, 4\)"):
        swin_unetr_params(wrong, params)
    # The buffers are recomputed, so a checkpoint without them converts as well.
    bare = {k: v for k, v in state.items() if "relative_position_index" not in k}
    swin_unetr_params(bare, params)
