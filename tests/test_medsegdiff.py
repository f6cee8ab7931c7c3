"""MedSegDiff (paper 002 Sec. 3.4): the FF-Parser at any size (Eq. 11), the two-headed
network, Eq. 12's training loss on axial slices of 3-D crops, and DPM-Solver++ sampling
fused with the calibration map. End to end on the coarse model: tests/test_refine.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.counterfactual import medsegdiff
from jaxcf.counterfactual.model import MethodModel
from jaxcf.errors import InputError
from jaxcf.models.medsegdiff import FFParser, spectral_resampling
from jaxcf.training.medsegdiff_task import axial_slices


@pytest.mark.parametrize("size", [(8, 8), (13, 10), (32, 20)])
def test_ff_parser_filters_the_spectrum_at_any_size(size):
    parser = FFParser(3, spectral_size=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, *size, 3))
    np.testing.assert_allclose(parser(x), x, atol=1e-5)  # A = 1 at init: the identity
    parser.real[...] = jnp.full((8, 5, 3), 0.5)  # a constant map scales at any size
    np.testing.assert_allclose(parser(x), 0.5 * x, atol=1e-5)
    # A learnt map: Eq. 11 with A read off the grid by linear interpolation in normalised
    # frequency, separably, against numpy's FFT and np.interp.
    rng = np.random.default_rng(1)
    real, imag = rng.standard_normal((2, 8, 5, 3)).astype(np.float32)
    parser.real[...], parser.imag[...] = jnp.asarray(real), jnp.asarray(imag)
    grid_rows, grid_cols = np.fft.fftshift(np.fft.fftfreq(8)), np.fft.rfftfreq(8)
    rows, cols = np.fft.fftfreq(size[0]), np.fft.rfftfreq(size[1])

    def resample(a):  # (8, 5) -> (H, W // 2 + 1); rows periodic, as the spectrum is
        a = np.stack([np.interp(rows, grid_rows, a[:, j], period=1.0) for j in range(5)], 1)
        return np.stack([np.interp(cols, grid_cols, r) for r in a])

    amap = np.stack([resample(real[..., c]) + 1j * resample(imag[..., c]) for c in range(3)], -1)
    spectrum = np.fft.rfft2(np.asarray(x, np.float64), axes=(1, 2)) * amap
    expected = np.fft.irfft2(spectrum, s=size, axes=(1, 2))
    np.testing.assert_allclose(parser(x), expected, atol=1e-4)


def test_spectral_map_is_its_grid_at_the_grid_size_and_interpolates_elsewhere():
    rows, cols = spectral_resampling(8, 8, 8)
    # At H = W = grid the resampling is a permutation: fftshift order back to fftfreq's.
    np.testing.assert_array_equal(rows, np.eye(8)[np.fft.ifftshift(np.arange(8))])
    np.testing.assert_array_equal(cols, np.eye(5))
    rows, cols = spectral_resampling(16, 12, 8)
    np.testing.assert_allclose(rows.sum(1), 1.0)
    np.testing.assert_allclose(cols.sum(1), 1.0)
    # Frequency 1/16 of a 16-row map sits half way between the grid's 0 and 1/8; 7/16 half
    # way between the grid's last row (3/8) and its first (-1/2, the same as +1/2).
    np.testing.assert_allclose(rows[1, 4:6], [0.5, 0.5])
    np.testing.assert_allclose(rows[7, [7, 0]], [0.5, 0.5])


def _toy(prior: bool):
    config = {"family": "medsegdiff", "preset": "toy", "prior": prior}
    return models.build(config, jax.random.key(0))


def test_network_stacks_noise_and_calibration_and_its_highway_ignores_s_t_and_t():
    apply, params = _toy(prior=True)
    image = jax.random.normal(jax.random.key(1), (2, 12, 20, 4))
    prior = jax.nn.softmax(jax.random.normal(jax.random.key(2), (2, 12, 20, 4)))
    outs = []
    for seed, t in ((3, 10), (4, 900)):
        s_t = jax.random.normal(jax.random.key(seed), (2, 12, 20, 4))
        x = jnp.concatenate([image, s_t, prior], axis=-1)
        outs.append(apply(params, x, jnp.full((2,), t)))
    assert outs[0].shape == (2, 12, 20, 8)
    np.testing.assert_array_equal(outs[0][..., :4], 0.0)  # eps head zero-initialised
    np.testing.assert_allclose(outs[0][..., 4:], outs[1][..., 4:], atol=1e-6)
    assert float(jnp.std(outs[0][..., 4:])) > 0.0
    # Once trained (here: every weight perturbed, the zero-initialised layers included), the
    # noise prediction reads t and s_t.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    trained = jax.tree.unflatten(treedef, noisy)
    eps = [apply(trained, x, jnp.full((2,), t))[..., :4] for t in (10, 900)]
    assert float(jnp.abs(eps[0] - eps[1]).max()) > 1e-3
    other = x.at[..., 4:8].add(1.0)
    assert float(jnp.abs(apply(trained, other, jnp.full((2,), 10))[..., :4] - eps[0]).max()) > 1e-3
    with pytest.raises(InputError, match=r"\[I; s_t; C\] of shape \(B, H, W, 12\)"):
        apply(params, x[..., :8], jnp.zeros((2,)))
    with pytest.raises(InputError, match="multiples of 2"):
        apply(params, x[:, :11], jnp.zeros((2,)))


def test_axial_slices_pick_z_planes_of_each_volume():
    volumes = np.arange(2 * 3 * 3 * 5 * 2).reshape(2, 3, 3, 5, 2)
    index = np.array([[4, 0], [1, 1]])
    out = np.asarray(axial_slices(jnp.asarray(volumes), jnp.asarray(index)))
    expected = [volumes[0, :, :, 4], volumes[0, :, :, 0], volumes[1, :, :, 1], volumes[1, :, :, 1]]
    np.testing.assert_array_equal(out, np.stack(expected))


def _calibrated(calibration: jax.Array, eps_scale: float):
    """A MedSegDiff stand-in: calibration logits fixed, noise prediction eps_scale * s_t."""

    def apply(weights, x, t, cond):
        return jnp.concatenate([eps_scale * x[..., 4:8], calibration], axis=-1)

    return apply


def test_sampling_fuses_the_calibration_map_into_every_step():
    schedule = D.linear(1000)
    classes = jax.random.randint(jax.random.key(0), (2, 8, 8), 0, 4)
    logits = 8.0 * jax.nn.one_hot(classes, 4)
    batch = {"image": jnp.zeros((2, 8, 8, 4))}
    cfg = medsegdiff.default_config()
    cfg.calibration_weight = 1.0  # the fused estimate is the calibration map at every step
    fn = medsegdiff.build(MethodModel(apply=_calibrated(logits, 0.3), schedule=schedule), cfg)
    out = jax.jit(fn)(None, batch, jax.random.key(1))
    np.testing.assert_allclose(out["counterfactual"], jax.nn.softmax(logits), atol=1e-5)
    np.testing.assert_array_equal(out["mask"], classes)
    np.testing.assert_allclose(out["calibration"], jax.nn.softmax(logits), atol=1e-6)
    # Half and half inside the solver is not the diffusion sample averaged with the map
    # afterwards: the fused estimate steers every later step.
    cfg.calibration_weight = 0.0
    fn = medsegdiff.build(MethodModel(apply=_calibrated(logits, 0.3), schedule=schedule), cfg)
    alone = fn(None, batch, jax.random.key(1))["counterfactual"]
    cfg.calibration_weight = 0.5
    fn = medsegdiff.build(MethodModel(apply=_calibrated(logits, 0.3), schedule=schedule), cfg)
    fused = fn(None, batch, jax.random.key(1))["counterfactual"]
    after = jnp.clip(0.5 * alone + 0.5 * jax.nn.softmax(logits), 0.0, 1.0)
    assert float(jnp.abs(fused - after).max()) > 0.05
    # Without the calibration map the diffusion branch alone decides: a network that
    # predicts eps = s_t says x0 = (1 - sigma) / alpha * s_t, not the calibration classes.
    cfg.calibration_weight = 0.0
    fn = medsegdiff.build(MethodModel(apply=_calibrated(logits, 1.0), schedule=schedule), cfg)
    alone = fn(None, batch, jax.random.key(1))
    assert float(jnp.mean(alone["mask"] == classes)) < 0.5
    with pytest.raises(InputError, match="coarse prior must be class probabilities"):
        fn(None, {**batch, "prior": jnp.zeros((2, 8, 8, 3))}, jax.random.key(1))
    cfg.calibration_weight = 1.5
    with pytest.raises(InputError, match="calibration_weight must be in"):
        medsegdiff.build(MethodModel(apply=_calibrated(logits, 1.0), schedule=schedule), cfg)
    with pytest.raises(InputError, match="prediction='eps'"):
        medsegdiff.build(
            MethodModel(apply=_calibrated(logits, 1.0), schedule=D.cosine(1000, prediction="x0")),
            medsegdiff.default_config(),
        )


def test_predict_slices_runs_a_2d_method_over_axial_slices_and_crops_the_padding():
    from jaxcf.experiments.refine_eval import predict_slices

    priors, shapes = [], []

    def fn(weights, batch, key):  # a per-pixel map of the image: softmax([I; I])
        image = batch["image"]
        shapes.append(image.shape)
        priors.append(np.asarray(batch["prior"]))
        return {"counterfactual": jax.nn.softmax(jnp.concatenate([image, image], -1), -1)}

    rng = np.random.default_rng(0)
    volume = rng.standard_normal((7, 9, 5, 6)).astype(np.float32)  # (X, Y, Z, 2 + prior 4)
    volume[..., 2:] = 0.0
    probs = predict_slices(fn, None, volume, jax.random.key(0), channels=2, multiple=4, chunk=3)
    image = volume[..., :2]
    expected = jax.nn.softmax(np.concatenate([image, image], -1), -1)
    np.testing.assert_allclose(probs, expected, atol=1e-6)  # (X, Y, Z, 4), the axes kept
    assert shapes == [(3, 8, 12, 2), (3, 8, 12, 2)]  # 5 slices in chunks of 3; 7 x 9 -> 8 x 12
    prior = np.concatenate(priors)  # (6, 8, 12, 4): zeros inside, background in the padding
    assert (prior[:5, :7, :9] == 0).all() and (prior[5:, ..., 0] == 1).all()
    assert (prior[:, 7:, :, 0] == 1).all() and (prior[:, :, 9:, 0] == 1).all()
    assert (prior[:, 7:, :, 1:] == 0).all() and (prior[:, :, 9:, 1:] == 0).all()
