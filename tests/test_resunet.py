"""Paper 002's coarse segmenter: the residual UNet in MONAI's layout (jaxcf.models.resunet)
and its converter from MONAI state dicts (jaxcf.convert.monai_unet)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf.convert import monai_unet
from jaxcf.convert.common import CheckpointError
from jaxcf.convert.monai_unet import resunet_params
from jaxcf.errors import InputError
from jaxcf.models import param_count
from jaxcf.models.resunet import PRESETS, ResUNet, _ConvTranspose

SMALL = dict(in_channels=2, out_channels=3, channels=(4, 8, 16), strides=(2, 2))


def _split(**kwargs):
    graphdef, params = nnx.split(ResUNet(**kwargs, rngs=nnx.Rngs(0)))
    return jax.jit(lambda p, x, **kw: nnx.merge(graphdef, p)(x, **kw)), params


def _monai_state(params: nnx.State) -> dict[str, np.ndarray]:
    """The MONAI state dict that resunet_params maps onto `params` (the converter's key
    table run backwards), so the converter's checks can be tested without torch."""
    tree = nnx.to_pure_dict(params)
    state = {}
    for path, key, kind in monai_unet._entries(tree):
        w = np.asarray(_get(tree, path))
        if kind == "conv":
            w = np.moveaxis(w, (-1, -2), (0, 1))
        elif kind == "convT":
            w = np.moveaxis(w, (-2, -1), (0, 1))
        state[key] = np.ascontiguousarray(w)
    return state


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


# -- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize(("dims", "size"), [(3, 8), (2, 12)])
def test_resunet_maps_each_voxel_to_logits(dims, size, key):
    forward, params = _split(spatial_dims=dims, num_res_units=1, dropout=0.3, **SMALL)
    x = jax.random.normal(key, (2, *(size,) * dims, 2))
    logits = forward(params, x)
    assert logits.shape == (2, *(size,) * dims, 3) and logits.dtype == jnp.float32
    # Instance norm: an item's logits do not depend on the rest of its batch.
    other = forward(params, jnp.concatenate([x[1:], -x[:1]]))
    np.testing.assert_allclose(other[0], logits[1], rtol=1e-5, atol=1e-5)
    if dims == 2:  # dropout only with a key (one more compile: 2-D only)
        dropped = forward(params, x, rngs=nnx.Rngs(dropout=1))
        assert np.abs(np.asarray(dropped - logits)).max() > 1e-3


def test_resunet_remat_gives_the_same_loss_and_gradients():
    """remat=True recomputes each level in the backward pass: same numbers, less memory."""
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 1))
    results = []
    for remat in (False, True):
        model = ResUNet(**dict(PRESETS["toy"], remat=remat), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def loss(p, graphdef=graphdef):
            return jnp.mean(nnx.merge(graphdef, p)(x) ** 2)

        results.append(jax.jit(jax.value_and_grad(loss))(params))
    (l0, g0), (l1, g1) = results
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_resunet_presets_build_with_monai_widths():
    params = nnx.state(nnx.eval_shape(lambda: ResUNet(**PRESETS["peds"], rngs=nnx.Rngs(0))))
    tree = nnx.to_pure_dict(params)
    assert sorted(tree) == ["bottom", "down", "up"] and len(tree["down"]) == 4
    # Top level: 4 sequences in, two-convolution residual unit with a strided shortcut;
    # its up block sees 16 + 16 channels and ends in a 4-label linear convolution.
    assert tree["down"][0]["units"][0]["conv"]["kernel"].shape == (3, 3, 3, 4, 16)
    assert tree["down"][0]["residual"]["kernel"].shape == (3, 3, 3, 4, 16)
    assert tree["up"][0]["up"]["conv"]["kernel"].shape == (3, 3, 3, 32, 4)
    assert "act" not in tree["up"][0]["res"]["units"][0]  # the logits stay linear
    # The bottom (128 -> 256, stride 1) projects its shortcut with a 1-voxel convolution.
    assert tree["bottom"]["residual"]["kernel"].shape == (1, 1, 1, 128, 256)
    assert tree["up"][3]["up"]["conv"]["kernel"].shape == (3, 3, 3, 384, 64)


def test_resunet_refuses_what_it_cannot_compute(key):
    forward, params = _split(spatial_dims=3, num_res_units=1, **SMALL)
    with pytest.raises(InputError, match=r"\(1, 10, 8, 8, 2\).*divisible by 4"):
        forward(params, jnp.zeros((1, 10, 8, 8, 2)))
    with pytest.raises(InputError, match=r"expects x of shape \(B, D, H, W, 2\)"):
        forward(params, jnp.zeros((1, 8, 8, 8, 1)))
    with pytest.raises(InputError, match=r"norm='batch'.*running statistics"):
        ResUNet(norm="batch", rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match="kernel_size must be an odd int"):
        ResUNet(kernel_size=4, rngs=nnx.Rngs(0))


def test_converter_checks_keys_and_shapes():
    _, params = _split(spatial_dims=2, num_res_units=2, **SMALL)
    state = _monai_state(params)
    assert "model.1.submodule.1.submodule.residual.weight" in state  # the bottom's shortcut
    filled = resunet_params(dict(state), params)  # the round trip fits
    assert param_count(filled) == sum(v.size for v in state.values())
    missing = {k: v for k, v in state.items() if k != "model.2.0.adn.A.weight"}
    with pytest.raises(CheckpointError, match=r"1 missing keys: model\.2\.0\.adn\.A\.weight"):
        resunet_params(missing, params)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: model\.3\.weight"):
        resunet_params(dict(state, **{"model.3.weight": np.zeros(3)}), params)
    wide = dict(state, **{"model.0.conv.unit0.conv.weight": np.zeros((5, 2, 3, 3))})
    with pytest.raises(CheckpointError, match=r"down/0/units/0/conv/kernel: shape"):
        resunet_params(wide, params)
    with pytest.raises(CheckpointError, match=r"BatchNorm running statistics"):
        resunet_params(
            dict(state, **{"model.0.conv.unit0.adn.N.running_mean": np.zeros(4)}), params
        )


# -- against MONAI -----------------------------------------------------------------------------


@pytest.mark.ref
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "output_padding"),
    [(3, 2, 1, 1), (5, 2, 2, 1), (3, 3, 1, 2), (3, 1, 1, 0), (4, 2, 1, 0)],
)
@pytest.mark.parametrize("dims", [2, 3])
def test_transposed_convolution_equals_torch(dims, kernel, stride, padding, output_padding):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cls = torch.nn.ConvTranspose2d if dims == 2 else torch.nn.ConvTranspose3d
    reference = cls(3, 5, kernel, stride, padding, output_padding)
    layer = _ConvTranspose(
        dims, 3, 5, kernel, stride, padding, output_padding, True, dtype=None, rngs=nnx.Rngs(0)
    )
    w = reference.weight.detach().numpy()
    layer.kernel[...] = jnp.asarray(np.moveaxis(w, (0, 1), (-2, -1)))
    layer.bias[...] = jnp.asarray(reference.bias.detach().numpy())
    x = np.random.default_rng(0).normal(size=(2, 3, *(5, 6, 7)[:dims])).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = np.moveaxis(np.asarray(layer(jnp.asarray(np.moveaxis(x, 1, -1)))), -1, 1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _monai(torch, monai, dims, **kwargs):
    """A randomly initialised MONAI UNet (eval mode) with its PReLU slopes and norm affines
    moved off their constant initial values."""
    torch.manual_seed(0)
    reference = monai.networks.nets.UNet(spatial_dims=dims, **kwargs).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if ".adn." in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return reference, {k: v.numpy() for k, v in reference.state_dict().items()}


CASES = {
    # Paper 002's kind of network, small: two-convolution residual units, 3-D.
    "3d_res2": (3, 16, dict(SMALL, num_res_units=2), dict(num_res_units=2)),
    # 2-D, one-convolution units, 5-voxel kernels, an unstrided level, affine instance norm.
    "2d_res1_k5": (
        2,
        12,
        dict(
            SMALL,
            strides=(2, 1),
            num_res_units=1,
            kernel_size=5,
            norm=("instance", {"affine": True}),
        ),
        dict(strides=(2, 1), num_res_units=1, kernel_size=5, norm_affine=True),
    ),
    # 2-D plain convolution blocks (num_res_units 0), ReLU, activation before norm.
    "2d_plain_relu": (
        2,
        16,
        dict(SMALL, num_res_units=0, act="relu", adn_ordering="AN"),
        dict(num_res_units=0, act="relu", adn_ordering="AN"),
    ),
}


@pytest.mark.ref
@pytest.mark.parametrize("case", sorted(CASES))
def test_resunet_equals_monai_unet(case):
    torch = pytest.importorskip("torch")
    monai = pytest.importorskip("monai")
    dims, size, monai_kwargs, ours = CASES[case]
    reference, state = _monai(torch, monai, dims, **monai_kwargs)
    forward, params = _split(spatial_dims=dims, **dict(SMALL, **ours))
    params = resunet_params(state, params)
    assert param_count(params) == sum(p.numel() for p in reference.parameters())
    x = np.random.default_rng(0).normal(size=(2, 2, *(size,) * dims)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = forward(params, jnp.asarray(np.moveaxis(x, 1, -1)))
    got = np.moveaxis(np.asarray(got), -1, 1)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.ref
def test_peds_preset_has_monai_parameter_count():
    monai = pytest.importorskip("monai")
    preset = PRESETS["peds"]
    reference = monai.networks.nets.UNet(
        spatial_dims=3,
        in_channels=preset["in_channels"],
        out_channels=preset["out_channels"],
        channels=preset["channels"],
        strides=preset["strides"],
        num_res_units=preset["num_res_units"],
    )
    params = nnx.state(nnx.eval_shape(lambda: ResUNet(**preset, rngs=nnx.Rngs(0))))
    assert param_count(params) == sum(p.numel() for p in reference.parameters())


@pytest.mark.ref
def test_checkpoint_file_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    monai = pytest.importorskip("monai")
    reference, state = _monai(torch, monai, 2, **dict(SMALL, num_res_units=1))
    path = tmp_path / "segmenter.pt"
    torch.save({"epoch": 3, "state_dict": reference.state_dict()}, path)
    _, params = _split(spatial_dims=2, num_res_units=1, **SMALL)
    params = monai_unet.load_resunet_checkpoint(path, params)
    np.testing.assert_array_equal(
        params["bottom"]["residual"]["kernel"][...],
        np.moveaxis(state["model.1.submodule.1.submodule.residual.weight"], (0, 1), (-1, -2)),
    )
