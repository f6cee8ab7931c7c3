"""3-D FID on Med3D features (paper 004, issue 12): the Fréchet distance in closed form, the
Med3D ResNet, the MedicalNet / MONAI checkpoint converter and the extractor labelling.

Closed-form tests: identical Gaussians -> 0; diagonal covariances -> |dmu|^2 +
|sqrt(a) - sqrt(b)|^2; rank-1 covariances uu^T, vv^T -> |dmu|^2 + |u|^2 + |v|^2 - 2|u.v|;
a full case against the textbook formula with scipy's sqrtm. `ref` tests: features of a small
random MONAI ResNet (and of the same network re-wired to MedicalNet's dilated layers 3-4),
converted from its state dict, equal jaxcf's to 1e-4 in float32.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx
from safetensors.numpy import save_file

from jaxcf.convert.common import CheckpointError
from jaxcf.convert.medicalnet import infer_config, load_medicalnet, med3d_state_dict
from jaxcf.errors import InputError
from jaxcf.evaluation import (
    FeatureExtractor,
    FIDResult,
    feature_statistics,
    fid_3d,
    frechet_distance,
    med3d_extractor,
    table_column,
)
from jaxcf.models.med3d import Med3D, Med3DConfig, medicalnet_config

TINY = Med3DConfig(widths=(4, 6, 8, 10))  # resnet10 layout, MedicalNet dilation, 10-d features


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, variables, x):
    return nnx.merge(graphdef, variables)(x)


def forward(model, x):
    """Med3D features, jitted (eager op-by-op dispatch compiles every op: ~5 s per shape)."""
    return np.asarray(_apply(*nnx.split(model), jnp.asarray(x, jnp.float32)))


def _spd(rng, f, rank=None):
    a = rng.normal(size=(f, rank or f))
    return a @ a.T + (0 if rank else 0.1 * np.eye(f))


# --- the closed form --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_identical_gaussians_are_at_distance_zero(method):
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=6), _spd(rng, 6)
    assert frechet_distance(mu, s, mu, s, method=method) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_diagonal_covariances(method):
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_full_covariances_match_the_sqrtm_formula(method):
    rng = np.random.default_rng(2)
    mu1, mu2, s1, s2 = rng.normal(size=7), rng.normal(size=7), _spd(rng, 7), _spd(rng, 7)
    want = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    )
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(want, rel=1e-9)


def test_singular_covariances_have_the_exact_distance():
    # S1 S2 = u (u.v) v^T has one nonzero eigenvalue (u.v)^2, so tr sqrt(S1 S2) = |u.v|;
    # the eigh route needs no eps offset for rank-deficient covariances (N < F features).
    rng = np.random.default_rng(3)
    u, v, dmu = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6)
    want = dmu @ dmu + u @ u + v @ v - 2 * abs(u @ v)
    got = frechet_distance(dmu, np.outer(u, u), np.zeros(6), np.outer(v, v))
    assert got == pytest.approx(want, rel=1e-9)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    f = np.random.default_rng(4).normal(size=(9, 3))
    mu, s = feature_statistics(f)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s, (f - f.mean(0)).T @ (f - f.mean(0)) / 8, rtol=1e-12)
    with pytest.raises(InputError, match="N >= 2"):
        feature_statistics(f[:1])
    with pytest.raises(InputError, match="F,"):
        frechet_distance(mu, s, mu[:2], s[:2, :2])


# --- the network and the converter -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return Med3D(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def volume():
    # The shape of the z-scored volumes in the fid_3d test: one compilation serves both.
    return np.random.default_rng(5).normal(size=(9, 12, 12, 12, 1)).astype(np.float32)


def test_med3d_sizes_and_output_strides():
    def out_shape(config, shape):
        model = Med3D(config, rngs=nnx.Rngs(0))
        return jax.eval_shape(model.feature_map, jax.ShapeDtypeStruct(shape, jnp.float32)).shape

    monai = Med3DConfig(widths=(2, 2, 2, 3), dilated=False)
    assert out_shape(monai, (1, 32, 64, 32, 1)) == (1, 1, 2, 1, 3)
    # MedicalNet's output stride 8 (layers 3-4 dilated, not strided); 4x expansion.
    bottleneck = medicalnet_config(50, widths=(2, 2, 2, 3), layers=(1, 1, 1, 1))
    assert out_shape(bottleneck, (1, 16, 24, 8, 1)) == (1, 2, 3, 1, 12)
    assert medicalnet_config(50).feature_dim == 2048 and medicalnet_config(18).feature_dim == 512
    assert medicalnet_config(18).shortcut == "A" and medicalnet_config(10).shortcut == "B"


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_state_dict_round_trip_infers_the_config(tiny, volume, tmp_path, suffix):
    state = med3d_state_dict(tiny)  # MedicalNet layout: module.conv1.weight, ...
    assert "module.layer2.0.downsample.0.weight" in state
    assert state["module.layer3.0.conv1.weight"].shape == (8, 6, 3, 3, 3)
    # Heads and counters that checkpoints carry beside the backbone are ignored.
    extra = {
        "module.conv_seg.0.weight": np.zeros(3, np.float32),
        "module.bn1.num_batches_tracked": np.zeros((), np.int64),
    }
    path = tmp_path / f"med3d{suffix}"
    if suffix == ".npz":
        np.savez(path, **state, **extra)
    else:
        save_file({**state, **extra}, str(path))
    model, config = load_medicalnet(path)
    assert config == TINY
    np.testing.assert_array_equal(forward(model, volume), forward(tiny, volume))


def test_type_a_shortcut_and_bias_are_read_from_the_keys():
    a = Med3D(medicalnet_config(18, widths=(2, 3, 4, 5)), rngs=nnx.Rngs(1))
    state = med3d_state_dict(a, prefix="")
    assert not any("downsample" in k for k in state)
    assert infer_config(state, "", "test") == medicalnet_config(18, widths=(2, 3, 4, 5))
    b = Med3D(Med3DConfig(widths=(2, 3, 4, 5), downsample_bias=True), rngs=nnx.Rngs(1))
    config = infer_config(med3d_state_dict(b, prefix=""), "", "test", dilated=False)
    assert config.downsample_bias and config.shortcut == "B" and not config.dilated


def test_missing_and_unexpected_keys_are_listed_in_one_line(tiny, tmp_path):
    state = med3d_state_dict(tiny)
    del state["module.layer2.0.bn1.running_var"]
    state["module.layer2.0.conv9.weight"] = np.zeros((1,), np.float32)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_medicalnet(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "1 missing keys: module.layer2.0.bn1.running_var" in message
    assert "1 unexpected keys: module.layer2.0.conv9.weight" in message
    # A shape that does not fit a given config is reported in torch layout.
    save_file(med3d_state_dict(tiny), str(tmp_path / "good.safetensors"))
    with pytest.raises(CheckpointError, match=r"module.conv1.weight: \(4, 1, 7, 7, 7\) in the"):
        load_medicalnet(tmp_path / "good.safetensors", Med3DConfig(widths=(5, 6, 8, 10)))


def test_pth_without_torch_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "resnet_10_23dataset.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(InputError, match=r"resnet_10_23dataset.pth: .*needs torch"):
        load_medicalnet(path)


# --- fid_3d and the naming rule ----------------------------------------------------------------


def _medicalnet_zscore(v):
    """MedicalNet brains18.py __itensity_normalize_one_volume__ without the noise fill."""
    pixels = v[v > 0]
    return (v - pixels.mean()) / pixels.std()


def test_fid_3d_on_random_weights_is_labelled_fd_never_fid(tiny):
    rng = np.random.default_rng(6)
    real = rng.uniform(-1, 1, size=(5, 12, 12, 12, 1)).astype(np.float32)
    fake = np.clip(real[:4] + rng.normal(0, 0.5, real[:4].shape), -1, 1).astype(np.float32)
    extractor = FeatureExtractor.from_model(tiny, trained=False, source="random init (seed 0)")
    result = fid_3d(real, fake, extractor, batch_size=2, value_range=(-1, 1), progress=False)

    assert result.label == f"FD (untrained {TINY.name} features)"
    assert (result.trained, result.source, result.feature_dim) == (
        False,
        "random init (seed 0)",
        10,
    )
    assert (result.num_real, result.num_fake) == (5, 4)
    assert "FD (untrained" in str(result) and "random init" in str(result)
    with pytest.raises(InputError, match="cannot be reported as FID"):
        table_column(result, "FID")
    with pytest.raises(InputError, match="not an FID"):
        FIDResult(**{**result.as_dict(), "label": "FID (Med3D)"})
    assert table_column(result) == (result.label, result.value)

    # The value: MedicalNet's z-score (on [0, 1]-mapped volumes) -> features -> closed form.
    z = np.stack([_medicalnet_zscore((v + 1) / 2) for v in np.concatenate([real, fake])])
    feats = forward(tiny, z).astype(np.float64)
    want = frechet_distance(*feature_statistics(feats[:5]), *feature_statistics(feats[5:]))
    assert result.value == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert result.value > 0

    trained = FeatureExtractor.from_model(tiny, trained=True, source="weights.pth")
    same = fid_3d(real, real, trained, batch_size=2, value_range=(-1, 1), progress=False)
    assert same.label == f"FID ({TINY.name})" and table_column(same, "FID") == ("FID", same.value)
    assert same.value == pytest.approx(0.0, abs=1e-9)


def test_untrained_extractor_by_default_and_bad_volumes():
    extractor = med3d_extractor(config=Med3DConfig(widths=(2, 2, 2, 2)))
    assert not extractor.trained and extractor.source == "random init (seed 0)"
    good = np.random.default_rng(7).uniform(0.1, 1, size=(3, 8, 8, 8, 1)).astype(np.float32)
    run = functools.partial(fid_3d, extractor=extractor, progress=False)
    nan = good.copy()
    nan[2, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="fake_volumes: item 2 holds NaN"):
        run(good, nan)
    with pytest.raises(InputError, match="real_volumes: item 1 has no foreground"):
        run(good * np.array([1, 0, 1])[:, None, None, None, None], good)
    with pytest.raises(InputError, match=r"\(N, D, H, W, 1\)"):
        run(good[..., 0], good)
    with pytest.raises(InputError, match="differ in shape"):
        run(good, good[:, :, :, :4])


# --- parity with MONAI's ResNet and MedicalNet's layout (ref) ----------------------------------


def _randomize_batchnorm(torch, net):
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            c = m.num_features
            m.weight.data = 1 + 0.3 * torch.randn(c, generator=gen)
            m.bias.data = 0.3 * torch.randn(c, generator=gen)
            m.running_mean = 0.3 * torch.randn(c, generator=gen)
            m.running_var = 0.5 + torch.rand(c, generator=gen)


def _to_medicalnet_layout(torch, net):
    """MONAI's ResNet -> MedicalNet's: layers 3-4 at stride 1 with their 3^3 convs dilated by
    2 and 4 (Tencent/MedicalNet models/resnet.py); the weights stay the same."""
    for name, dilation in (("layer3", 2), ("layer4", 4)):
        for block in getattr(net, name):
            for conv in block.modules():
                if isinstance(conv, torch.nn.Conv3d):
                    conv.stride = (1, 1, 1)
                    if conv.kernel_size == (3, 3, 3):
                        conv.dilation = conv.padding = (dilation,) * 3
            if isinstance(block.downsample, functools.partial):  # shortcut type A
                block.downsample = functools.partial(block.downsample, stride=1)


@pytest.mark.ref
@pytest.mark.parametrize(
    "block, layers, shortcut, bias, dilated",
    [
        ("basic", (1, 1, 1, 1), "B", False, True),  # MedicalNet resnet10
        ("basic", (2, 1, 2, 1), "A", True, True),  # MedicalNet resnet18 / 34: type A
        ("bottleneck", (1, 2, 1, 1), "B", False, True),  # MedicalNet resnet50
        ("basic", (1, 1, 1, 1), "B", True, False),  # MONAI's own strides and shortcut bias
    ],
)
def test_features_match_monai_resnet(tmp_path, block, layers, shortcut, bias, dilated):
    torch = pytest.importorskip("torch")
    resnet = pytest.importorskip("monai.networks.nets.resnet")
    torch.manual_seed(0)
    widths = [4, 6, 8, 10]
    net = resnet.ResNet(
        block,
        list(layers),
        widths,
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type=shortcut,
        feed_forward=False,
        bias_downsample=bias,
    ).eval()
    _randomize_batchnorm(torch, net)
    if dilated:
        _to_medicalnet_layout(torch, net)
    x = np.random.default_rng(8).normal(size=(2, 1, 20, 24, 18)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    # MedicalNet's file layout: {"state_dict": {"module.<name>": tensor}}, DataParallel prefix.
    prefix = "module." if dilated else ""
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "resnet.pth")
    model, config = load_medicalnet(tmp_path / "resnet.pth", dilated=dilated)
    assert (config.block, config.layers, config.shortcut) == (block, layers, shortcut)
    assert config.downsample_bias == (bias and shortcut == "B")
    got = np.asarray(model(jnp.asarray(np.moveaxis(x, 1, -1))))
    assert got.shape == want.shape == (2, config.feature_dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # And back: jaxcf's state dict is the torch one (type-B shortcuts have no bias keys in A).
    back = med3d_state_dict(model, prefix=prefix)
    torch_state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert sorted(back) == sorted(torch_state)
    for k, v in torch_state.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
