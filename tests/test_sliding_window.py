"""Sliding-window inference (paper 002): window positions, importance map, blending of a
pointwise predictor (exact whatever the weights), a numpy loop reference, one compile per
shape, bad arguments; parity with MONAI's ``sliding_window_inference`` under -m ref."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcf.errors import InputError
from jaxcf.segmentation import importance_map, sliding_window_inference, window_starts
from jaxcf.segmentation.sliding_window import _sliding_window

# ---------------------------------------------------------------- predictors (module-level, so
# the same object is reused and the compiled program is cached)


def pointwise(params, windows):
    return jnp.tanh(windows * params["a"]) + params["b"]


def add_window_mean(params, windows):
    """Depends on the window's position: each voxel plus its window's per-channel mean."""
    axes = tuple(range(1, windows.ndim - 1))
    return windows * params + windows.mean(axis=axes, keepdims=True)


def conv(params, windows):
    """A 3-wide 'same' convolution with zero padding: its output near a window border depends
    on where the window is."""
    kernel, bias = params
    nd = windows.ndim - 2
    spec = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
    out = lax.conv_general_dilated(
        windows, kernel, (1,) * nd, "SAME", dimension_numbers=spec, precision="highest"
    )
    return out + bias


def wrong_shape(params, windows):
    return windows[:, ::2]


def _image(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conv_params(nd, c, k, seed=1):
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((3,) * nd + (c, k)) / 3**nd).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    return kernel, bias


def _numpy_reference(fn, params, image, roi, overlap, mode, sigma_scale=0.125):
    """The blend as a plain loop over windows (no padding: image >= roi)."""
    image = np.asarray(image)
    starts = window_starts(image.shape[1:-1], roi, overlap)
    w = importance_map(roi, mode, sigma_scale)[..., None].astype(np.float64)
    out, total = None, np.zeros((*image.shape[1:-1], 1))
    for b in range(image.shape[0]):
        for s in starts:
            sl = tuple(slice(int(a), int(a) + r) for a, r in zip(s, roi, strict=True))
            pred = np.asarray(fn(params, jnp.asarray(image[(b, *sl)][None])))[0]
            if out is None:
                out = np.zeros(image.shape[:-1] + pred.shape[-1:])
            out[(b, *sl)] += pred * w
            if b == 0:
                total[sl] += w
    return out / total[None]


# ---------------------------------------------------------------- static geometry


def test_window_starts_known_values():
    # step int(4 * 0.75) = 3: 0, 3, 6 (6 + 4 reaches 10)
    assert window_starts((10,), (4,), 0.25)[:, 0].tolist() == [0, 3, 6]
    # 11: the fourth window is shifted back from 9 to 7
    assert window_starts((11,), (4,), 0.25)[:, 0].tolist() == [0, 3, 6, 7]
    # overlap 0.5, roi 5: step int(2.5) = 2
    assert window_starts((9,), (5,), 0.5)[:, 0].tolist() == [0, 2, 4]
    # a window spanning the axis: one window; tiny roi with big overlap: step at least 1
    assert window_starts((6,), (6,), 0.5)[:, 0].tolist() == [0]
    assert window_starts((4,), (1,), 0.9)[:, 0].tolist() == [0, 1, 2, 3]
    # grid order: last axis fastest
    s = window_starts((5, 6), (4, 4), 0.5)
    assert s.tolist() == [[0, 0], [0, 2], [1, 0], [1, 2]]


def test_importance_map():
    g = importance_map((9, 8, 7), "gaussian", 0.125)
    assert g.shape == (9, 8, 7) and g.dtype == np.float32
    assert g.max() == pytest.approx(np.exp(-(0.5**2) / (2 * 1.0**2)) * np.exp(-0.0) ** 2, rel=1e-6)
    assert g[4, 3, 3] == g.max()
    np.testing.assert_array_equal(g, g[::-1, ::-1, ::-1])  # symmetric
    assert g.min() == np.float32(1e-3)  # corner exp(-8)^3 ~ 1e-11 is clamped up to 1e-3
    # separable before the clamp, where it matters nowhere near the centre
    x = np.arange(9) - 4.0
    np.testing.assert_allclose(g[:, 3, 3] / g[4, 3, 3], np.exp(-(x**2) / (2 * (9 / 8) ** 2)), 1e-6)
    # a wide sigma never goes below 1e-3: no clamp, the minimum is the corner itself
    wide = importance_map((5, 5), "gaussian", 1.0)
    assert wide.min() == pytest.approx(np.exp(-2 * 2.0**2 / (2 * 25.0)), rel=1e-6)
    np.testing.assert_array_equal(importance_map((3, 4), "constant"), np.ones((3, 4)))


# ---------------------------------------------------------------- blending


@pytest.mark.parametrize(
    "shape, roi, overlap, mode",
    [
        ((2, 17, 13, 3), (8, 5), 0.25, "gaussian"),
        ((1, 11, 9, 7, 2), (4, 5, 6), 0.5, "constant"),
        ((2, 9, 3, 10, 1), (5, 6, 4), 0.25, "gaussian"),  # axis 2 smaller than the window
    ],
)
def test_pointwise_predictor_is_exact(shape, roi, overlap, mode):
    image = _image(shape)
    params = {"a": jnp.float32(0.7), "b": jnp.float32(0.25)}
    out = sliding_window_inference(
        pointwise, params, image, roi, overlap=overlap, sw_batch_size=3, mode=mode
    )
    assert out.shape == shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.tanh(image * 0.7) + 0.25, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_matches_numpy_loop(mode):
    image = _image((2, 13, 10, 9, 2))
    roi, overlap = (6, 4, 5), 0.25
    params = _conv_params(3, 2, 3)
    out = sliding_window_inference(conv, params, image, roi, overlap=overlap, mode=mode)
    ref = _numpy_reference(conv, params, image, roi, overlap, mode)
    assert out.shape == (2, 13, 10, 9, 3)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    # the windows' borders do show: not the same as convolving the whole image
    whole = np.asarray(conv(params, jnp.asarray(image)))
    assert np.abs(np.asarray(out) - whole).max() > 1e-2


def test_padding_modes_crop_back():
    image = _image((1, 3, 12, 1))
    roi = (6, 5)
    for padding_mode, cval in [("constant", 2.0), ("reflect", 0.0), ("replicate", 0.0)]:
        out = sliding_window_inference(
            add_window_mean, jnp.float32(1.0), image, roi, padding_mode=padding_mode, cval=cval
        )
        assert out.shape == (1, 3, 12, 1)
    # constant padding with cval: the padded rows enter each window's mean
    out0 = sliding_window_inference(add_window_mean, jnp.float32(1.0), image, roi, cval=0.0)
    out2 = sliding_window_inference(add_window_mean, jnp.float32(1.0), image, roi, cval=2.0)
    # 3 of the 6 rows are padding: the mean rises by 2 * 3/6 = 1 in every window
    np.testing.assert_allclose(np.asarray(out2) - np.asarray(out0), 1.0, atol=1e-5)


def test_compiles_once_per_shape_and_params_are_traced():
    image = _image((1, 14, 11, 1))
    before = _sliding_window._cache_size()
    a = sliding_window_inference(add_window_mean, jnp.float32(1.0), image, (6, 6))
    b = sliding_window_inference(add_window_mean, jnp.float32(3.0), image + 1, (6, 6))
    assert _sliding_window._cache_size() == before + 1
    # a = x + mean(x), b = 3 (x + 1) + mean(x) + 1
    np.testing.assert_allclose(
        np.asarray(b), 3 * (image + 1) + (np.asarray(a) - image) + 1, rtol=1e-5, atol=1e-5
    )
    sliding_window_inference(add_window_mean, jnp.float32(1.0), image, (6, 5))
    assert _sliding_window._cache_size() == before + 2
    # also usable inside a caller's jit
    jitted = jax.jit(lambda p, x: sliding_window_inference(add_window_mean, p, x, (6, 6)))
    np.testing.assert_allclose(jitted(jnp.float32(1.0), image), a, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"roi_size": (4, 4, 4)}, "roi_size"),
        ({"roi_size": (4,)}, "roi_size"),
        ({"roi_size": (4, 0)}, "roi_size"),
        ({"roi_size": (-1, 4)}, "roi_size"),
        ({"roi_size": (4.5, 4)}, "roi_size"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"overlap": (0.25, 0.25, 0.25)}, "overlap"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"mode": "linear"}, "mode"),
        ({"sigma_scale": 0.0}, "sigma_scale"),
        ({"padding_mode": "zeros"}, "padding_mode"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"roi_size": (4, 4), **kwargs}
    roi = args.pop("roi_size")
    with pytest.raises(InputError, match=match):
        sliding_window_inference(pointwise, {"a": 1.0, "b": 0.0}, _image((1, 8, 8, 1)), roi, **args)


def test_bad_image_and_predictor():
    with pytest.raises(InputError, match="image"):
        sliding_window_inference(pointwise, {"a": 1.0, "b": 0.0}, _image((8, 8, 1)), (4, 4))
    with pytest.raises(InputError, match="predictor"):
        sliding_window_inference(wrong_shape, None, _image((1, 8, 8, 1)), (4, 4))


# ---------------------------------------------------------------- parity with MONAI (-m ref)


def _torch_predictor(name, params, nd):
    torch = pytest.importorskip("torch")
    if name == "mean":
        scale = float(params)

        def fn(x):
            return x * scale + x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)

        return fn
    kernel, bias = params
    # (*3, C, K) -> (K, C, *3)
    weight = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
    b = torch.from_numpy(bias)
    f = torch.nn.functional.conv3d if nd == 3 else torch.nn.functional.conv2d
    return lambda x: f(x, weight, b, padding=1)


def _monai(name, params, image, roi, **kwargs):
    torch = pytest.importorskip("torch")
    inferers = pytest.importorskip("monai.inferers")
    nd = image.ndim - 2
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 1)))
    with torch.no_grad():
        out = inferers.sliding_window_inference(
            x, roi, predictor=_torch_predictor(name, params, nd), **kwargs
        )
    return np.moveaxis(out.numpy(), 1, -1)


REF_CASES = [
    # shape, roi: odd sizes not divisible by the roi
    ((2, 17, 13, 11, 2), (8, 6, 5)),
    # one axis (4) smaller than the roi (7): padded 1 before, 2 after, cropped back
    ((1, 15, 4, 9, 2), (6, 7, 5)),
]


@pytest.mark.ref
@pytest.mark.parametrize("case", range(len(REF_CASES)))
@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("name", ["mean", "conv"])
def test_matches_monai_3d(case, overlap, mode, name):
    shape, roi = REF_CASES[case]
    image = _image(shape, seed=case)
    params = np.float32(0.5) if name == "mean" else _conv_params(3, 2, 3)
    fn = add_window_mean if name == "mean" else conv
    jparams = jnp.float32(params) if name == "mean" else params
    ours = sliding_window_inference(
        fn, jparams, image, roi, overlap=overlap, sw_batch_size=3, mode=mode
    )
    ref = _monai(
        name, params, image, roi, sw_batch_size=3, overlap=overlap, mode=mode, sigma_scale=0.125
    )
    assert ours.shape == ref.shape
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


@pytest.mark.ref
@pytest.mark.parametrize(
    "padding_mode, cval", [("constant", 1.5), ("reflect", 0.0), ("replicate", 0.0)]
)
def test_matches_monai_padding_2d(padding_mode, cval):
    image = _image((2, 19, 5, 1), seed=3)
    roi = (7, 8)  # axis 2: 5 -> 8, padded 1 before, 2 after
    params = _conv_params(2, 1, 2)
    kw = {"overlap": 0.25, "mode": "gaussian", "padding_mode": padding_mode, "cval": cval}
    ours = sliding_window_inference(conv, params, image, roi, sw_batch_size=4, **kw)
    ref = _monai("conv", params, image, roi, sw_batch_size=4, **kw)
    assert ours.shape == ref.shape == (2, 19, 5, 2)
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


@pytest.mark.ref
@pytest.mark.parametrize("roi", [(8, 6, 5), (7, 7, 3), (16, 10, 9)])
def test_importance_map_and_starts_match_monai(roi):
    pytest.importorskip("torch")
    data_utils = pytest.importorskip("monai.data.utils")
    inf_utils = pytest.importorskip("monai.inferers.utils")
    ref = data_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(importance_map(roi, "gaussian", 0.125), ref, rtol=1e-6, atol=0)
    for size in [(17, 13, 11), (16, 10, 9), (40, 23, 5)]:
        size = tuple(max(s, r) for s, r in zip(size, roi, strict=True))
        for overlap in (0.25, 0.5, 0.9):
            interval = inf_utils._get_scan_interval(size, roi, 3, (overlap,) * 3)
            slices = data_utils.dense_patch_slices(size, roi, interval)
            expected = [[s.start for s in sl] for sl in slices]
            assert window_starts(size, roi, overlap).tolist() == expected
