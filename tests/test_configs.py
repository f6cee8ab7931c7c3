"""Every shipped config trains out of the box (phantom data) at its own toy size
(`--config=configs/NAME.py:toy`) through the CLI, leaves a checkpoint, and a second
invocation resumes from it."""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxcf import train as train_cli
from jaxcf.checkpoint import Checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
# sd_cxr trains through the same CLI in tests/test_sd_cxr.py (from a pretrained checkpoint,
# then resumed without it), whose run the attention method's CLI tests reuse; resunet_peds
# refiner_peds (on its coarse model, then resumed) and medsegdiff_peds (on the same coarse
# model) in tests/test_refine.py.
# vae3d_ms and rflow_ms (on it) train through the CLI in tests/test_rflow_maisi.py.
TRAINED_ELSEWHERE = {
    "sd_cxr",
    "resunet_peds",
    "refiner_peds",
    "medsegdiff_peds",
    "vae3d_ms",
    "rflow_ms",
}
CONFIGS = sorted(path.stem for path in (REPO / "configs").glob("*.py"))


def test_configs_are_found():
    # tests/test_config_switch.py checks that every one has a small toy variant.
    assert {"quickstart", "diffscm_brats", "wdm_ms"} <= set(CONFIGS)
    assert RESUMED <= set(CONFIGS) - TRAINED_ELSEWHERE


# Resuming is checked once per kind of training state (pixel and latent diffusion, the
# VAE, the text-conditioned wavelet and rectified-flow models, the classifier); the other
# configs of a kind share its task and checkpoint code, so they only train.
RESUMED = {"quickstart", "pcf_dit_brats", "vae_brats", "wdm_ms", "rflow_adni", "classifier_ms"}


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - TRAINED_ELSEWHERE))
def test_config_trains_and_leaves_a_checkpoint(name, tmp_path, capsys):
    """Trains the toy variant one step through the CLI; RESUMED configs then resume."""
    workdir = tmp_path / name
    argv = [
        "train",
        f"--config={REPO / 'configs' / f'{name}.py'}:toy",
        f"--workdir={workdir}",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=1",
    ]
    assert train_cli.main([*argv, "--config.train.num_steps=1"]) == 0, capsys.readouterr().err
    ckpt = Checkpoints(workdir)
    assert ckpt.latest_step == 1
    ckpt.close()
    if name not in RESUMED:
        return
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
