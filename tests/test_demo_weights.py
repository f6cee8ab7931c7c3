"""The shipped demo model: export a trained workdir's EMA weights (safetensors + manifest),
install them into a fresh workdir that load_trained reads unchanged, refuse corrupted or
mismatched files, and `python -m jaxcf.demo` evaluating a shipped model without training."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest

from jaxcf import demo, demo_model, demo_weights
from jaxcf.checkpoint import Checkpoints, abstract_like
from jaxcf.cli import one_line
from jaxcf.errors import InputError
from jaxcf.inference import load_trained

STEPS = 3


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(trained toy workdir, the folder `python -m jaxcf.demo_model --toy` exported it to)."""
    root = tmp_path_factory.mktemp("demo_model")
    workdir, out = root / "train", root / "shipped"
    argv = ["--toy", "--steps", str(STEPS), "--workdir", str(workdir), "--out", str(out)]
    assert demo_model.main(argv) == 0
    return workdir, out


def _leaves(params) -> list[tuple[str, np.ndarray]]:
    return [(name, np.asarray(x)) for name, x in demo_weights.flat_names(params)]


def test_export_install_round_trip_is_exact(shipped, tmp_path):
    workdir, out = shipped
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )
    assert manifest["step"] == STEPS
    assert manifest["config"] == json.loads((workdir / "config.json").read_text())
    assert manifest["seed"] == {"train": 0, "data": manifest["config"]["data"]["seed"]}
    assert manifest["train_time"]["seconds"] > 0
    assert manifest["command"].startswith("python -m jaxcf.demo_model --toy")
    assert manifest["bytes"] == (out / "model.safetensors").stat().st_size
    assert manifest["bytes"] < 4 * manifest["num_params"] + 64 * 1024  # float32 + header

    installed = tmp_path / "installed"
    demo_weights.install_model(out, installed)
    original, restored = load_trained(workdir), load_trained(installed)
    assert restored.step == original.step == STEPS
    a, b = _leaves(original.params), _leaves(restored.params)
    assert [n for n, _ in a] == [n for n, _ in b] and len(a) > 100
    for (name, x), (_, y) in zip(a, b, strict=True):
        assert x.dtype == y.dtype == np.float32, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    # The EMA weights, not the raw ones.
    checkpoints = Checkpoints(workdir)
    try:
        raw = checkpoints.restore_subtrees({"params": abstract_like(original.params)})["params"]
    finally:
        checkpoints.close()
    assert any(not np.array_equal(x, y) for (_, x), (_, y) in zip(b, _leaves(raw), strict=True))

    # The same weights give the same bytes: the sha256 reproduces.
    again = demo_weights.export_model(workdir, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()
    assert again["sha256"] == manifest["sha256"] and again["command"] is None
    assert again["train_time"]["source"] == "summary.json: steps 0 to the end"
    assert again["train_time"]["seconds"] > 0
    assert not manifest["reproduce"]["config_matches"]  # the toy config is not the demo's
    assert "data.image_size" in manifest["reproduce"]["differences"]

    # A workdir trained on a dataset root cannot be shipped (the demo regenerates phantoms).
    config = json.loads((workdir / "config.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config["data"]["root"] = "/data/brats"
    (elsewhere / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"data\.root is '/data/brats'"):
        demo_weights.export_model(elsewhere, tmp_path / "no")

    # Installing again is a no-op; the installed copy keeps its step.
    demo_weights.install_model(out, installed)
    assert load_trained(installed).step == STEPS


def test_a_corrupted_file_is_refused_naming_it(shipped, tmp_path):
    _, out = shipped
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_bytes((out / "manifest.json").read_bytes())
    blob = bytearray((out / "model.safetensors").read_bytes())
    blob[-5] ^= 0x01  # one bit of one weight
    (bad / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(InputError) as err:
        demo_weights.install_model(bad, tmp_path / "w")
    message = one_line(err.value)
    assert f"{bad / 'model.safetensors'}: sha256" in message and "does not match" in message
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_mismatched_network_is_refused_naming_the_file_and_parameter(shipped, tmp_path):
    _, out = shipped
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["model"]["model_channels"] = 8  # the weights have 16
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    with pytest.raises(InputError) as err:
        demo_weights.install_model(bad, tmp_path / "w")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{bad / 'model.safetensors'}: parameter 'model.")
    assert "has shape" in message and "the network expects" in message


def test_a_workdir_with_its_own_training_is_never_overwritten(shipped):
    workdir, out = shipped
    before = (workdir / "config.json").read_text()
    with pytest.raises(InputError, match="holds checkpoints of a model trained there"):
        demo_weights.install_model(out, workdir)
    assert (workdir / "config.json").read_text() == before


def test_demo_evaluates_the_shipped_model_without_training(shipped, tmp_path, monkeypatch, capsys):
    _, out = shipped

    def no_training(*args, **kwargs):
        raise AssertionError("the demo trained although a shipped model was given")

    monkeypatch.setattr("jaxcf.training.loop.train_and_evaluate", no_training)
    monkeypatch.setenv(demo_weights.ENV_VAR, str(out))
    workdir = tmp_path / "quickstart"
    assert demo.main(["--workdir", str(workdir), "--toy"]) == 0
    printed = capsys.readouterr().out
    assert f"using the shipped demo model (step {STEPS}, trained by `python -m" in printed
    assert "| Diff-SCM |" in printed
    summary = json.loads((workdir / "demo.json").read_text())
    assert summary["train"]["model"] == "shipped" and summary["train"]["step"] == STEPS
    record = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
    assert set(record["results"]) >= {"threshold", "diffscm"}
    assert f"(model step {STEPS})" in (workdir / "eval" / "test" / "metrics.md").read_text()
    assert not (workdir / "metrics.jsonl").exists()  # nothing was trained here

    # make demo TRAIN=1 in this workdir: the installed copy goes, the phantoms stay.
    calls = []
    monkeypatch.setattr(
        "jaxcf.training.loop.train_and_evaluate",
        lambda config, wd: calls.append((wd / "checkpoints").exists()) or {"step": 0},
    )
    assert demo.train_model(workdir, demo_weights.quickstart_config(1, True))["model"] == "trained"
    assert calls == [False] and (workdir / "phantom" / "brats2021").is_dir()
    assert not (workdir / demo_weights.MARKER).exists()


def test_demo_without_a_shipped_model_trains_or_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv(demo_weights.ENV_VAR, raising=False)
    monkeypatch.setattr(demo_weights, "SHIPPED", tmp_path / "absent")
    assert demo_weights.shipped_model_dir(None, toy=False) is None  # -> the demo trains
    monkeypatch.setattr(demo_weights, "SHIPPED", tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert demo_weights.shipped_model_dir(None, toy=False) == tmp_path
    assert demo_weights.shipped_model_dir(None, toy=True) is None  # --toy trains
    with pytest.raises(FileNotFoundError, match=r"nowhere/manifest\.json"):
        demo_weights.shipped_model_dir(tmp_path / "nowhere", toy=True)
    with pytest.raises(InputError, match=r"manifest\.json: format is None"):
        demo_weights.read_manifest(tmp_path)


def test_demo_model_refuses_a_workdir_that_holds_a_checkpoint(shipped, tmp_path, capsys):
    workdir, _ = shipped
    argv = ["--toy", "--workdir", str(workdir), "--out", str(tmp_path / "o")]
    assert demo_model.main(argv) == 2
    assert f"{workdir}: holds a checkpoint (step {STEPS})" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_manifest_says_whether_make_demo_model_reproduces_the_run(tmp_path):
    config = json.loads(demo_weights.quickstart_config(16000, False).to_json_best_effort())
    config["train"]["checkpoint_every"] = 2000  # bookkeeping: the same weights
    same = demo_weights.reproduction(config, 16000)
    assert same == {
        "command": "make demo-model DEMO_MODEL_STEPS=16000",
        "config_matches": True,
        "differences": [],
    }
    config["optim"]["lr"] = 5e-4
    assert demo_weights.reproduction(config, 16000)["differences"] == ["optim.lr"]
    assert demo_weights.reproduction(config, 12000)["differences"] == [
        "optim.lr",
        "train.num_steps",
    ]


def test_a_resumed_run_has_no_wall_time_unless_given(tmp_path):
    rows = [{"step": 50, "time": 100.0}, {"step": 100, "time": 160.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    summary = {"step": 100, "seconds": 30.0, "start_step": 60}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    time = demo_weights._training_time(tmp_path, 100)
    assert time["seconds"] is None and time["last_invocation_seconds"] == 30.0
    assert time["metrics_span_seconds"] == 60.5 and time["logged_steps"] == [50, 100]
    assert "from step 60" in time["source"]
    summary["start_step"] = 0
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert demo_weights._training_time(tmp_path, 100)["seconds"] == 30.0
    assert "(wall time not recorded)" in demo_weights.describe({"step": 1, "train_time": None})
    assert (
        demo_weights.describe(
            {"step": 7, "command": "make demo-model", "train_time": {"seconds": 5400.0}}
        )
        == "step 7, trained by `make demo-model` in 90 min"
    )
