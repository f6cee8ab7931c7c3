"""Attention-regulated counterfactuals (paper 003) on a tiny random-weight SD UNet with 16 x
16 latents, an identity encoder / decoder and a word tokenizer: all mechanisms off is
plain CFG DDIM from the same start; the Eq. 5 gate puts the downsampled organ mask on the
keys and keeps rows summing to 1; Eq. 6 acts only for t < mu T; one Eq. 9 step lowers the
energy; pathology tokens are found in the prompt; bad settings name their field."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.counterfactual import MethodModel, registry
from jaxcf.counterfactual import attention as A
from jaxcf.data.text import Tokenizer, build_vocab
from jaxcf.errors import InputError
from jaxcf.text.tower import Retokenizer

PROMPTS = ("no finding", "right lower lobe opacity", "small left effusion")
TOKENIZER = Tokenizer(build_vocab(PROMPTS), max_len=8)
SIZE, B, DIM = 16, 2, 32
SCHEDULE = D.scaled_linear()
SELF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
CROSS = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def unet():
    apply_fn, params = models.build({"family": "sd_unet", "preset": "tiny"}, jax.random.key(1))
    return apply_fn, params


def _model(apply_fn, context_len: int | None = None) -> MethodModel:
    table = jax.random.normal(jax.random.key(2), (len(TOKENIZER.vocab), DIM))

    def prepare_cond(weights, cond):
        ids, mask = cond["prompt_ids"], cond["prompt_mask"]
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None]
        if context_len is not None:  # a "tower" whose positions differ from the prompt's
            ids, mask = ids[:, :context_len], mask[:, :context_len]
        return {"context": table[ids], "context_mask": mask}

    def null_cond(cond):
        length = cond["prompt_ids"].shape[-1]
        return {
            "prompt_ids": jnp.zeros((length,), jnp.int32).at[0].set(2),
            "prompt_mask": jnp.arange(length) == 0,
        }

    return MethodModel(
        apply=apply_fn,
        schedule=SCHEDULE,
        null_cond=null_cond,
        prepare_cond=prepare_cond,
        space="latent",
        tokenizer=TOKENIZER,
    )


def _cfg(**settings) -> ml_collections.ConfigDict:
    cfg = A.default_config()
    toy = dict(num_steps=4, gate_resolutions=(16,), path_resolutions=(16,), guidance_scale=3.0)
    cfg.update({**toy, **settings})
    return cfg


def _batch() -> dict:
    rng = np.random.default_rng(0)
    anatomy = np.zeros((B, SIZE, SIZE), np.float32)
    anatomy[:, 2:14, 1:7] = anatomy[:, 2:14, 9:15] = 1.0  # two "lungs"
    roi = np.zeros((B, SIZE, SIZE), np.float32)
    roi[:, 9:13, 2:6] = 1.0
    image = rng.normal(size=(B, SIZE, SIZE, 4)).astype(np.float32)
    return {"image": image, "anatomy": anatomy, "roi": roi}


def _plain(model, weights, batch, key, cfg):
    """CFG DDIM from the method's start level, without any attention edit."""
    raw = {k: jnp.broadcast_to(v, (B, v.shape[-1])) for k, v in _tokens(cfg.target_prompt).items()}
    cond, null = model.conditions(weights, raw)
    steps = int(cfg.num_steps)
    t0 = D.start_timestep(SCHEDULE.num_timesteps, steps, float(cfg.strength))
    z = jnp.asarray(batch["image"])
    noise = jax.random.normal(jax.random.fold_in(key, 0), z.shape)
    z_t = D.q_sample(SCHEDULE, z, jnp.full((B,), t0), noise)
    guided = D.classifier_free_guidance(model.model_fn(weights), float(cfg.guidance_scale), null)
    return D.ddim_sample(guided, SCHEDULE, z_t, num_steps=steps, cond=cond)


def _tokens(prompt):
    ids, mask = TOKENIZER.encode_batch([prompt])
    return {"prompt_ids": ids, "prompt_mask": mask}


def _run(model, weights, cfg, batch, key):
    fn = jax.jit(registry.get("attention").build(model, cfg))  # weights: a jit argument
    return fn(weights, A.prepare(batch, cfg), key)


def test_all_off_is_plain_cfg_ddim_and_mu_zero_is_off(unet, key):
    apply_fn, params = unet
    model, batch = _model(apply_fn), _batch()
    off = _cfg(gate=False, reweight=False, energy=False)
    out = _run(model, params, off, batch, key)
    want = jax.jit(lambda w, k: _plain(model, w, batch, k, off))(params, key)
    # The same computation compiled inside a different program: XLA may fuse it
    # differently, so equal up to float32 rounding (1e-6 of the output's scale).
    tol = 1e-6 * float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(out["counterfactual"], want, atol=tol, rtol=0)
    assert out["counterfactual"].shape == (B, SIZE, SIZE, 4)
    np.testing.assert_array_equal(out["factual"], batch["image"])
    np.testing.assert_allclose(
        out["heatmap"],
        np.abs(batch["image"] - np.asarray(out["counterfactual"])).mean(-1),
        atol=1e-6,
    )
    # Eq. 6 with an empty window (mu = 0) never acts: the same numbers again.
    mu0 = _run(model, params, _cfg(gate=False, reweight=True, energy=False, mu=0.0), batch, key)
    np.testing.assert_allclose(mu0["counterfactual"], want, atol=tol, rtol=0)
    # ... and over the whole trajectory (mu = 1) it changes the counterfactual.
    mu1 = _run(model, params, _cfg(gate=False, reweight=True, energy=False, mu=1.0), batch, key)
    assert float(jnp.max(jnp.abs(mu1["counterfactual"] - want))) > 1e-3


def test_gate_puts_the_area_mask_on_the_keys_and_rows_sum_to_one(unet):
    apply_fn, params = unet
    batch = _batch()
    extra = {
        "anatomy": jnp.asarray(batch["anatomy"]),
        "roi": jnp.asarray(batch["roi"]),
        "tokens": jnp.zeros((B, 8)),
    }
    t = jnp.full((B,), 500)
    cfg = _cfg(gate_resolutions=(8,), reweight=False)
    control = A.make_control(cfg, extra, t, (SIZE, SIZE), 1000)
    edit = control(SELF, "self", (8, 8))
    want = batch["anatomy"].reshape(B, 8, 2, 8, 2).mean((2, 4)).reshape(B, 1, 1, 64)
    np.testing.assert_allclose(edit.prob_scale, want, atol=1e-7)
    assert edit.renormalize and control(SELF, "self", (16, 16)) is None
    assert control(CROSS, "cross", (8, 8)) is None  # reweighting off
    queries = A.make_control(
        _cfg(gate_resolutions=(8,), gate_axis="queries", gate_renormalize=False), extra, t,
        (SIZE, SIZE), 1000,
    )(SELF, "self", (8, 8))  # fmt: skip
    assert queries.prob_scale.shape == (B, 1, 64, 1) and not queries.renormalize

    # In the UNet: the 16 x 16 self-attention maps have no weight on keys outside the
    # organ and rows summing to 1.
    gate = A.make_control(_cfg(reweight=False), extra, t, (SIZE, SIZE), 1000)

    def recorded(name, kind, spatial):
        e = gate(name, kind, spatial)
        return e._replace(return_probs=True) if e is not None else None

    x = jax.random.normal(jax.random.key(3), (B, SIZE, SIZE, 4))
    cond = {"context": jax.random.normal(jax.random.key(4), (B, 8, DIM))}
    _, maps = apply_fn(params, x, t, cond, control=recorded, return_attention=True)
    probs = maps[SELF]
    outside = batch["anatomy"].reshape(B, -1) == 0
    assert probs.shape == (B, 2, 256, 256)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert float(jnp.max(jnp.where(outside[:, None, None, :], probs, 0.0))) == 0.0


def test_reweighting_only_inside_the_window():
    batch = _batch()
    tokens = np.zeros((B, 8), np.float32)
    tokens[:, 4] = 1.0
    extra = {k: jnp.asarray(batch[k]) for k in ("anatomy", "roi")} | {"tokens": tokens}
    cfg = _cfg(gate=False, eta=1.5, mu=0.4, roi_blur=0.0, window="late")  # t < mu T
    inside = A.make_control(cfg, extra, jnp.full((B,), 399), (SIZE, SIZE), 1000)
    outside = A.make_control(cfg, extra, jnp.full((B,), 400), (SIZE, SIZE), 1000)
    early = _cfg(gate=False, eta=1.5, mu=0.4, roi_blur=0.0)  # the default: t >= (1 - mu) T
    at_600 = A.make_control(early, extra, jnp.full((B,), 600), (SIZE, SIZE), 1000)
    at_599 = A.make_control(early, extra, jnp.full((B,), 599), (SIZE, SIZE), 1000)
    np.testing.assert_array_equal(at_599(CROSS, "cross", (16, 16)).prob_scale, 1.0)
    np.testing.assert_array_equal(
        at_600(CROSS, "cross", (16, 16)).prob_scale, inside(CROSS, "cross", (16, 16)).prob_scale
    )
    scale_in = inside(CROSS, "cross", (16, 16)).prob_scale  # (B, 1, 256, 8)
    scale_out = outside(CROSS, "cross", (16, 16)).prob_scale
    np.testing.assert_array_equal(scale_out, 1.0)
    omega = batch["roi"].reshape(B, 256)  # no blur: the ROI itself, max 1
    np.testing.assert_allclose(scale_in[:, 0, :, 4], 1.0 + 1.5 * omega, atol=1e-6)
    np.testing.assert_array_equal(np.delete(np.asarray(scale_in), 4, axis=-1), 1.0)
    assert inside(SELF, "self", (16, 16)) is None  # gate off
    # alpha_t: zero before the window, linear from alpha down to alpha / n inside it.
    grid = D.respace(1000, 4)
    assert grid.tolist() == [750, 500, 250, 0]
    np.testing.assert_allclose(A.step_sizes(grid, 0.4, 0.05, 1000, "late"), [0, 0, 0.05, 0.025])
    np.testing.assert_allclose(A.step_sizes(grid, 0.4, 0.05, 1000), [0.05, 0, 0, 0])
    np.testing.assert_allclose(A.step_sizes(grid, 0.6, 0.05, 1000), [0.05, 0.025, 0, 0])
    np.testing.assert_array_equal(A.step_sizes(grid, 0.0, 0.05, 1000), 0.0)
    # An edit from strength 0.6 runs 30 of 50 steps (580 -> 0): its window is their first
    # 40% (12 steps, t >= 0.6 * 600), not t >= 600, which no step of it reaches.
    run = D.respace(1000, 50, "leading")[20:]
    inside = A.step_sizes(run, 0.4, 0.05, 1000 * 0.6) > 0
    assert run[0] == 580 and inside.sum() == 12 and inside[:12].all()


def test_omega_is_blurred_normalised_roi():
    roi = jnp.zeros((1, 16, 16)).at[0, 6:10, 6:10].set(1.0)
    om = A.omega(roi, (8, 8), sigma=1.0)
    assert om.shape == (1, 8, 8) and float(om.max()) == pytest.approx(1.0)
    assert float(om[0, 0, 0]) < 0.05 < float(om[0, 3, 2]) < 1.0  # blur spills around the ROI
    np.testing.assert_array_equal(A.omega(jnp.zeros((1, 16, 16)), (8, 8), 1.0), 0.0)


def test_one_energy_step_lowers_the_energy(unet):
    apply_fn, params = unet
    model, batch = _model(apply_fn), _batch()
    cfg = _cfg(gate=True, reweight=True, energy=True)
    raw = {k: jnp.broadcast_to(v, (B, 8)) for k, v in _tokens(cfg.target_prompt).items()}
    cond, _ = model.conditions(params, raw)
    tokens = A.pathology_token_mask(
        raw["prompt_ids"], raw["prompt_mask"], [TOKENIZER.vocab.index("opacity")]
    )
    extra = {k: jnp.asarray(batch[k]) for k in ("anatomy", "roi")} | {"tokens": tokens}
    energy = A.pathology_energy(model, cfg, params, cond, extra, (SIZE, SIZE))
    z = jax.random.normal(jax.random.key(5), (B, SIZE, SIZE, 4))
    t = jnp.full((B,), 250)

    @jax.jit
    def before_after(z):
        value, maps = energy(z, t)
        grad = jax.grad(lambda v: jnp.sum(energy(v, t)[0]))(z)
        step = 0.05 * grad / jnp.sqrt(jnp.sum(grad**2, axis=(1, 2, 3), keepdims=True))
        return value, energy(z - step, t)[0], maps

    before, after, maps = before_after(z)
    assert len(maps) == 3 and maps[0].shape == (B, 16, 16)  # 1 down + 2 up 16 x 16 layers
    assert np.all((np.asarray(before) > 0) & (np.asarray(before) < 1))
    assert np.all(np.asarray(after) < np.asarray(before)), (before, after)


def test_full_method_is_jittable_and_each_mechanism_matters(unet, key):
    apply_fn, params = unet
    model, batch = _model(apply_fn), _batch()
    full = _run(model, params, _cfg(remat=True), batch, key)
    no_energy = _run(model, params, _cfg(energy=False), batch, key)
    for name, shape in [
        ("counterfactual", (B, SIZE, SIZE, 4)),
        ("heatmap", (B, SIZE, SIZE)),
        ("roi", (B, SIZE, SIZE)),
        ("attention", (B, SIZE, SIZE)),
        ("energy", (B,)),
    ]:
        assert full[name].shape == shape, name
        assert np.all(np.isfinite(full[name])), name
    assert float(full["roi"].max()) == pytest.approx(1.0, abs=1e-5)
    assert float(full["attention"].min()) >= 0 and float(full["attention"].max()) > 0
    assert float(jnp.max(jnp.abs(full["counterfactual"] - no_energy["counterfactual"]))) > 0


def test_pathology_tokens_from_the_prompt():
    ids, mask = TOKENIZER.encode_batch(["right lower lobe opacity", "small left effusion"])
    path = [TOKENIZER.vocab.index(w) for w in ("opacity", "effusion")]
    flags = A.pathology_token_mask(ids, mask, path)
    assert flags.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]]
    # Through a text tower's re-tokenisation: each word -> its pieces (opacity: 2 pieces).
    pieces = {w: [100 + i] * (2 if w == "opacity" else 1) for i, w in enumerate(TOKENIZER.vocab)}
    retok = Retokenizer.build(TOKENIZER.vocab, pieces.__getitem__, length=10, start=1, end=2, pad=0)
    tower = retok.spread(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(flags))
    tower_ids, _ = retok(jnp.asarray(ids), jnp.asarray(mask))
    opacity = 100 + TOKENIZER.vocab.index("opacity")
    np.testing.assert_array_equal(tower[0], np.asarray(tower_ids[0]) == opacity)
    assert tower[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]


def test_tower_context_gets_the_pathology_flags_at_its_word_pieces(unet, key):
    # A "tower" that re-tokenises the 8 prompt tokens into 10 positions (a start token,
    # "opacity" as 2 pieces); token_positions = its Retokenizer.spread.
    apply_fn, params = unet
    pieces = {w: [100 + i] * (2 if w == "opacity" else 1) for i, w in enumerate(TOKENIZER.vocab)}
    retok = Retokenizer.build(TOKENIZER.vocab, pieces.__getitem__, length=10, start=1, end=2, pad=0)
    table = jax.random.normal(jax.random.key(6), (128, DIM))

    def prepare_cond(weights, cond):
        ids, mask = cond["prompt_ids"], cond["prompt_mask"]
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None]
        tower_ids, tower_mask = retok(ids, mask)
        return {"context": table[tower_ids], "context_mask": tower_mask}

    model = dataclasses.replace(
        _model(apply_fn), prepare_cond=prepare_cond, token_positions=retok.spread
    )
    cfg = _cfg(num_steps=2, gate=False, energy=False, mu=1.0)
    batch = _batch()
    out = _run(model, params, cfg, batch, key)  # jitted
    assert np.all(np.isfinite(out["counterfactual"]))
    # The reference: the final forward on z_0 (identity decode) with the flags put by hand
    # on the context positions of "opacity"'s pieces. Eq. 6 scales those columns of the
    # cross-attention, and the "attention" map averages them: flags on any other
    # positions give other numbers.
    raw = {k: jnp.broadcast_to(v, (B, 8)) for k, v in _tokens(cfg.target_prompt).items()}
    tower_ids = np.asarray(retok(raw["prompt_ids"], raw["prompt_mask"])[0])
    flags = tower_ids == 100 + TOKENIZER.vocab.index("opacity")
    assert np.flatnonzero(flags[0]).tolist() == [4, 5]
    extra = {k: jnp.asarray(batch[k]) for k in ("anatomy", "roi")}
    extra["tokens"] = jnp.asarray(flags, jnp.float32)
    cond, _ = model.conditions(params, raw)
    energy = A.pathology_energy(model, cfg, params, cond, extra, (SIZE, SIZE))
    t_last = jnp.full((B,), int(D.respace(1000, 2)[-1]))
    want, shown = jax.jit(energy)(out["counterfactual"], t_last)
    np.testing.assert_allclose(out["energy"], want, rtol=1e-5)
    np.testing.assert_allclose(out["attention"], jnp.mean(jnp.stack(shown), 0), rtol=1e-4)


def test_bad_settings_name_their_field(unet):
    apply_fn, _ = unet
    model = _model(apply_fn)
    build = registry.get("attention").build
    for settings, field in [
        ({"eta": -0.1}, "eta"),
        ({"mu": 1.5}, "mu"),
        ({"mu": -0.1}, "mu"),
        ({"window": "middle"}, "window"),
        ({"gate_axis": "rows"}, "gate_axis"),
        ({"gate_axis": "queries"}, "gate_renormalize"),
        ({"target_prompt": "no finding"}, "target_prompt"),
        ({"target_prompt": "no finding", "reweight": False}, "target_prompt"),
        ({"alpha": -1.0}, "alpha"),
    ]:
        with pytest.raises(InputError, match=f"counterfactual.attention.{field}"):
            build(model, _cfg(**settings))
    # Without Eqs. 6 and 9 a prompt needs no pathology word.
    build(model, _cfg(target_prompt="no finding", reweight=False, energy=False))
    batch = _batch()
    with pytest.raises(InputError, match="roi"):
        A.prepare({k: v for k, v in batch.items() if k != "roi"}, _cfg())
    with pytest.raises(InputError, match="anatomy"):
        A.prepare({**batch, "anatomy": np.zeros_like(batch["anatomy"])}, _cfg())
    # A context whose positions are not the prompt's (a text tower) is refused.
    fn = build(_model(apply_fn, context_len=6), _cfg())
    with pytest.raises(InputError, match="positions"):
        jax.eval_shape(fn, unet[1], A.prepare(batch, _cfg()), jax.random.key(0))


def test_describe_names_the_ablation_row():
    assert registry.label("attention", _cfg()) == "Attention regulation (full)"
    assert A.describe(_cfg(gate=False)) == "Attention regulation (w/o Eq. 5)"
    assert A.describe(_cfg(reweight=False)) == "Attention regulation (w/o Eq. 6)"
    assert A.describe(_cfg(energy=False)) == "Attention regulation (w/o Eq. 9)"
    assert "attention" in registry.names()
