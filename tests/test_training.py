"""The training loop, checkpoints, resume, divergence and the train CLI, on phantoms."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcf import train as train_cli
from jaxcf.checkpoint import Checkpoints
from jaxcf.training.loop import TrainingDiverged, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "jax"


def load_config(name: str, arg: str | None = None):
    """configs/<name>.py's get_config(arg), loaded by path as the CLI does."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def quick_config(**train):
    """configs/quickstart.py:toy (16x16 slices, batch 8, one device; the 8-device test sets
    mesh.data = -1) on 4 phantom cases: seconds."""
    c = load_config("quickstart", "toy")
    c.data.phantom.cases = 4
    c.train.update({"num_steps": 6, "log_every": 1, "checkpoint_every": 3, **train})
    c.optim.update(lr=1e-3)
    return c


def losses(workdir: pathlib.Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]


def restored_params(workdir: pathlib.Path):
    ckpt = Checkpoints(workdir)
    state = ckpt.manager.restore(ckpt.latest_step)["state"]
    ckpt.close()
    return jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema"]), ckpt.latest_step


def test_twenty_steps_on_eight_devices_lower_the_loss(tmp_path):
    assert jax.device_count() == 8  # tests/conftest.py fakes 8 CPU devices
    config = quick_config(num_steps=20, checkpoint_every=20)
    config.mesh.data = -1  # all 8: the batch of 8 is split one sample per device
    summary = train_and_evaluate(config, tmp_path)
    assert summary["step"] == 20 and summary["checkpoint_step"] == 20
    values = losses(tmp_path)
    assert len(values) == 20
    assert np.mean(values[-5:]) < np.mean(values[:5]), values
    assert (tmp_path / "tb").is_dir() and any((tmp_path / "tb").iterdir())


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_and_evaluate(quick_config(num_steps=6), straight)
    train_and_evaluate(quick_config(num_steps=3), split)  # "interrupted" after step 3
    summary = train_and_evaluate(quick_config(num_steps=6), split)  # resumes
    assert summary["step"] == 6
    (p1, e1, s1), (p2, e2, s2) = restored_params(straight), restored_params(split)
    assert s1 == s2 == 6
    for a, b in zip(p1 + e1, p2 + e2, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert losses(split)[3:] == losses(straight)[3:]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = quick_config(num_steps=40, checkpoint_every=1)
    config.optim.update(lr=1e12, grad_clip=0.0)  # diverges within a few steps
    with pytest.raises(TrainingDiverged, match=r"at step (\d+); the last good checkpoint is step"):
        train_and_evaluate(config, tmp_path)
    ckpt = Checkpoints(tmp_path)
    good = ckpt.latest_step
    assert good is not None
    state = ckpt.manager.restore(good)["state"]
    ckpt.close()
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--workdir=/tmp/x"], "--config=configs/NAME.py is required"),
        ([f"--config={REPO}/configs/nope.py", "--workdir=/tmp/x"], "nope.py"),
        (
            [
                f"--config={REPO}/configs/quickstart.py",
                "--workdir=/tmp/x",
                "--config.train.nmu_steps=3",
            ],
            "nmu_steps",
        ),
        (
            [
                f"--config={REPO}/configs/quickstart.py",
                "--workdir=/tmp/x",
                "--config.train.num_steps=many",
            ],
            "num_steps",
        ),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(args, message, capsys):
    assert train_cli.main(["jaxcf.train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cli_bad_data_root_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_brats_here"
    code = train_cli.main(
        [
            "jaxcf.train",
            f"--config={REPO}/configs/quickstart.py",
            f"--workdir={tmp_path / 'w'}",
            f"--config.data.root={missing}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(missing) in err and len(err.splitlines()) == 1, err


def test_sigint_saves_a_checkpoint_and_a_second_run_resumes(tmp_path):
    workdir = tmp_path / "w"
    env = dict(os.environ, JAXCF_CACHE_DIR=str(CACHE), PYTHONUNBUFFERED="1")
    args = [
        sys.executable,
        "-m",
        "jaxcf.train",
        "--config=configs/quickstart.py:toy",
        f"--workdir={workdir}",
        "--config.train.num_steps=100000",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=100000",
        "--config.data.phantom.cases=4",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.5)
    assert metrics.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved at step" in err
    step = Checkpoints(workdir).latest_step
    assert step is not None and step >= 3
    resumed = subprocess.run(
        [*args[:6], f"--config.train.num_steps={step + 2}", *args[7:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {step}" in resumed.stderr
