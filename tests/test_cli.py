"""The command lines a new user meets first: --help and --show_config without a run, config
typos answered with the full field path and a suggestion, one error style
(`jaxcf.<tool>: message`, one line, exit code 2) for every tool, and latent models refused
on an untrained VAE."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import pytest

from jaxcf import cli
from jaxcf import train as train_cli
from jaxcf.data import make_phantom, prepare
from jaxcf.errors import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = f"--config={REPO / 'configs' / 'quickstart.py'}"


# ------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_train_help_prints_usage_and_flags_without_a_config(flag, capsys):
    assert train_cli.main(["jaxcf.train", flag]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("python -m jaxcf.train --config=configs/NAME.py --workdir=DIR")
    assert "Exit codes: 0 done" in out  # the whole docstring, not its first line
    for text in ("--workdir=VALUE", "Directory for checkpoints", "--show_config"):
        assert text in out
    assert "--config.GROUP.FIELD=VALUE" in out


def test_help_wins_over_bad_arguments(capsys):
    argv = ["jaxcf.train", "--config=configs/nope.py", "--config.trian.x=1", "--help"]
    assert train_cli.main(argv) == 0
    assert "--workdir" in capsys.readouterr().out


def test_counterfactual_help_exits_0(capsys):
    from jaxcf.counterfactual.__main__ import main

    assert main(["counterfactual", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--input" in out and "--show_config" in out


def test_evaluate_help_exits_0(capsys):
    from jaxcf.evaluate import main

    assert main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--split" in out


# ------------------------------------------------------------------------ --show_config


def test_show_config_prints_the_resolved_config_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["jaxcf.train", QUICKSTART, "--config.train.num_steps=7", "--config.optim.lr=0.125"]
    argv.append("--show_config")
    assert train_cli.main(argv) == 0  # no --workdir needed: nothing runs
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    train = lines.index("train:")
    assert "  num_steps: 7" in lines[train:]
    optim = lines.index("optim:")
    assert "  lr: 0.125" in lines[optim:] and "  lr: 0.125" not in lines[:optim]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- unknown config fields


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--config.optim.learning_rate=1",
            "unknown config field optim.learning_rate (did you mean optim.lr?)",
        ),
        ("--config.train.nmu_steps=3", "unknown config field train.nmu_steps (did you mean "),
        ("--config.train.steps=3", "(did you mean train.num_steps?)"),
        ("--config.trian.num_steps=3", "unknown config group trian (did you mean train?)"),
        ("--config.optim.zzz=1", "unknown config field optim.zzz; optim's fields: b1, b2,"),
        ("--config.qqq.x=1", "unknown config group qqq; groups: counterfactual, data,"),
        (
            "--config.train.num_steps.x=1",
            "config field train.num_steps is a value (int), not a group",
        ),
    ],
)
def test_unknown_config_field_names_its_path_and_a_suggestion(override, message, capsys):
    argv = ["jaxcf.train", QUICKSTART, "--workdir=/tmp/unused", override]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("jaxcf.train: ") and message in err, err


def test_unknown_field_walks_nested_groups():
    config = ml_collections.ConfigDict(
        {"data": {"phantom": {"cases": 4, "size": 32}, "image_size": 16}, "train": {"seed": 0}}
    )
    assert cli.unknown_field(config, "data.phantom.cases") is None
    assert (
        cli.unknown_field(config, "data.phantom.case")
        == "unknown config field data.phantom.case (did you mean data.phantom.cases?)"
    )
    assert cli.unknown_field(config, "data.phantm.size") == (
        "unknown config field data.phantm (did you mean data.phantom?)"
    )
    assert cli.unknown_field(config, "eval.split") == (
        "unknown config group eval; groups: data, train"
    )


def test_good_overrides_still_parse():
    config, values = cli.parse(
        ["jaxcf.train", QUICKSTART, "--config.optim.lr=0.5", "--config.data.phantom.cases=3"]
    )
    assert config.optim.lr == 0.5 and config.data.phantom.cases == 3
    assert values.show_config is False


# ---------------------------------------------------------------- argparse tools' errors


def test_prepare_errors_are_one_jaxcf_line(tmp_path, capsys):
    assert prepare.main(["--dataset", "brats"]) == 2  # argparse: missing flags
    err = capsys.readouterr().err
    assert err.startswith("jaxcf.prepare: ") and "--root" in err
    assert len(err.strip().splitlines()) == 1, err
    args = ["--dataset", "ms", "--root", str(tmp_path), "--out", str(tmp_path / "o")]
    assert prepare.main([*args, "--task", "volumes", "--no-progress"]) == 2  # a DataError
    err = capsys.readouterr().err
    assert err.startswith("jaxcf.prepare: no cases found in ") and str(tmp_path) in err
    assert len(err.strip().splitlines()) == 1, err
    # The folder regex shows as written, not as a repr with doubled backslashes.
    assert r"sub-\d{3}" in err and "\\\\" not in err


def test_prepare_help_keeps_the_whole_description(capsys):
    assert prepare.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "One-off conversion of a dataset into memory-mapped shards, so training never" in out
    assert "decompresses\nNIfTI / JPEG in the step loop." in out  # not cut mid-sentence
    assert "--overwrite" in out


def test_make_phantom_errors_are_one_jaxcf_line(tmp_path, capsys):
    assert make_phantom.main(["--kind", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcf.make_phantom: ") and "invalid choice" in err
    assert len(err.strip().splitlines()) == 1, err
    assert make_phantom.main(["--help"]) == 0
    assert "Write a phantom dataset" in capsys.readouterr().out


def test_brats_layout_error_shows_plain_regexes(tmp_path):
    from jaxcf.data import sources
    from jaxcf.data.errors import DataError

    (tmp_path / "not_a_case").mkdir()
    with pytest.raises(DataError) as info:
        sources.open_source("brats", tmp_path)
    assert r"BraTS2021_\d{5}" in str(info.value) and "\\\\" not in str(info.value)


# ------------------------------------------------------------------- untrained VAE


def test_pcf_dit_refuses_an_untrained_vae_before_training(tmp_path, capsys):
    workdir = tmp_path / "w"
    argv = [
        "jaxcf.train",
        f"--config={REPO / 'configs' / 'pcf_dit_brats.py'}:toy",
        f"--workdir={workdir}",
        "--config.vae.allow_untrained=False",  # the toy variant allows it
        "--config.train.num_steps=1",
    ]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("jaxcf.train: ")]
    assert len(lines) == 1, err
    assert "vae.checkpoint is empty" in lines[0]
    assert "--config.vae.allow_untrained=True" in lines[0]
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_untrained_vae_allowed_with_one_loud_line(capsys):
    from jaxcf.training.spaces import build_vae

    vae = ml_collections.ConfigDict(
        {"preset": "mri4", "checkpoint": "", "mode": "auto", "allow_untrained": False}
    )
    with pytest.raises(ValueError, match=r"vae\.checkpoint is empty.*allow_untrained=True"):
        build_vae(vae, jax.random.key(0))
    vae.allow_untrained = True
    _, params, mode = build_vae(vae, jax.random.key(0))
    assert mode == "joint" and jax.tree.leaves(params)
    err = capsys.readouterr().err
    assert err.startswith("WARNING: vae.checkpoint is empty") and len(err.splitlines()) == 1

    # vae.scaling_factor: 0 keeps the preset's (SD's 0.18215), a measured scale replaces it.
    from flax import nnx

    from jaxcf.errors import InputError

    vae.scaling_factor = 0.5
    graphdef, params, _ = build_vae(vae, jax.random.key(0))
    assert nnx.merge(graphdef, params).scaling_factor == 0.5
    vae.scaling_factor = -1.0
    with pytest.raises(InputError, match=r"vae\.scaling_factor must be > 0"):
        build_vae(vae, jax.random.key(0))


def test_a_bug_is_not_bad_input(monkeypatch, tmp_path):
    """Only InputError (and missing files) map to exit code 2; any other ValueError is a
    bug and keeps its traceback."""
    from jaxcf.counterfactual import __main__ as counterfactual_cli
    from jaxcf.counterfactual import cases

    def broken(path, flag):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr(cases, "output_dir", broken)
    argv = [
        "counterfactual",
        f"--config={REPO / 'configs' / 'quickstart.py'}",
        f"--checkpoint={tmp_path}",
        f"--input={tmp_path}",
        f"--out={tmp_path / 'o'}",
    ]
    with pytest.raises(ValueError, match="internal shape mismatch"):
        counterfactual_cli.main(argv)

    def bad_input(path, flag):
        raise InputError(f"{flag}: {path} is not writable")

    monkeypatch.setattr(cases, "output_dir", bad_input)
    assert counterfactual_cli.main(argv) == 2
