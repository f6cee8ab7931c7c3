"""Every shipped config trains out of the box (phantom data), at a toy size, through the CLI,
leaves a checkpoint, and a second invocation resumes from it."""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxcf import train as train_cli
from jaxcf.checkpoint import Checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]

COMMON = [
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=1",
    "--config.train.sample_every=0",
    "--config.mesh.data=1",
    "--config.data.phantom.cases=4",
    "--config.data.phantom.size=32",
    "--config.data.batch_size=2",
]
UNET16 = [
    "--config.data.image_size=16",
    "--config.model.preset=tiny2d",
    "--config.model.image_size=16",
]
WDM8 = [
    "--config.data.volume_size=16",
    "--config.model.preset=wdm_tiny_text",
    "--config.model.image_size=8",
]
TOY = {
    "quickstart": ["--config.data.image_size=16", "--config.model.image_size=16"],
    "diffscm_brats": UNET16,
    "pcf_unet_brats": UNET16,
    # DiT-S/2 on the 4-channel MRI VAE's 4x4 latents of 32 px slices; the VAE is untrained
    # (refused unless allowed).
    "pcf_dit_brats": [
        "--config.data.image_size=32",
        "--config.model.preset=DiT-S/2",
        "--config.model.input_size=4",
        "--config.model.in_channels=4",
        "--config.vae.preset=mri4",
        "--config.vae.allow_untrained=True",
    ],
    "vae_brats": ["--config.data.image_size=16"],
    "wdm_ms": WDM8,
    "wdm_adni": WDM8,
}


def test_every_config_file_is_covered():
    shipped = {path.stem for path in (REPO / "configs").glob("*.py")}
    assert shipped == set(TOY)


@pytest.mark.parametrize("name", sorted(TOY))
def test_config_trains_leaves_a_checkpoint_and_resumes(name, tmp_path, capsys):
    workdir = tmp_path / name
    argv = [
        "train",
        f"--config={REPO / 'configs' / f'{name}.py'}",
        f"--workdir={workdir}",
        *COMMON,
        *TOY[name],
    ]
    assert train_cli.main([*argv, "--config.train.num_steps=1"]) == 0, capsys.readouterr().err
    ckpt = Checkpoints(workdir)
    assert ckpt.latest_step == 1
    ckpt.close()
    assert train_cli.main([*argv, "--config.train.num_steps=2"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "resuming from step 1" in err
    ckpt = Checkpoints(workdir)
    assert ckpt.latest_step == 2
    ckpt.close()
    steps = [
        json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2]
    assert train_cli.main([*argv, "--config.train.num_steps=2"]) == 0
    assert "already trained to step 2" in capsys.readouterr().out
