"""The diffusion task's strategies (spaces, conditioners, diffusion.target), apply kwargs,
and frozen weights kept out of the training state and its checkpoints."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxcf import diffusion as D
from jaxcf.checkpoint import Checkpoints, abstract_like
from jaxcf.inference import TrainedModel, load_trained
from jaxcf.models import wavelet
from jaxcf.training import conditioners, spaces
from jaxcf.training.config import base_config
from jaxcf.training.loop import restore_latest, train_and_evaluate
from jaxcf.training.state import TrainState
from jaxcf.training.tasks import DiffusionTask, make_task

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(condition: str = "label", **model):
    """A 1-channel 8x8 UNet; prompt models get a 16-wide cross-attention text encoder."""
    c = base_config()
    c.model.update(
        family="unet",
        preset="tiny2d",
        image_size=8,
        in_channels=1,
        model_channels=16,
        attention_resolutions=(),
        num_classes=2 if condition == "label" else 0,
        class_attention=False,
        **model,
    )
    if condition == "prompt":
        c.model.update(context_dim=16, cross_attention_resolutions=(8,), channel_mult=(1,))
        c.text.update(vocab_size=10, max_len=6, dim=16, depth=1, heads=2)
    c.diffusion.update(condition=condition, num_timesteps=50, cond_drop_prob=0.0)
    c.sampler.update(num_steps=5, guidance_scale=3.0)
    return c


# -- spaces --------------------------------------------------------------------------------------


def test_spaces_round_trip_and_carry_their_x0_transform(key):
    x = jax.random.uniform(key, (2, 8, 8, 3), minval=-1, maxval=1)
    pixel, frozen = spaces.build_space(tiny_config(), key)
    assert isinstance(pixel, spaces.PixelSpace) and frozen == {}
    np.testing.assert_array_equal(pixel.decode({}, pixel.encode({}, x)), x)
    assert pixel.value_range == (-1.0, 1.0) and pixel.x0_transform.func is D.static_clip

    config = tiny_config()
    config.diffusion.space = "wavelet"
    wave, frozen = spaces.build_space(config, key)
    assert frozen == {} and wave.x0_transform.func is wavelet.wavelet_clip
    coeffs = wave.encode({}, x)
    assert coeffs.shape == (2, 4, 4, 12)  # 4 Haar sub-bands per channel
    np.testing.assert_allclose(coeffs, wavelet.to_wavelet(x))
    np.testing.assert_allclose(wave.decode({}, coeffs), x, atol=1e-5)
    volume = jax.random.uniform(key, (1, 4, 4, 4, 1), minval=-1, maxval=1)
    np.testing.assert_allclose(wave.decode({}, wave.encode({}, volume)), volume, atol=1e-5)

    config.diffusion.space = "fourier"
    with pytest.raises(ValueError, match=r"diffusion\.space must be one of .*'fourier'"):
        spaces.build_space(config, key)


def _wild(params, x, t, cond, **kwargs):
    # A badly trained denoiser: eps predictions 30x too large, of alternating sign.
    return 30.0 * jnp.sign(jnp.sin(7.0 * jnp.arange(x.size).reshape(x.shape) + 1.0))


@pytest.mark.parametrize(
    "space,task,value_range",
    [
        ("pixel", "slices2d", (-1.0, 1.0)),
        ("pixel", "volumes", (0.0, 1.0)),
        ("wavelet", "volumes", (-1.0, 1.0)),
        ("wavelet", "volumes", (0.0, 1.0)),
    ],
)
def test_samples_of_a_wild_model_stay_in_the_data_range(key, space, task, value_range):
    # guided-diffusion (clip_denoised=True) and diffusers (clip_sample=True) clip the x0
    # estimate to the data range by default; previews and methods here do the same.
    config = tiny_config("label")
    config.data.task = task
    config.data.value_range = value_range
    config.diffusion.space = space
    task_ = make_task(config, key)
    task_.model_apply = _wild
    lo, hi = value_range
    batch = {"image": jnp.zeros((2, 8, 8, 1)), "label": jnp.array([0, 1])}
    out = np.asarray(task_.preview(task_.params, task_.frozen, batch, key, 2))
    assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5
    assert out.min() < lo + 0.05 and out.max() > hi - 0.05  # the clip binds at both ends
    # What load_trained hands to the methods (Diff-SCM, promptable) clips the same way.
    trained = TrainedModel(config, task_, task_.params, task_.frozen, 0)
    model = trained.method_model()
    x_T = jax.random.normal(key, task_.encode({}, batch["image"]).shape)
    x0 = D.ddim_sample(
        model.model_fn(trained.weights),
        task_.schedule,
        x_T,
        num_steps=5,
        cond={"label": jnp.array([0, 1])},
        x0_transform=model.x0_transform,
    )
    image = np.asarray(task_.decode({}, x0))
    assert image.min() >= lo - 1e-5 and image.max() <= hi + 1e-5
    assert spaces.data_range(config) == value_range


def test_no_clip_where_the_data_range_is_unknown(key):
    config = tiny_config("label")
    config.data.task = "seg3d"  # z-scored volumes: no fixed range
    assert spaces.data_range(config) is None
    assert spaces.build_space(config, key)[0].x0_transform is None
    config = tiny_config("image")
    config.diffusion.target = "seg"  # a segmentation's labels: no declared range
    assert spaces.data_range(config) is None


@pytest.mark.parametrize("name", ["wdm_ms", "wdm_adni"])
def test_wdm_configs_train_on_minus_one_to_one_and_clip_there(key, name):
    # wdm-3d trains on volumes renormalised to [-1, 1] (--renormalize=True); wavelet_clip's
    # bound must be the range the config declares, whatever it is.
    for toy in (False, True):
        config = _load_config(name, "toy" if toy else None)
        assert tuple(config.data.value_range) == (-1.0, 1.0)
        for value_range in ((-1.0, 1.0), (0.0, 1.0)):
            config.data.value_range = value_range
            space, _ = spaces.build_space(config, key)
            assert isinstance(space, spaces.WaveletSpace)
            coeffs = 5.0 * jax.random.normal(key, (1, 4, 4, 4, 8))
            image = np.asarray(space.decode({}, space.x0_transform(coeffs)))
            np.testing.assert_allclose([image.min(), image.max()], value_range, atol=1e-5)


def test_the_task_is_composed_once_from_the_config(key):
    task = make_task(tiny_config("label"), key)
    assert isinstance(task.space_impl, spaces.PixelSpace)
    assert task.conditioner == conditioners.LabelConditioner(2)
    assert (task.space, task.condition, task.target) == ("pixel", "label", "image")
    assert task.text_apply is None and task.vae is None and task.frozen == {}
    null = task.null_cond({"label": jnp.array([0, 1])})
    np.testing.assert_array_equal(null["label"], [2])
    config = tiny_config("label")
    config.diffusion.condition = "caption"
    with pytest.raises(ValueError, match=r"diffusion\.condition must be one of"):
        make_task(config, key)


# -- conditioners --------------------------------------------------------------------------------


def _prompt_batch():
    ids = jnp.array([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]], jnp.int32)
    return {"prompt_ids": ids, "prompt_mask": ids > 0}


def test_prompt_is_encoded_once_per_sample_not_per_step(key):
    task = DiffusionTask(tiny_config("prompt"), key)
    assert isinstance(task.conditioner, conditioners.PromptConditioner)
    assert set(task.params) == {"model", "text"} and task.frozen == {}
    calls = []
    inner = task.conditioner.text_apply

    def counting(state, ids, mask):  # counts executions, not traces (runs inside scans)
        jax.debug.callback(lambda: calls.append(1))
        return inner(state, ids, mask)

    task.conditioner = conditioners.PromptConditioner(counting, from_file=False)
    params, frozen = task.params, task.frozen
    cond = _prompt_batch()
    x_T = jax.random.normal(key, (2, 8, 8, 1))

    def sample(params, cond, prepare):
        if prepare:
            cond = task.prepare_cond(params, frozen, cond)
        model_fn = task.model_fn(params, frozen)
        return D.ddim_sample(model_fn, task.schedule, x_T, num_steps=5, cond=cond)

    sample = jax.jit(sample, static_argnums=2)
    raw = jax.block_until_ready(sample(params, cond, False))
    assert len(calls) == 5  # the raw prompt goes through the encoder at every step
    calls.clear()
    prepared = jax.block_until_ready(sample(params, cond, True))
    assert len(calls) == 1
    np.testing.assert_allclose(prepared, raw, rtol=1e-5, atol=1e-5)

    # A prepared condition passes model_fn's encoder untouched (idempotent encode).
    enc = task.prepare_cond(params, frozen, cond)
    assert set(enc) == {"context", "context_mask"} and enc["context"].shape == (2, 6, 16)
    calls.clear()
    again = jax.block_until_ready(task.prepare_cond(params, frozen, enc))
    assert calls == [] and again["context"] is enc["context"]

    # Guided previews: the prompt and the null prompt are encoded once each.
    calls.clear()
    batch = {"image": jnp.zeros((2, 8, 8, 1)), **cond}
    out = jax.jit(task.preview, static_argnums=4)(params, frozen, batch, key, 2)
    assert out.shape == (2, 8, 8, 1) and np.isfinite(np.asarray(out)).all()
    assert len(calls) == 2
    with pytest.raises(ValueError, match="raw prompt condition"):
        task.null_cond(enc)


def test_apply_kwargs_pass_through_to_the_network(key):
    task = make_task(tiny_config("label"), key)
    seen = []

    def fake_apply(params, x, t, cond, **kwargs):
        seen.append((cond, kwargs))
        return jnp.zeros_like(x)

    task.model_apply = fake_apply
    x, t, cond = jnp.ones((2, 8, 8, 1)), jnp.array([1, 2]), {"label": jnp.array([0, 1])}
    task.model_fn(task.params, task.frozen, control="ctl", return_attention=True)(x, t, cond)
    assert seen[-1][1] == {"dropout_key": None, "control": "ctl", "return_attention": True}
    # ... and through what methods see of a restored model.
    trained = TrainedModel(task.config, task, task.params, task.frozen, 0)
    model = trained.method_model()
    model.model_fn(trained.weights, control="c2")(x, t, cond)
    assert seen[-1][1] == {"dropout_key": None, "control": "c2"}
    np.testing.assert_array_equal(seen[-1][0]["label"], [0, 1])
    assert model.x0_transform is task.space_impl.x0_transform and model.num_classes == 2
    assert model.x0_transform.func is D.static_clip
    assert trained.conditioner is task.conditioner and trained.tokenizer is None


def test_target_seg_diffuses_the_segmentation_given_the_image(key):
    config = tiny_config("image")
    config.diffusion.update(target="seg", prediction="x0")
    task = make_task(config, key)
    assert isinstance(task.conditioner, conditioners.ImageConditioner)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (4, 8, 8, 4)).astype(np.float32)  # four modalities
    seg = (rng.uniform(size=(4, 8, 8)) > 0.7).astype(np.uint8)  # as batches carry it
    batch = {"image": image, "seg": seg, "label": np.zeros(4, np.int32)}
    x0 = task.target_of(batch)
    assert x0.shape == (4, 8, 8, 1) and x0.dtype == jnp.float32
    np.testing.assert_array_equal(x0[..., 0], seg)

    seen = {}

    def fake_apply(params, x, t, cond, **kwargs):
        seen.update(x=x, cond=cond)
        return jnp.zeros_like(x)  # predicts x0 = 0: the loss is mean(seg ** 2)

    task.model_apply = fake_apply
    loss, _ = task.loss(task.params, task.frozen, batch, key)
    assert seen["x"].shape == (4, 8, 8, 1)  # the noised segmentation, one channel
    np.testing.assert_array_equal(seen["cond"]["image"], image)  # the image as condition
    np.testing.assert_allclose(float(loss), seg.mean(), rtol=1e-5)
    np.testing.assert_array_equal(task.null_cond(task.cond(batch))["image"], 0)

    bad = tiny_config("image")
    with pytest.raises(ValueError, match=r"diffusion\.target must name another batch field"):
        make_task(bad, key)
    config.diffusion.target = "mask"
    with pytest.raises(ValueError, match="no such field"):
        make_task(config, key).target_of(batch)


# -- frozen weights out of the training state ----------------------------------------------------


def _load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_checkpoints_hold_no_frozen_weights_and_inference_rebuilds_them(tmp_path):
    """A latent DiT on an untrained 4-channel VAE (allow_untrained): two steps with a
    preview, a checkpoint without the VAE, and load_trained rebuilding the VAE from
    train.seed."""
    c = _load_config("pcf_dit_brats")
    c.data.update(image_size=16, batch_size=2)
    c.data.phantom.update(cases=4, size=32)
    c.model.update(preset="DiT-S/2", input_size=2, in_channels=4, depth=1)
    c.vae.update(preset="mri4", allow_untrained=True)
    c.train.update(num_steps=2, log_every=1, checkpoint_every=2, sample_every=2, preview_count=1)
    c.sampler.num_steps = 2
    c.mesh.data = 1
    train_and_evaluate(c, tmp_path)

    ckpt = Checkpoints(tmp_path)
    step = ckpt.latest_step
    ckpt.close()
    saved = ocp.StandardCheckpointHandler().metadata(tmp_path / "checkpoints" / str(step) / "state")
    assert set(saved.keys()) == {"step", "params", "ema", "opt_state"}
    paths = ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(dict(saved))[0]]
    assert paths and not any("vae" in p or "frozen" in p for p in paths)
    assert (tmp_path / "samples" / "step_0000002.png").is_file()

    trained = load_trained(tmp_path)
    rebuilt = make_task(c, jax.random.key(c.train.seed)).frozen["vae"]
    for a, b in zip(jax.tree.leaves(trained.frozen["vae"]), jax.tree.leaves(rebuilt), strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same untrained VAE
    assert trained.method_model().x0_transform is None and trained.space == "latent"
    x0 = trained.encode(jnp.zeros((1, 16, 16, 4)))
    assert x0.shape == (1, 2, 2, 4)


def test_resume_reads_a_checkpoint_that_still_holds_frozen_weights(tmp_path):
    """Checkpoints written while frozen weights were part of the state still resume."""
    params = {"w": jnp.arange(3.0)}
    optimizer = optax.adam(1e-3)
    old = {
        "step": jnp.array(7, jnp.int32),
        "params": params,
        "ema": {"w": params["w"] * 2},
        "opt_state": optimizer.init(params),
        "frozen": {"vae": jnp.ones(5)},
    }
    ckpt = Checkpoints(tmp_path)
    ckpt.save(7, old, {"iterator": {"position": 3}}, {})
    ckpt.close()
    fresh = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema=params,
        opt_state=optimizer.init(params),
    )
    ckpt = Checkpoints(tmp_path)
    state, data = restore_latest(ckpt, abstract_like(fresh))
    assert int(state.step) == 7 and data == {"iterator": {"position": 3}}
    np.testing.assert_array_equal(state.ema["w"], [0.0, 2.0, 4.0])
    ckpt.save(8, state.replace(step=state.step + 1), data, {})  # the next save still works
    ckpt.close()
    ckpt = Checkpoints(tmp_path)
    state, _ = restore_latest(ckpt, abstract_like(fresh))
    ckpt.close()
    assert int(state.step) == 8


def test_a_prompt_model_exposes_its_training_tokenizer(tmp_path, key):
    config = tiny_config("prompt")
    task = make_task(config, key)
    vocab = ["<pad>", "<unk>", "<bos>", "<eos>", "minimal", "lesion", "load"]
    prepared = tmp_path / "prepared" / f"{config.data.dataset}_{config.data.task}"
    prepared.mkdir(parents=True)
    (prepared / "meta.json").write_text(json.dumps({"tokenizer": {"vocab": vocab, "max_len": 6}}))
    trained = TrainedModel(config, task, task.params, task.frozen, 0, tmp_path)
    ids, mask = trained.tokenizer.encode("Minimal lesion load")
    np.testing.assert_array_equal(ids, [2, 4, 5, 6, 3, 0])  # from the prepared data's meta
    np.testing.assert_array_equal(mask, [True] * 5 + [False])
    # What training writes next to config.json wins (the shards may be gone or re-prepared).
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab": vocab[:5], "max_len": 4}))
    trained = TrainedModel(config, task, task.params, task.frozen, 0, tmp_path)
    assert trained.tokenizer.vocab == vocab[:5] and trained.tokenizer.max_len == 4
    with pytest.raises(FileNotFoundError, match="no prompt tokenizer"):
        _ = TrainedModel(
            config, task, task.params, task.frozen, 0, tmp_path / "elsewhere"
        ).tokenizer
