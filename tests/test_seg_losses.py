"""Segmentation losses (paper 002 Eqs. 2, 9, 12): closed forms, hand-drawn boundary maps, an
independent numpy computation of the refiner objective, gradients, jit, bad inputs; parity with
MONAI's ``DiceLoss`` / ``DiceCELoss`` under -m ref (torch and monai imported only there)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf.errors import InputError
from jaxcf.segmentation.losses import (
    boundary_mse,
    boundary_weights,
    cross_entropy,
    dice_ce_loss,
    medsegdiff_loss,
    one_hot,
    refiner_loss,
    soft_dice_loss,
)

K = 4


def _case(seed=0, shape=(2, 8, 8, 8), k=K, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((*shape, k))).astype(np.float32)
    labels = rng.integers(0, k, size=shape).astype(np.int32)
    if shape[0] > 1:  # class k-1 absent from item 1: exercises the smoothing
        labels[1][labels[1] == k - 1] = 0
    return logits, labels


# ---------------------------------------------------------------- numpy references (float64)


def _np_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_onehot(labels, k):
    return (labels[..., None] == np.arange(k)).astype(np.float64)


def _np_dice(logits, labels, squared=False, include_background=True, pooled=False, eps=1e-5):
    p, y = _np_softmax(logits), _np_onehot(labels, logits.shape[-1])
    if not include_background:
        p, y = p[..., 1:], y[..., 1:]
    losses = []
    for b in range(p.shape[0]):
        pb = p[b].reshape(-1, p.shape[-1])
        yb = y[b].reshape(-1, p.shape[-1])
        q = 2 if squared else 1
        inter = (pb * yb).sum(0)
        den = (pb**q).sum(0) + (yb**q).sum(0)
        if pooled:
            inter, den = inter.sum(), den.sum()
        losses.append(1 - (2 * inter + eps) / (den + eps))
    return float(np.mean(losses))


def _np_ce(logits, labels):
    p = _np_softmax(logits)
    return float(-np.mean(np.log(np.take_along_axis(p, labels[..., None], -1))))


def _np_boundary(labels, edge_weight=3.0):
    """Loop over voxels and their in-array face neighbours."""
    out = np.ones(labels.shape, np.float64)
    nd = labels.ndim - 1
    for idx in np.ndindex(labels.shape):
        for axis in range(1, nd + 1):
            for step in (-1, 1):
                j = list(idx)
                j[axis] += step
                if 0 <= j[axis] < labels.shape[axis] and labels[tuple(j)] != labels[idx]:
                    out[idx] = edge_weight
    return out


# ---------------------------------------------------------------- closed forms


def test_one_hot():
    labels = np.array([[0, 2], [1, 3]], np.int32)
    out = one_hot(labels, 4)
    assert out.shape == (2, 2, 4) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.eye(4)[labels])


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_perfect_prediction_dice_near_zero(squared, pooled):
    _, labels = _case()
    logits = 60.0 * np.asarray(one_hot(labels, K))  # softmax ~ one-hot, class 3 absent in item 1
    for include_background in (True, False):
        loss = soft_dice_loss(
            logits, labels, squared=squared, pooled=pooled, include_background=include_background
        )
        assert 0.0 <= float(loss) < 1e-6
    assert float(cross_entropy(logits, labels)) < 1e-6


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_matches_numpy(squared, pooled, include_background):
    logits, labels = _case(1, shape=(2, 5, 6))
    ours = soft_dice_loss(
        logits, labels, squared=squared, pooled=pooled, include_background=include_background
    )
    ref = _np_dice(logits, labels, squared, include_background, pooled)
    assert abs(float(ours) - ref) <= 1e-6


def test_pooled_unsquared_is_overlap_fraction():
    """Eq. 2 with q = 1 and softmax / one-hot inputs: the denominator is 2N per item."""
    logits, labels = _case(2, shape=(1, 4, 4, 4))
    n = labels.size
    p = _np_softmax(logits)
    inter = np.take_along_axis(p, labels[..., None], -1).sum()
    expected = 1 - (2 * inter + 1e-5) / (2 * n + 1e-5)
    assert abs(float(soft_dice_loss(logits, labels, pooled=True)) - expected) <= 1e-6


def test_batch_flag_pools_items():
    logits, labels = _case(3, shape=(2, 4, 4))
    stacked_logits = np.concatenate(list(logits), axis=0)[None]
    stacked_labels = np.concatenate(list(labels), axis=0)[None]
    for squared in (False, True):
        a = soft_dice_loss(logits, labels, squared=squared, batch=True)
        b = soft_dice_loss(stacked_logits, stacked_labels, squared=squared)
        assert abs(float(a) - float(b)) <= 1e-6


def test_dice_ce_matches_numpy():
    logits, labels = _case(4, shape=(2, 6, 5))
    ours = dice_ce_loss(logits, labels, lambda_dice=0.7, lambda_ce=1.3, squared=True)
    ref = 0.7 * _np_dice(logits, labels, squared=True) + 1.3 * _np_ce(logits, labels)
    assert abs(float(ours) - ref) <= 1e-5


def test_boundary_weights_2d_hand_drawn():
    labels = np.array(
        [
            [
                [0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 1, 1, 0, 2],
                [0, 0, 0, 0, 2],
            ],
            # a constant item: no edges, although it differs from item 0 (batch axis ignored)
            [[3] * 5] * 4,
        ],
        np.int32,
    )
    expected = np.array(
        [
            [
                [1, 3, 3, 1, 1],
                [3, 3, 3, 3, 3],
                [3, 3, 3, 3, 3],
                [1, 3, 3, 3, 3],
            ],
            [[1] * 5] * 4,
        ],
        np.float32,
    )
    out = boundary_weights(labels)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(boundary_weights(labels, edge_weight=5.0), (expected - 1) * 2 + 1)


def test_boundary_weights_3d_hand_drawn():
    labels = np.zeros((1, 3, 3, 3), np.int32)
    labels[0, 1, 1, 1] = 2  # centre voxel: itself and its 6 face neighbours
    labels_corner = np.zeros((1, 3, 3, 3), np.int32)
    labels_corner[0, 0, 0, 0] = 1  # corner voxel: the array border is no edge
    expected = np.ones((1, 3, 3, 3), np.float32)
    for d, h, w in [(1, 1, 1), (0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)]:
        expected[0, d, h, w] = 3
    expected_corner = np.ones((1, 3, 3, 3), np.float32)
    for d, h, w in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        expected_corner[0, d, h, w] = 3
    np.testing.assert_array_equal(boundary_weights(labels), expected)
    np.testing.assert_array_equal(boundary_weights(labels_corner), expected_corner)
    np.testing.assert_array_equal(boundary_weights(np.zeros((2, 3, 3, 3), np.int32)), 1.0)


def test_boundary_weights_random_matches_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=(2, 4, 5, 3)).astype(np.int32)
    np.testing.assert_array_equal(boundary_weights(labels), _np_boundary(labels))


def test_refiner_loss_matches_numpy():
    logits, labels = _case(6, shape=(2, 6, 5, 4))
    p, y = _np_softmax(logits), _np_onehot(labels, K)
    w = _np_boundary(labels)
    mse = np.mean(w * ((p - y) ** 2).sum(-1))
    dice_ce = _np_dice(logits, labels) + _np_ce(logits, labels)
    expected = dice_ce + 0.1 * mse
    np.testing.assert_allclose(float(refiner_loss(logits, labels)), expected, rtol=2e-6)
    np.testing.assert_allclose(float(boundary_mse(logits, labels)), mse, rtol=2e-6)
    unweighted = np.mean(((p - y) ** 2).sum(-1))
    ours = boundary_mse(logits, labels, jnp.ones(labels.shape))
    np.testing.assert_allclose(float(ours), unweighted, rtol=2e-6)
    # options pass through
    ours = refiner_loss(logits, labels, mse_weight=0.5, edge_weight=2.0, squared=True)
    w2 = _np_boundary(labels, 2.0)
    ref = (
        _np_dice(logits, labels, squared=True)
        + _np_ce(logits, labels)
        + 0.5 * np.mean(w2 * ((p - y) ** 2).sum(-1))
    )
    np.testing.assert_allclose(float(ours), ref, rtol=2e-6)


def test_medsegdiff_loss():
    logits, labels = _case(7, shape=(2, 6, 6))
    rng = np.random.default_rng(8)
    eps = rng.standard_normal((2, 6, 6, K)).astype(np.float32)
    eps_pred = rng.standard_normal((2, 6, 6, K)).astype(np.float32)
    expected = np.mean((eps.astype(np.float64) - eps_pred) ** 2) + 10 * (
        _np_dice(logits, labels) + _np_ce(logits, labels)
    )
    ours = medsegdiff_loss(eps_pred, eps, logits, labels)
    np.testing.assert_allclose(float(ours), expected, rtol=2e-6)


@pytest.mark.parametrize(
    "fn",
    [
        partial(soft_dice_loss, squared=True),
        partial(soft_dice_loss, squared=False, include_background=False),
        partial(soft_dice_loss, pooled=True, squared=True),
        dice_ce_loss,
        refiner_loss,
    ],
    ids=["dice_sq", "dice_nobg", "dice_pooled", "dice_ce", "refiner"],
)
def test_gradients_finite_and_jit(fn):
    logits, labels = _case(9, shape=(2, 6, 6, 6))
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(logits), labels)
    assert grad.shape == logits.shape and np.isfinite(np.asarray(grad)).all()
    assert np.abs(np.asarray(grad)).max() > 0
    np.testing.assert_allclose(float(value), float(fn(logits, labels)), rtol=1e-6)
    # saturated logits (softmax exactly one-hot in float32): gradients stay finite
    big = 100.0 * np.asarray(one_hot(labels, K))
    assert np.isfinite(np.asarray(jax.grad(fn)(jnp.asarray(big), labels))).all()


def test_boundary_weights_jit():
    _, labels = _case(9, shape=(2, 6, 6, 6))
    np.testing.assert_array_equal(jax.jit(boundary_weights)(labels), boundary_weights(labels))


def test_bad_inputs():
    logits, labels = _case(10, shape=(2, 4, 4))
    with pytest.raises(InputError, match="channel axis"):
        dice_ce_loss(logits, np.asarray(one_hot(labels, K)))
    with pytest.raises(InputError, match="does not match"):
        soft_dice_loss(logits, labels[:, :3])
    with pytest.raises(InputError, match="integer"):
        refiner_loss(logits, labels.astype(np.float32))
    with pytest.raises(InputError, match="K >= 2"):
        soft_dice_loss(logits[..., :1], labels)
    with pytest.raises(InputError, match="lambda_ce"):
        dice_ce_loss(logits, labels, lambda_ce=-1.0)
    with pytest.raises(InputError, match="unknown"):
        dice_ce_loss(logits, labels, squared_pred=True)
    with pytest.raises(InputError, match="weights"):
        boundary_mse(logits, labels, np.ones((2, 4, 3), np.float32))
    with pytest.raises(InputError, match="num_classes"):
        one_hot(labels, 0)
    with pytest.raises(InputError, match="spatial"):
        boundary_weights(np.zeros((3,), np.int32))


# ---------------------------------------------------------------- parity with MONAI (-m ref)


def _to_torch(logits, labels):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.moveaxis(logits, -1, 1).astype(np.float64))
    y = torch.from_numpy(labels[:, None].astype(np.int64))
    return x, y


@pytest.mark.ref
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("squared", [False, True])
def test_dice_matches_monai(squared, include_background, batch):
    losses = pytest.importorskip("monai.losses")
    logits, labels = _case(11)
    x, y = _to_torch(logits, labels)
    ref = losses.DiceLoss(
        to_onehot_y=True,
        softmax=True,
        squared_pred=squared,
        include_background=include_background,
        batch=batch,
    )(x, y)
    ours = soft_dice_loss(
        logits, labels, squared=squared, include_background=include_background, batch=batch
    )
    assert abs(float(ours) - float(ref)) <= 1e-5


@pytest.mark.ref
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"squared": True},
        {"include_background": False, "lambda_dice": 0.5, "lambda_ce": 2.0},
        {"squared": True, "batch": True, "smooth_nr": 0.0, "smooth_dr": 1e-3},
    ],
)
def test_dice_ce_matches_monai(kwargs):
    losses = pytest.importorskip("monai.losses")
    logits, labels = _case(12)
    x, y = _to_torch(logits, labels)
    monai_kwargs = {("squared_pred" if k == "squared" else k): v for k, v in kwargs.items()}
    ref = losses.DiceCELoss(to_onehot_y=True, softmax=True, **monai_kwargs)(x, y)
    ours = dice_ce_loss(logits, labels, **kwargs)
    assert abs(float(ours) - float(ref)) <= 1e-5
