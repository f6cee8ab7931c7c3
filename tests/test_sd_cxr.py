"""configs/sd_cxr.py (paper 003: SD 1.5 fine-tuned on chest X-rays) and model.checkpoint, the
pretrained weights a run starts from (jaxcf.models.pretrained): the recipe's fields are
REFERENCES.md's, the toy variant trains and checkpoints, a converted SD UNet state dict
becomes the task's parameters exactly, and bad checkpoints are one clear error."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file
from test_sd_unet import TINY_DIFFUSERS

from jaxcf import models
from jaxcf.checkpoint import Checkpoints
from jaxcf.convert.common import CheckpointError
from jaxcf.convert.diffusers_unet import sd_unet_params, sd_unet_state_dict
from jaxcf.errors import InputError
from jaxcf.models.sd_unet import SDUNet, sd_unet_config
from jaxcf.training.config import base_config
from jaxcf.training.tasks import make_task

REPO = pathlib.Path(__file__).resolve().parents[1]


def get_config(arg=None):
    spec = importlib.util.spec_from_file_location("config_sd_cxr", REPO / "configs" / "sd_cxr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def close(a, b) -> bool:
    """The same tree with equal leaves."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in leaves)


def test_recipe_is_paper_003s():
    c = get_config()
    # REFERENCES.md: SD v1.5 fine-tuned on CXR (512x512, AdamW 1e-4, batch 16, bf16);
    # DDIM 50 steps, CFG 7.5; prompts truncated to 77 tokens. SD's schedule: scaled_linear
    # 0.00085 -> 0.012, eps, 1000 steps; SD VAE scaling 0.18215.
    assert (c.data.dataset, c.data.task, c.data.image_size, c.data.batch_size) == (
        "cxr",
        "cxr",
        512,
        16,
    )
    assert c.data.prompt_max_len == 80  # 77 words + <bos> + <eos>
    d = c.diffusion
    assert (d.schedule, d.beta_start, d.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (d.prediction, d.num_timesteps, d.space, d.condition) == (
        "eps",
        1000,
        "latent",
        "prompt",
    )
    assert d.cond_drop_prob == 0.1
    assert (c.optim.name, c.optim.lr) == ("adamw", 1e-4)
    assert (c.sampler.num_steps, c.sampler.guidance_scale) == (50, 7.5)
    assert (c.vae.preset, c.vae.scaling_factor, c.vae.checkpoint) == ("sd", 0.18215, "")
    assert not c.vae.allow_untrained
    assert (c.text.encoder, c.text.tower, c.text.dim) == ("tower", "clip", 768)
    family, kwargs = models.model_kwargs(c.model)
    assert (family, c.model.preset, c.model.checkpoint) == ("sd_unet", "sd15", "")
    # 64x64x4 latents of 512 px radiographs (one channel replicated to RGB), CLIP-L context.
    assert (kwargs["sample_size"], kwargs["in_channels"], kwargs["out_channels"]) == (64, 4, 4)
    assert kwargs["cross_attention_dim"] == 768
    assert models.param_count(models.abstract_params(c.model)) == 859_520_964
    # bf16 is an override of the compute dtype.
    c.model.dtype = "bfloat16"
    assert models.model_kwargs(c.model)[1]["dtype"] == np.dtype("bfloat16")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """python -m jaxcf.train --config=configs/sd_cxr.py:toy: 1 step from a pretrained
    checkpoint, then resumed to 2 without it (tests/test_configs.py leaves sd_cxr to this)."""
    from jaxcf import train as train_cli

    tmp_path = tmp_path_factory.mktemp("sd_cxr_toy")
    config = get_config("toy")
    assert config.model.family == "sd_unet" and config.text.encoder == "trainable"
    assert models.model_kwargs(config.model)[1]["cross_attention_dim"] == config.text.dim == 32
    # Pretrained weights for the toy UNet: a redrawn network of the same config.
    pretrained = SDUNet(sd_unet_config(config.model), rngs=nnx.Rngs(7))
    file = tmp_path / "unet.safetensors"
    save_file(sd_unet_state_dict(pretrained), str(file))
    workdir = tmp_path / "run"
    argv = [
        "train",
        f"--config={REPO / 'configs' / 'sd_cxr.py'}:toy",
        f"--workdir={workdir}",
        f"--config.model.checkpoint={file}",
        "--config.train.checkpoint_every=1",
    ]
    assert train_cli.main([*argv, "--config.train.num_steps=1"]) == 0
    first = Checkpoints(workdir)
    assert first.latest_step == 1
    first.close()
    # A resumed run restores its own checkpoint: model.checkpoint is not read again.
    file.unlink()
    assert train_cli.main([*argv, "--config.train.num_steps=2"]) == 0
    return workdir, file


def test_toy_trains_from_a_checkpoint_and_resumes_without_it(toy_run):
    workdir, file = toy_run
    ckpt = Checkpoints(workdir)
    assert ckpt.latest_step == 2
    ckpt.close()
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["step"] == 2 and np.isfinite(last["loss"])
    assert json.loads((workdir / "config.json").read_text())["model"]["checkpoint"] == str(file)


def test_attention_cli_edits_a_phantom_radiograph(toy_run, tmp_path, capsys):
    """python -m jaxcf.counterfactual --method=attention on one of the run's phantoms (lung
    masks found in its MIMIC-like layout), then bad input: one line, exit 2."""
    from jaxcf.counterfactual import __main__ as cli

    workdir = toy_run[0]
    image = sorted((workdir / "phantom" / "cxr" / "files").rglob("*.jpg"))[0]
    base = [
        "counterfactual",
        f"--config={REPO / 'configs' / 'sd_cxr.py'}:toy",
        f"--checkpoint={workdir}",
        "--method=attention",
        "--config.counterfactual.attention.num_steps=3",
    ]
    out = tmp_path / "edit"
    assert cli.main([*base, f"--input={image}", f"--out={out}"]) == 0, capsys.readouterr().err
    assert "ROI: right lower zone" in capsys.readouterr().out
    for part in ("input", "counterfactual", "difference", "attention", "roi", "panel"):
        assert (out / f"{image.stem}_{part}.png").is_file(), part
    summary = json.loads((out / f"{image.stem}_summary.json").read_text())
    assert summary["label"] == "Attention regulation (full)"
    assert 0.0 <= summary["outside_roi"] <= 1.0 and np.isfinite(summary["ssim"])
    # An ROI file replaces the prompt's (read at the image's size); bad input is refused.
    from jaxcf.experiments.cxr_attention import load_radiograph

    lungs = workdir / "phantom" / "cxr" / "masks" / f"{image.stem}_right_lung.png"
    loaded = load_radiograph(image, roi=str(lungs))
    assert loaded.roi.shape == loaded.image.shape and loaded.roi.any()
    np.testing.assert_array_equal(loaded.roi, loaded.right)
    argv = [*base, f"--input={image}", f"--out={tmp_path / 'bad'}"]
    for extra, message in [
        (["--config.counterfactual.attention.target_prompt=in the right lower zone"],
         "has none of pathology_words"),
        ([f"--mask={REPO / 'docs' / 'images' / 'paper004_rflow_real_panel.png'}"], "px, the image"),
        ([f"--roi={tmp_path / 'missing.png'}"], "--roi: no such file"),
    ]:  # fmt: skip
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_evaluate_attention_writes_the_ablation_table(toy_run, tmp_path, capsys):
    """python -m jaxcf.evaluate --method=attention: Table 2's rows on the normal phantoms."""
    from jaxcf import evaluate

    out = tmp_path / "eval"
    argv = [
        "evaluate",
        f"--config={REPO / 'configs' / 'sd_cxr.py'}:toy",
        f"--checkpoint={toy_run[0]}",
        "--method=attention",
        "--split=val",  # the toy's one normal radiograph
        f"--out={out}",
        "--config.counterfactual.attention.num_steps=2",
        "--config.eval.target_template=opacity in the {side} lower zone",
        "--config.eval.roi_template={side} upper zone",  # the ROI from other words
    ]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["roi_from"] == ["right upper zone"]
    rows = list(summary["results"])
    assert rows[:2] == ["Plain prompt edit (no regulation)", "Attention regulation (full)"]
    assert rows[2:5] == [f"Attention regulation (w/o Eq. {k})" for k in (5, 6, 9)]
    assert rows[5] == "Input through the VAE (no edit)"
    assert summary["inputs"] == 1 and (out / "panel_0.png").is_file()
    assert "| Attention regulation (full) |" in (out / "metrics.md").read_text()


def tiny_config(checkpoint: str = "", family: str = "sd_unet"):
    """A pixel-space prompt model: the tiny SD UNet on 8x8x1 images, a 32-wide encoder."""
    c = base_config()
    c.data.update(dataset="cxr", task="cxr", image_size=8)
    c.text.update(vocab_size=10, max_len=6, dim=32, depth=1, heads=2)
    if family == "sd_unet":
        c.model.update(family="sd_unet", preset="tiny", in_channels=1, out_channels=1)
    c.model.checkpoint = checkpoint
    c.diffusion.update(space="pixel", condition="prompt", num_timesteps=50)
    return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(file, converted params): the state dict of a tiny SDUNet saved as safetensors, and
    the same weights converted into the registry family's params."""
    config = tiny_config()
    network = SDUNet(sd_unet_config(config.model), rngs=nnx.Rngs(3))
    state = sd_unet_state_dict(network)
    file = tmp_path_factory.mktemp("pretrained") / "unet.safetensors"
    save_file(state, str(file))
    _, params = models.build(config.model, jax.random.key(0))
    return file, state, sd_unet_params(state, params, sd_unet_config(config.model))


def test_model_checkpoint_initialises_the_denoiser(pretrained, key):
    file, _, converted = pretrained
    task = make_task(tiny_config(str(file)), key)
    assert close(task.params["model"], converted)
    random = make_task(tiny_config(), key).params["model"]
    assert jax.tree.structure(random) == jax.tree.structure(converted)
    assert not close(random, converted)
    # Restoring (a resumed run, inference): the run's own checkpoint replaces the random
    # init, and model.checkpoint is not read (here: a file that is gone).
    restoring = make_task(tiny_config(str(file) + ".gone"), key, restoring=True)
    assert close(restoring.params["model"], random)
    # The loss runs on the loaded weights.
    batch = {
        "image": jax.random.normal(key, (2, 8, 8, 1)),
        "prompt_ids": np.array([[1, 4, 5, 2, 0, 0], [1, 6, 2, 0, 0, 0]], np.int32),
        "prompt_mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], bool),
    }
    loss, _ = task.loss(task.params, task.frozen, batch, key)
    assert np.isfinite(float(loss))


def test_pipeline_folder_and_its_config_json(pretrained, key, tmp_path):
    _, state, converted = pretrained
    unet = tmp_path / "sd" / "unet"
    unet.mkdir(parents=True)
    save_file(state, str(unet / "diffusion_pytorch_model.safetensors"))
    hf = {"_class_name": "UNet2DConditionModel", **TINY_DIFFUSERS, "in_channels": 1}
    hf["out_channels"] = 1
    (unet / "config.json").write_text(json.dumps(hf))
    # The pipeline folder (its unet/ is found) and the unet/ folder itself.
    for path in (unet.parent, unet):
        assert close(make_task(tiny_config(str(path)), key).params["model"], converted)
    # Head counts leave no trace in the shapes: config.json must agree with the model.
    (unet / "config.json").write_text(json.dumps({**hf, "attention_head_dim": 4}))
    with pytest.raises(CheckpointError) as err:
        make_task(tiny_config(str(unet)), key)
    message = str(err.value)
    assert "\n" not in message and str(unet / "config.json") in message
    assert "heads (4, 4) there, (2, 2) in the model" in message


def test_mismatched_checkpoint_is_one_line_naming_the_file(pretrained, key, tmp_path):
    _, state, _ = pretrained
    state = dict(state)
    del state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    state["mid_block.attentions.0.extra.weight"] = np.zeros(2, np.float32)
    file = tmp_path / "bad.safetensors"
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as err:
        make_task(tiny_config(str(file)), key)
    message = str(err.value)
    assert "\n" not in message and str(file) in message
    assert "1 missing keys: down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in message
    assert "1 unexpected keys: mid_block.attentions.0.extra.weight" in message
    # Another network's sizes: the tensors that do not fit are named.
    config = tiny_config(str(pretrained[0]))
    config.model.cross_attention_dim = 16
    config.text.dim = 16
    with pytest.raises(CheckpointError, match="do not fit"):
        make_task(config, key)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=f"{missing}: no such checkpoint file"):
        make_task(tiny_config(str(missing)), key)


def test_family_without_a_loader_is_refused_by_name(pretrained, key):
    config = tiny_config(str(pretrained[0]), family="unet")
    config.model.update(image_size=8, in_channels=1, context_dim=32)
    with pytest.raises(InputError) as err:
        make_task(config, key)
    message = str(err.value)
    assert "\n" not in message and "'unet' family has no checkpoint loader" in message
    assert "model.checkpoint=" in message and "sd_unet" in message
    # The registry never hands "checkpoint" to a constructor.
    assert "checkpoint" not in models.model_kwargs(config.model)[1]


def test_other_families_load_through_their_converters(tmp_path, key):
    """DiT (facebookresearch layout) and the VAE (diffusers AutoencoderKL) take
    model.checkpoint through the same table; the DiT's freq_shift is checked."""
    from jaxcf.convert.diffusers_vae import vae_params_to_diffusers
    from jaxcf.convert.dit import export_facebook

    dit = {
        "family": "dit",
        "preset": "DiT-S/2",
        "input_size": 8,
        "in_channels": 4,
        "hidden_size": 32,
        "depth": 1,
        "num_heads": 2,
        "num_classes": 2,
    }
    _, weights = models.build(dit, jax.random.key(5))
    save_file(export_facebook(weights, input_size=8), str(tmp_path / "dit.safetensors"))
    vae = {"family": "vae", "preset": "mri3d_small"}
    _, vae_weights = models.build(vae, jax.random.key(5))
    save_file(vae_params_to_diffusers(vae_weights), str(tmp_path / "vae.safetensors"))
    for config, want in ((dit, weights), (vae, vae_weights)):
        name = f"{config['family']}.safetensors"
        _, params = models.build_pretrained({**config, "checkpoint": str(tmp_path / name)}, key)
        assert close(params, want) and not close(models.build(config, key)[1], want)
    with pytest.raises(CheckpointError, match="freq_shift"):
        models.build_pretrained(
            {**dit, "freq_shift": 1.0, "checkpoint": str(tmp_path / "dit.safetensors")}, key
        )
