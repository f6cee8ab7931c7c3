"""configs/NAME.py's get_config(arg): "toy" is the same experiment at its CPU-test size, an
unknown arg is one clear error, and the model's size and channels follow the data's (on the
command line too) instead of being copied."""

from __future__ import annotations

import copy
import importlib.util
import pathlib
import pickle

import pytest

from jaxcf import cli
from jaxcf import train as train_cli
from jaxcf.counterfactual import registry as methods
from jaxcf.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(path.stem for path in (REPO / "configs").glob("*.py"))


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(name: str, *overrides: str):
    config, _ = cli.parse(["prog", f"--config={REPO / 'configs' / name}", *overrides])
    return config


def model_shape(config) -> tuple[int, int]:
    """(spatial size, input channels) the model is built with, its preset included."""
    _, kwargs = registry.model_kwargs(config.model)
    size = kwargs.get("image_size", kwargs.get("input_size", kwargs.get("sample_size")))
    return size, kwargs["in_channels"]


@pytest.mark.parametrize("name", CONFIGS)
def test_toy_variant_resolves_and_is_small(name):
    module = load(name)
    full, toy = module.get_config(), module.get_config("toy")
    assert module.get_config(None).to_dict() == full.to_dict()
    resolved = toy.copy_and_resolve_references()
    assert resolved.to_dict() == toy.to_dict()
    # Derived fields survive copies and pickling (spawned data workers, saved configs).
    assert pickle.loads(pickle.dumps(toy)).to_dict() == toy.to_dict()
    assert copy.deepcopy(toy).to_dict() == toy.to_dict()

    data = resolved.data
    # Swin-UNETR halves its input five times and needs a side of at least 64 (32^3 would
    # leave one voxel at its deepest stage, where instance norm has no statistics).
    crop_limit = 64 if resolved.model.family == "swin_unetr" else 16
    assert data.image_size <= 32 and data.volume_size <= 16 and data.crop_size <= crop_limit
    assert data.batch_size <= 8 and data.phantom.cases <= 8 and data.phantom.size <= 32
    assert resolved.mesh.data == 1
    assert resolved.train.num_steps <= 30 and resolved.train.sample_every == 0
    assert resolved.counterfactual.batch_size <= 16 and resolved.eval.max_items <= 16
    for method in methods.names():
        assert resolved.counterfactual[method].num_steps <= 10
    assert resolved.sampler.num_steps <= 10
    # The same experiment: same task, model family, diffusion and conditioning.
    for group, field in [
        ("data", "dataset"),
        ("data", "task"),
        ("train", "task"),
        ("model", "family"),
        ("diffusion", "space"),
        ("diffusion", "condition"),
        ("diffusion", "prediction"),
    ]:
        assert toy[group][field] == full[group][field], (group, field)
    params = registry.param_count(registry.abstract_params(toy.model))
    assert params < 25_000_000, params  # the largest, vae_brats's mri4 VAE, has 21M


@pytest.mark.parametrize("name", CONFIGS)
def test_toy_model_shape_follows_the_toy_data(name):
    toy = load(name).get_config("toy")
    data, space = toy.data, toy.diffusion.space
    if toy.train.task == "medsegdiff":  # image channels; the prior follows refiner.coarse
        assert toy.model.image_channels == data.channels and not toy.model.prior
        toy.refiner.coarse = "runs/coarse"
        assert toy.model.prior
        return
    size, channels = model_shape(toy)
    if toy.train.task == "segmentation":  # any side the network divides; the data's channels
        assert channels == data.channels
    elif toy.train.task == "refiner":  # [I; Y_t] on crops (the toy has no coarse model)
        assert (size, channels) == (data.crop_size, data.channels + 4)
        toy.refiner.coarse = "runs/coarse"  # [I; Y_t; C]: the channels follow
        assert model_shape(toy)[1] == data.channels + 8
    elif toy.model.family == "vae":
        assert (channels, toy.model.out_channels) == (data.channels, data.channels)
    elif space == "pixel":
        assert (size, channels) == (data.image_size, data.channels)
    elif space == "wavelet":
        assert (size, channels) == (data.volume_size // 2, 8 * data.channels)
    elif toy.model.get("spatial_dims") == 3:  # 3-D latents of the mri3d VAE: 1/4 of the side
        assert (size, channels) == (data.volume_size // 4, 4)
    else:  # latent, joint VAE (mri4): 1/8 of the side, 4 latent channels
        assert (size, channels) == (data.image_size // 8, 4)


def test_data_image_size_override_moves_the_model():
    config = parse("quickstart.py", "--config.data.image_size=64")
    assert config.is_locked
    assert config.data.image_size == 64 and config.model.image_size == 64
    assert model_shape(config) == (64, 4)
    assert parse("quickstart.py").model.image_size == 32
    toy = parse("quickstart.py:toy", "--config.data.image_size=16")
    assert toy.model.image_size == 16 and toy.data.phantom.cases == 8


def test_explicit_model_override_still_wins_without_moving_the_data():
    config = parse("quickstart.py", "--config.data.image_size=16", "--config.model.image_size=16")
    assert (config.data.image_size, config.model.image_size) == (16, 16)
    config = parse("quickstart.py", "--config.model.image_size=8")
    assert (config.data.image_size, config.model.image_size) == (32, 8)


@pytest.mark.parametrize(
    ("name", "overrides", "shape"),
    [
        ("diffscm_brats.py", [], (64, 4)),
        ("pcf_unet_brats.py", ["--config.data.image_size=64"], (64, 4)),
        # SD VAE per modality: 1/8 of the side, 4 modalities x 4 latent channels.
        ("pcf_dit_brats.py", [], (16, 16)),
        ("pcf_dit_brats.py", ["--config.data.image_size=256"], (32, 16)),
        # The 4-channel MRI VAE encodes the modalities jointly: 4 latent channels.
        ("pcf_dit_brats.py", ["--config.vae.preset=mri4"], (16, 4)),
        ("pcf_dit_brats.py", ["--config.vae.mode=joint"], (16, 4)),
        # WDM: 8 Haar sub-bands per channel on half the side.
        ("wdm_ms.py", [], (64, 8)),
        ("wdm_ms.py", ["--config.data.volume_size=64"], (32, 8)),
        ("wdm_adni.py", ["--config.data.dataset=brats2021"], (64, 32)),  # 4 modalities
        ("wdm_ms.py:toy", [], (8, 8)),
    ],
)
def test_model_shape_follows_data_and_preset(name, overrides, shape):
    assert model_shape(parse(name, *overrides)) == shape


def test_prompt_model_and_encoder_widths_agree():
    config = parse("wdm_ms.py", "--config.text.dim=128")
    assert config.model.context_dim == 128
    assert config.text.max_len == config.data.prompt_max_len == 16
    assert parse("wdm_ms.py:toy").model.context_dim == 32


def test_vae_in_and_out_channels_follow_the_data():
    config = parse("vae_brats.py")
    assert (config.model.in_channels, config.model.out_channels) == (4, 4)
    assert config.data.channels == 4


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_arg_is_a_value_error_naming_the_choices(name):
    with pytest.raises(ValueError, match=r"unknown config argument 'big'.*'toy'"):
        load(name).get_config("big")


def test_unknown_arg_on_the_command_line_is_one_line_exit_2(capsys):
    argv = ["jaxcf.train", f"--config={REPO / 'configs' / 'quickstart.py'}:big", "--workdir=/x"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("jaxcf.train: ") and "unknown config argument 'big'" in err
    assert "quickstart.py:toy" in err or "NAME.py:toy" in err


def test_unknown_dataset_is_named_when_the_channels_are_derived():
    config = parse("wdm_ms.py", "--config.data.dataset=bratz")
    with pytest.raises(ValueError, match=r"data\.dataset must be one of .*'bratz'"):
        _ = config.model.in_channels
