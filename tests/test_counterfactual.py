"""Counterfactual methods on closed-form denoisers (jaxcf.counterfactual).

The "trained model" is the exact optimal denoiser of a tiny labelled image set
(jaxcf.diffusion.mixture_denoiser): four smooth two-channel 16x16 anatomies, each present
once as healthy (label 0) and once with a bright 5x5 square "tumour" (label 1); label 2 is
the null condition. For such a model the right counterfactual is known exactly: the
healthy twin of the same anatomy. Tolerances are measured values with ~2x headroom.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import counterfactual as C
from jaxcf import diffusion as D

HEALTHY, TUMOUR, NULL = 0, 1, 2
SIZE, CHANNELS, VALUE = 16, 2, 0.9
# Square corners; all inside the left half (columns < 8) for the half-region test.
CORNERS = [(2, 1), (9, 2), (5, 3), (10, 1)]
NULL_COND = {"label": jnp.array([NULL])}


def _anatomies(n: int = 4, seed: int = 0) -> np.ndarray:
    """(n, 16, 16, 2) smooth sinusoidal 'anatomies' in [-0.6, 0.2]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : 1 : SIZE * 1j, 0 : 1 : SIZE * 1j]
    images = []
    for _ in range(n):
        fy, fx, phase = rng.uniform(-1, 1, (3, CHANNELS, 1, 1))
        images.append(np.moveaxis(0.4 * np.sin(3 * fy * yy + 4 * fx * xx + 6 * phase) - 0.2, 0, -1))
    return np.stack(images).astype(np.float32)


def _squares(corners, size: int = 5) -> np.ndarray:
    """(n, 16, 16) bool masks of size x size squares at the given corners."""
    masks = np.zeros((len(corners), SIZE, SIZE), bool)
    for i, (y, x) in enumerate(corners):
        masks[i, y : y + size, x : x + size] = True
    return masks


HEALTHY_IMAGES = _anatomies()
SQUARES = _squares(CORNERS)
TUMOUR_IMAGES = np.where(SQUARES[..., None], VALUE, HEALTHY_IMAGES)
SCHEDULE = D.linear()


def _labels(label: int, n: int = 4) -> dict:
    return {"label": jnp.full((n,), label, jnp.int32)}


def _weighted(std: float, schedule=SCHEDULE, healthy=HEALTHY_IMAGES, tumour=TUMOUR_IMAGES):
    """(apply(means, x_t, t, cond), means): the closed-form denoiser with its component
    means as the "weights" argument, as a trained network takes its parameters."""
    labels = jnp.array([HEALTHY] * len(healthy) + [TUMOUR] * len(tumour))

    def apply(means, x_t, t, cond):
        return D.mixture_denoiser(schedule, means, std, labels=labels, null_label=NULL)(
            x_t, t, cond
        )

    return apply, jnp.asarray(np.concatenate([healthy, tumour]))


def _model(std: float, schedule=SCHEDULE, healthy=HEALTHY_IMAGES, tumour=TUMOUR_IMAGES):
    apply, means = _weighted(std, schedule, healthy, tumour)
    return functools.partial(apply, means)


def _make(maker, model, *args, **kwargs):
    """A make_* factory around a weight-free model_fn: the compiled function with its
    (empty) weights argument bound."""
    fn = maker(lambda params, x, t, cond: model(x, t, cond), *args, **kwargs)
    return functools.partial(fn, None)


# --- Diff-SCM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffscm_fn():
    # Paper / reference values: ddim100, L = 0.75, w = 3, s = 0.99. A sharp mixture (s = 0.01)
    # so that the only error left is the sampler's own.
    apply, means = _weighted(0.01)
    fn = C.make_diffscm(
        apply, SCHEDULE, num_steps=100, strength=0.75, guidance_scale=3.0, quantile=0.99
    )
    return functools.partial(fn, means)


def test_diffscm_leaves_a_healthy_image_unchanged(diffscm_fn):
    # Sanchez et al. footnote 7: intervening "healthy" on a healthy image must not change it;
    # DDIM encode + guided decode is then a near-identity round trip.
    x = jnp.asarray(HEALTHY_IMAGES)
    out = diffscm_fn(x, NULL_COND, _labels(HEALTHY))
    assert out["counterfactual"].shape == x.shape and out["heatmap"].shape == x.shape[:-1]
    assert out["latent"].shape == x.shape
    assert float(jnp.max(out["heatmap"])) < 2e-3  # measured 9.7e-4


def test_diffscm_removes_the_square(diffscm_fn):
    x = jnp.asarray(TUMOUR_IMAGES)
    out = diffscm_fn(x, NULL_COND, _labels(HEALTHY))
    heat = np.asarray(out["heatmap"])
    # |0.9 - anatomy| >= 0.7 inside the square; the rest of the anatomy is preserved.
    assert heat[SQUARES].min() > 0.6  # measured 0.742
    assert heat[~SQUARES].max() < 2e-3  # measured 7.3e-4
    np.testing.assert_allclose(out["counterfactual"], HEALTHY_IMAGES, atol=2e-3)  # 9.5e-4
    # Intervening with the factual label (tumour) changes nothing.
    same = diffscm_fn(x, NULL_COND, _labels(TUMOUR))
    assert float(jnp.max(same["heatmap"])) < 2e-3  # measured 7.4e-4


def test_diffscm_on_noisy_inputs_changes_only_the_square():
    # One anatomy, s = 0.05, inputs drawn from the components: x = mean + s z. The latent is
    # now genuinely noisy, and guidance acts only along healthy - tumour (the square), so
    # the texture z must survive outside it. Residual: first-order inversion error.
    s = 0.05
    model = _model(s, healthy=HEALTHY_IMAGES[:1], tumour=TUMOUR_IMAGES[:1])
    fn = _make(C.make_diffscm, model, SCHEDULE, num_steps=100, strength=0.75)
    z = s * np.asarray(jax.random.normal(jax.random.key(7), (4, SIZE, SIZE, CHANNELS)))
    healthy, tumour = HEALTHY_IMAGES[:1] + z, TUMOUR_IMAGES[:1] + z
    out = fn(jnp.asarray(tumour), NULL_COND, _labels(HEALTHY))
    assert float(jnp.std(out["latent"])) > 0.6  # measured 0.85 (level t = 740)
    heat, square = np.asarray(out["heatmap"]), np.broadcast_to(SQUARES[:1], (4, SIZE, SIZE))
    assert heat[square].min() > 0.7  # measured 1.02
    assert heat[~square].max() < 0.1  # measured 0.050
    assert heat[square].mean() > 40 * heat[~square].mean()  # measured 86x
    assert np.abs(np.asarray(out["counterfactual"]) - healthy).max() < 0.12  # measured 0.062
    same = fn(jnp.asarray(healthy), NULL_COND, _labels(HEALTHY))
    assert float(jnp.max(same["heatmap"])) < 0.1  # measured 0.050


def test_diffscm_applies_dynamic_normalisation_at_every_step():
    # The last DDIM step returns the (normalised) x0 estimate itself, so with dynamic
    # normalisation no pixel of the counterfactual can leave [-1, 1]; data at 2x
    # intensity does without it.
    bright = 2.0 * np.concatenate([HEALTHY_IMAGES, TUMOUR_IMAGES])
    model = _model(0.01, healthy=bright[:4], tumour=bright[4:])
    x = jnp.asarray(bright[4:])
    for quantile, inside in ((0.99, True), (None, False)):
        fn = _make(C.make_diffscm, model, SCHEDULE, num_steps=10, quantile=quantile)
        peak = float(jnp.max(jnp.abs(fn(x, NULL_COND, _labels(HEALTHY))["counterfactual"])))
        assert (peak <= 1.0 + 1e-6) == inside, (quantile, peak)


def test_diffscm_without_normalisation_falls_back_to_the_space_transform():
    """quantile=None (and every non-pixel space, where Sec. 3.4 does not apply) keeps the
    model's own x0 transform, the data-range clip: the counterfactual of 2x-bright data
    stays in [-0.5, 0.5] when that is the clip, and the method plug-in passes the model's
    transform through."""
    bright = 2.0 * np.concatenate([HEALTHY_IMAGES, TUMOUR_IMAGES])
    model = _model(0.01, healthy=bright[:4], tumour=bright[4:])
    x = jnp.asarray(bright[4:])
    clip = functools.partial(D.static_clip, value=0.5)
    fn = _make(C.make_diffscm, model, SCHEDULE, num_steps=10, quantile=None, x0_transform=clip)
    peak = float(jnp.max(jnp.abs(fn(x, NULL_COND, _labels(HEALTHY))["counterfactual"])))
    assert peak <= 0.5 + 1e-6, peak

    from jaxcf.counterfactual import registry
    from jaxcf.counterfactual.model import MethodModel, null_label

    diffscm = registry.get("diffscm")

    apply, means = _weighted(0.01, healthy=bright[:4], tumour=bright[4:])
    method_model = MethodModel(
        apply=apply,
        schedule=SCHEDULE,
        null_cond=null_label(2),
        num_classes=2,
        space="wavelet",  # no dynamic normalisation outside pixel space
        x0_transform=clip,
    )
    cfg = diffscm.default_config()
    cfg.num_steps = 10
    out = diffscm.build(method_model, cfg)(means, {"image": x}, jax.random.key(0))
    assert float(jnp.max(jnp.abs(out["counterfactual"]))) <= 0.5 + 1e-6


def test_diffscm_guidance_scale_and_eager_path():
    x = jnp.asarray(TUMOUR_IMAGES[:2])
    kwargs = dict(null_cond=NULL_COND, target_cond=_labels(HEALTHY, 2), num_steps=20)
    eager = C.diffscm(_model(0.01), SCHEDULE, x, **kwargs)
    jitted = _make(C.make_diffscm, _model(0.01), SCHEDULE, num_steps=20)(
        x, NULL_COND, _labels(0, 2)
    )
    np.testing.assert_allclose(eager["counterfactual"], jitted["counterfactual"], atol=1e-5)
    assert float(np.asarray(eager["heatmap"])[SQUARES[:2]].min()) > 0.6
    # w = 0 decodes with the unconditional model, which the encoder used: a round trip.
    unguided = C.diffscm(_model(0.01), SCHEDULE, x, guidance_scale=0.0, **kwargs)
    assert float(jnp.max(unguided["heatmap"])) < 1e-3  # measured 3.7e-4
    with pytest.raises(ValueError, match="strength"):
        C.diffscm(_model(0.01), SCHEDULE, x, strength=0.0, **kwargs)
    with pytest.raises(ValueError, match="channels-last"):
        C.diffscm(_model(0.01), SCHEDULE, x[:, 0, :, 0], **kwargs)


# --- promptable: the mask-prompt hook -----------------------------------------------------------


def test_hook_draws_known_region_from_the_posterior():
    # Alg. 1 lines 4-6 against numpy formulas: q(x_s | x_t, x0) for the gap t = 500 -> s = 490.
    n, t, s = 20000, 500, 490
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    x0 = jnp.full((n, 2, 1), 0.5)
    x_t = jnp.full((n, 2, 1), -0.3)
    region = jnp.zeros((n, 2, 1))
    tb, sb = jnp.full((n,), t), jnp.full((n,), s)
    beta = 1.0 - abar[t] / abar[s]
    mean = (np.sqrt(abar[s]) * beta * 0.5 + np.sqrt(1 - beta) * (1 - abar[s]) * -0.3) / (
        1 - abar[t]
    )
    std = np.sqrt((1 - abar[s]) / (1 - abar[t]) * beta)
    after = C.mask_prompt_hook(SCHEDULE, x0, region, known="posterior").after
    y = np.asarray(after(jnp.zeros_like(x0), x_t, tb, sb, jax.random.key(0)))
    assert abs(y.mean() - mean) < 4 * std / np.sqrt(y.size)
    assert abs(y.std() / std - 1) < 0.02
    # RePaint's forward noising ignores x_t: mean sqrt(abar_s) x0, std sqrt(1 - abar_s).
    forward = C.mask_prompt_hook(SCHEDULE, x0, region, known="forward").after
    y = np.asarray(forward(jnp.zeros_like(x0), x_t, tb, sb, jax.random.key(0)))
    assert abs(y.mean() - np.sqrt(abar[s]) * 0.5) < 4 * np.sqrt(1 - abar[s]) / np.sqrt(y.size)
    # The last step (s = -1) returns x0 exactly; the prompted region takes x_next.
    half = jnp.zeros((n, 2, 1)).at[:, 1].set(1.0)
    last = C.mask_prompt_hook(SCHEDULE, x0, half).after
    y = last(jnp.full_like(x0, 7.0), x_t, tb, jnp.full((n,), -1), jax.random.key(1))
    np.testing.assert_array_equal(y[:, 0], 0.5)
    np.testing.assert_array_equal(y[:, 1], 7.0)


# --- promptable sampling --------------------------------------------------------------------------


@pytest.mark.parametrize("known", ["posterior", "forward"])
def test_all_known_region_returns_the_input(known):
    x = jnp.asarray(TUMOUR_IMAGES)
    y = C.promptable_sample(
        _model(0.05),
        SCHEDULE,
        x,
        jnp.zeros((*x.shape[:-1], 1)),
        key=jax.random.key(0),
        cond=_labels(HEALTHY),
        null_cond=NULL_COND,
        num_steps=20,
        known=known,
    )
    np.testing.assert_allclose(y, x, atol=1e-6, rtol=0)


def test_all_prompted_region_is_a_plain_guided_sample():
    model, x, key = _model(0.05), jnp.asarray(TUMOUR_IMAGES), jax.random.key(3)
    y = C.promptable_sample(
        model,
        SCHEDULE,
        x,
        jnp.ones((*x.shape[:-1], 1)),
        key=key,
        cond=_labels(HEALTHY),
        null_cond=NULL_COND,
        guidance_scale=3.0,
        num_steps=20,
    )
    # Documented key use: split(key)[0] draws x_T, split(key)[1] drives the sampler.
    init_key, sample_key = jax.random.split(key)
    guided = D.classifier_free_guidance(model, 3.0, NULL_COND)
    x_T = jax.random.normal(init_key, x.shape)
    plain = D.ddpm_sample(
        guided, SCHEDULE, x_T, key=sample_key, num_steps=20, cond=_labels(HEALTHY)
    )
    np.testing.assert_allclose(y, plain, atol=1e-6, rtol=0)
    # ... which is a healthy anatomy (the guided model's class), not the input.
    nearest = np.abs(np.asarray(y)[:, None] - HEALTHY_IMAGES[None]).mean(axis=(2, 3, 4)).min(1)
    assert nearest.max() < 0.03  # measured 0.013-0.014


@pytest.mark.parametrize(
    ("resample", "known"), [(None, "posterior"), (None, "forward"), ((2, 2), "posterior")]
)
def test_half_region_keeps_the_known_half_and_removes_the_square(resample, known):
    x = jnp.asarray(TUMOUR_IMAGES)
    region = np.zeros((*x.shape[:-1], 1), np.float32)
    region[:, :, : SIZE // 2] = 1.0  # the left half, which holds every square
    fn = _make(
        C.make_promptable,
        _model(0.05),
        SCHEDULE,
        num_steps=20,
        guidance_scale=3.0,
        resample=resample,
        known=known,
    )
    out = fn(x, jnp.asarray(region), jax.random.key(1), _labels(HEALTHY), NULL_COND)
    cf = np.asarray(out["counterfactual"])
    left = np.zeros((SIZE, SIZE), bool)
    left[:, : SIZE // 2] = True
    # The known half is the input (paste or not: the sampler already ends on x0 there).
    np.testing.assert_allclose(cf[:, :, SIZE // 2 :], TUMOUR_IMAGES[:, :, SIZE // 2 :], atol=1e-6)
    assert float(np.max(np.asarray(out["heatmap"])[:, ~left])) < 1e-6
    # The prompted half follows the model: the healthy twin (per-pixel noise ~ s = 0.05).
    err = np.abs(cf - HEALTHY_IMAGES).mean(-1)[:, left]
    assert err.mean() < 0.03 and err.max() < 0.08  # measured 0.012-0.014 / 0.035-0.037
    assert np.asarray(out["heatmap"])[SQUARES].min() > 0.5


def test_start_strength_runs_only_the_tail_of_the_chain():
    seen = []

    def model(x, t, cond):
        jax.debug.callback(lambda tt: seen.append(int(tt[0])), t)
        return _model(0.05)(x, t, cond)

    x = jnp.asarray(TUMOUR_IMAGES)
    region = jnp.asarray(SQUARES[..., None], jnp.float32)
    y = C.promptable_sample(
        model,
        SCHEDULE,
        x,
        region,
        key=jax.random.key(0),
        cond=_labels(HEALTHY),
        null_cond=NULL_COND,
        num_steps=10,
        start_strength=0.5,
    )
    jax.effects_barrier()
    assert seen == [400, 300, 200, 100, 0]  # the last 5 of the 10-step leading grid
    np.testing.assert_allclose(np.asarray(y)[~SQUARES], TUMOUR_IMAGES[~SQUARES], atol=1e-6)
    assert np.abs(np.asarray(y) - HEALTHY_IMAGES).mean(-1)[SQUARES].mean() < 0.02  # 0.0089


# --- latent models --------------------------------------------------------------------------------


def test_latent_region_max_pools():
    region = np.zeros((2, 16, 16, 1), np.float32)
    region[0, 5, 6] = 1.0  # one pixel -> latent cell (5 // 2, 6 // 2) only
    pooled = np.asarray(C.latent_region(region, (8, 8)))
    assert pooled.shape == (2, 8, 8, 1)
    assert pooled.sum() == 1.0 and pooled[0, 2, 3, 0] == 1.0
    assert np.asarray(C.latent_region(region, (4, 4)))[0, 1, 1, 0] == 1.0  # factor 4
    volume = np.zeros((1, 8, 8, 8, 1), bool)
    volume[0, 7, 0, 3] = True  # 3-D, bool in
    pooled = np.asarray(C.latent_region(volume, (2, 4, 8)))
    assert pooled.sum() == 1.0 and pooled[0, 1, 0, 3, 0] == 1.0
    with pytest.raises(ValueError, match="divide"):
        C.latent_region(region, (6, 8))


def _encode(x):  # toy "VAE": 2x2 average pool
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _decode(z):  # nearest-neighbour upsampling
    return jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2)


def test_latent_model_samples_in_latent_space_and_pastes_known_pixels():
    enc = functools.partial(lambda f, a: np.asarray(f(jnp.asarray(a))), _encode)
    model = _model(0.05, healthy=enc(HEALTHY_IMAGES), tumour=enc(TUMOUR_IMAGES))
    x = jnp.asarray(TUMOUR_IMAGES)
    region = jnp.asarray(SQUARES[..., None], jnp.float32)  # odd corners: straddles cells
    args = (x, region, jax.random.key(2), _labels(HEALTHY), NULL_COND)
    options = dict(num_steps=20, encode=lambda p, a: _encode(a), decode=lambda p, z: _decode(z))
    out = _make(C.make_promptable, model, SCHEDULE, **options)(*args)
    cf = np.asarray(out["counterfactual"])
    np.testing.assert_array_equal(cf[~SQUARES], TUMOUR_IMAGES[~SQUARES])  # pasted back
    np.testing.assert_array_equal(np.asarray(out["heatmap"])[~SQUARES], 0.0)
    # Inside, the decoded healthy latent: the pooled healthy twin, no tumour leaking in.
    target = np.asarray(_decode(_encode(jnp.asarray(HEALTHY_IMAGES))))
    assert np.abs(cf - target).mean(-1)[SQUARES].mean() < 0.03  # measured 0.015
    # Without the paste the toy codec's reconstruction error shows up outside the prompt.
    raw = _make(C.make_promptable, model, SCHEDULE, paste_known=False, **options)(*args)
    assert float(np.max(np.asarray(raw["heatmap"])[~SQUARES])) > 0.03  # measured 0.069


# --- two-step removal + regeneration, random prompts ----------------------------------------------


def test_position_transfer_moves_the_tumour():
    # One anatomy, tumour at A or at B. Remove A, then grow a tumour in B's prompt.
    healthy = HEALTHY_IMAGES[:1]
    at_a, at_b = _squares([(2, 2)]), _squares([(9, 9)])
    tumours = np.concatenate([np.where(m[..., None], VALUE, healthy) for m in (at_a, at_b)])
    model = _model(0.05, healthy=healthy, tumour=tumours)
    out = C.position_transfer(
        model,
        SCHEDULE,
        jnp.asarray(tumours[:1]),
        jnp.asarray(at_a[..., None], jnp.float32),
        jnp.asarray(at_b[..., None], jnp.float32),
        key=jax.random.key(0),
        healthy_cond=_labels(HEALTHY, 1),
        tumour_cond=_labels(TUMOUR, 1),
        null_cond=NULL_COND,
        num_steps=20,
    )
    assert np.abs(np.asarray(out["healthy"]) - healthy).max() < 0.1  # measured 0.041
    moved = np.asarray(out["transferred"])[0]
    assert np.abs(moved[at_b[0]] - VALUE).max() < 0.1  # measured 0.040
    np.testing.assert_array_equal(moved[~at_b[0]], np.asarray(out["healthy"])[0][~at_b[0]])
    assert np.asarray(out["removal_heatmap"])[0][at_a[0]].min() > 0.5
    assert np.asarray(out["regeneration_heatmap"])[0][at_b[0]].min() > 0.5


def test_random_region_lies_inside_the_brain():
    brain = np.zeros((8, 32, 32), bool)
    brain[:, 4:28, 8:24] = True
    draw = jax.jit(C.random_region, static_argnums=(1, 3))
    region = np.asarray(draw(jax.random.key(0), (8, 32, 32, 4), jnp.asarray(brain), (0.1, 0.2)))
    assert region.shape == (8, 32, 32, 1)
    assert not region[..., 0][~brain].any()
    area = region.sum(axis=(1, 2, 3))
    # An ellipse with semi-axes in [3.2, 6.4] px covers pi*3.2^2 ~ 32 to pi*6.4^2 ~ 129 px,
    # less where it is cut by the brain boundary (centre pixel always inside).
    assert (area >= 1).all() and (area <= 135).all() and area.mean() > 20
    assert len({tuple(np.argwhere(r[..., 0]).mean(0).round(1)) for r in region}) == 8
    again = np.asarray(draw(jax.random.key(0), (8, 32, 32, 4), jnp.asarray(brain), (0.1, 0.2)))
    np.testing.assert_array_equal(region, again)


# --- one compile per method, input validation ---------------------------------------------------


def test_make_functions_compile_once_with_the_weights_as_an_argument():
    traces = []
    apply, means = _weighted(0.05)

    def traced_apply(weights, x, t, cond):
        traces.append(1)  # runs only while JAX traces
        return apply(weights, x, t, cond)

    scm = C.make_diffscm(traced_apply, SCHEDULE, num_steps=10)
    outs = [
        scm(weights, jnp.asarray(TUMOUR_IMAGES), NULL_COND, _labels(HEALTHY))["counterfactual"]
        for weights in (means, means + 0.5)  # other weights: the same executable
    ]
    assert scm._cache_size() == 1 and len(traces) == 2  # one trace each: encoder, decoder
    # The weights really are an input (not constants folded in at the first call).
    assert float(jnp.max(jnp.abs(outs[1] - outs[0]))) > 0.1
    prompt = C.make_promptable(traced_apply, SCHEDULE, num_steps=10)
    region = jnp.asarray(SQUARES[..., None], jnp.float32)
    for seed in range(2):
        args = (means, jnp.asarray(TUMOUR_IMAGES), region, jax.random.key(seed))
        prompt(*args, _labels(HEALTHY), NULL_COND)["heatmap"].block_until_ready()
    assert prompt._cache_size() == 1 and len(traces) == 3


def test_promptable_rejects_bad_inputs():
    x = jnp.asarray(TUMOUR_IMAGES)
    kwargs = dict(key=jax.random.key(0), cond=_labels(HEALTHY), null_cond=NULL_COND)
    with pytest.raises(ValueError, match="region"):
        C.promptable_sample(_model(0.05), SCHEDULE, x, jnp.zeros((4, 8, 8, 1)), **kwargs)
    with pytest.raises(ValueError, match="known"):
        C.make_promptable(_weighted(0.05)[0], SCHEDULE, known="noised")
    with pytest.raises(ValueError, match="resample"):
        C.make_promptable(_weighted(0.05)[0], SCHEDULE, resample=(0, 10))
    with pytest.raises(ValueError, match="encode and decode"):
        C.promptable_counterfactual(_model(0.05), SCHEDULE, x, x[..., :1], encode=_encode, **kwargs)
    with pytest.raises(ValueError, match="start_strength"):
        C.promptable_sample(_model(0.05), SCHEDULE, x, x[..., :1], start_strength=0.0, **kwargs)


def test_diffscm_on_a_rectified_flow_model_uses_the_flow_pair():
    # The same closed-form data under a rectified-flow schedule: Diff-SCM runs
    # flow_invert / flow_sample instead of DDIM (a DDIM call would refuse the schedule).
    flow = D.rectified_flow()
    apply, means = _weighted(0.01, schedule=flow)
    out = C.diffscm(
        functools.partial(apply, means),
        flow,
        jnp.asarray(TUMOUR_IMAGES),
        null_cond=NULL_COND,
        target_cond=_labels(HEALTHY),
        num_steps=50,
    )
    heat = np.asarray(out["heatmap"])
    assert heat[SQUARES].min() > 0.5  # measured 0.74
    assert heat[~SQUARES].max() < 0.01  # measured 0.0011
    assert np.abs(np.asarray(out["counterfactual"]) - HEALTHY_IMAGES).max() < 0.01  # 0.0038
