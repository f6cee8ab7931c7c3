"""Paper 002's segmentation pipeline: label <-> class maps, the segmentation and refiner
tasks, the refiner's sampling (counterfactual.refine) and, end to end on toy phantoms,
coarse Res U-Net -> conditional refiner -> `python -m jaxcf.evaluate --method=refine`."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import diffusion as D
from jaxcf import evaluate as evaluate_cli
from jaxcf import train as train_cli
from jaxcf.counterfactual import refine
from jaxcf.counterfactual.model import MethodModel
from jaxcf.errors import InputError
from jaxcf.inference import load_refiner
from jaxcf.segmentation.labels import classes_from_labels, labels_from_classes, region_dice
from jaxcf.training.segmenter import load_segmenter

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("et_label", [3, 4])
def test_label_maps_round_trip_through_the_four_classes(et_label):
    seg = np.array([[0, 1, 2, et_label]], np.uint8)
    classes = classes_from_labels(seg, et_label)
    np.testing.assert_array_equal(classes, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(labels_from_classes(classes, et_label), seg)
    np.testing.assert_array_equal(classes_from_labels(jnp.asarray(seg), et_label), classes)


def test_region_dice_follows_the_brats_regions():
    truth = jnp.array([[0, 1, 2, 3, 3, 0]])
    pred = jnp.array([[0, 1, 2, 2, 3, 1]])
    scores = {k: float(v) for k, v in region_dice(pred, truth).items()}
    # WT: pred {1,2,3,4,5} vs truth {1,2,3,4}: 2*4/9; TC: {1,4,5} vs {1,3,4}: 2*2/6;
    # ET: {4} vs {3,4}: 2*1/3
    assert scores == pytest.approx({"dice_wt": 8 / 9, "dice_tc": 2 / 3, "dice_et": 2 / 3})


def _config(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("toy")


def test_segmentation_and_refiner_tasks_refuse_configs_they_cannot_train():
    from jaxcf.training.tasks import make_task

    key = jax.random.key(0)
    c = _config("resunet_peds")
    c.model.out_channels = 3
    with pytest.raises(InputError, match=r"model\.out_channels must be 4"):
        make_task(c, key)
    c = _config("resunet_peds")
    c.data.dataset = "ms"
    with pytest.raises(InputError, match=r"data\.dataset must be one of"):
        make_task(c, key)
    c = _config("refiner_peds")
    c.diffusion.prediction = "eps"
    with pytest.raises(InputError, match="prediction must be 'x0'"):
        make_task(c, key)
    c = _config("refiner_peds")
    c.model.in_channels = 12  # [I; Y_t] is 8 channels without a coarse model
    with pytest.raises(InputError, match="takes \\[I; Y_t\\] = 8 channels"):
        make_task(c, key)


def _prior_denoiser(scale: float):
    """A refiner network that has learnt nothing but to trust the prior: logits = scale *
    C, read from the [I; Y_t; C] input (image channels: 1)."""

    def apply(weights, x, t, cond):
        return scale * x[..., 5:9]

    return apply


def test_conditional_refinement_keeps_a_trusted_prior():
    schedule = D.cosine(1000, prediction="x0")
    classes = jax.random.randint(jax.random.key(0), (2, 8, 8, 8), 0, 4)
    prior = 0.1 + 0.6 * jax.nn.one_hot(classes, 4)  # rows sum to 1: a confident coarse map
    batch = {"image": jnp.zeros((2, 8, 8, 8, 1)), "prior": prior}
    cfg = refine.default_config()
    seen = []  # (t, Y_t) of every denoiser call, in order

    def apply(weights, x, t, cond):
        jax.debug.callback(lambda t, y: seen.append((np.asarray(t), np.asarray(y))), t, x[..., 1:5])
        return _prior_denoiser(20.0)(weights, x, t, cond)

    fn = refine.build(MethodModel(apply=apply, schedule=schedule), cfg)
    key = jax.random.key(1)
    out = jax.jit(fn)(None, batch, key)
    np.testing.assert_array_equal(out["mask"], classes)
    np.testing.assert_allclose(out["counterfactual"].sum(-1), 1.0, atol=1e-5)
    # Sec. 3.3: the prior injected at t' = the first of the last round(0.3 * 10) = 3 DDIM
    # steps of the leading grid (200, 100, 0), Y_t' = sqrt(abar) C + sqrt(1 - abar) eps.
    start = D.samplers.start_timestep(1000, 10, 0.3)
    assert start == 200 and [int(t[0]) for t, _ in seen] == [200, 100, 0]
    noise = jax.random.normal(key, prior.shape, jnp.float32)
    expected = D.q_sample(schedule, prior, jnp.full((2,), start, jnp.int32), noise)
    np.testing.assert_allclose(seen[0][1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="coarse prior must be class probabilities"):
        fn(None, {**batch, "prior": prior[..., :3]}, key)


def test_unconditional_refinement_samples_from_noise_and_the_schedule_is_checked():
    schedule = D.cosine(1000, prediction="x0")
    fixed = jax.nn.one_hot(jnp.full((1, 8, 8, 8), 2), 4)

    def apply(weights, x, t, cond):  # always the same clean map: every sampler must land on it
        assert x.shape[-1] == 5  # [I; Y_t]
        return 30.0 * fixed

    cfg = refine.default_config()
    fn = refine.build(MethodModel(apply=apply, schedule=schedule), cfg)
    out = fn(None, {"image": jnp.zeros((1, 8, 8, 8, 1))}, jax.random.key(0))
    assert (np.asarray(out["mask"]) == 2).all()
    with pytest.raises(InputError, match="prediction='x0'"):
        refine.build(MethodModel(apply=apply, schedule=D.cosine(1000)), cfg)
    cfg.strength = 0.0
    with pytest.raises(InputError, match="strength"):
        refine.build(MethodModel(apply=apply, schedule=schedule), cfg)
    cfg.update(strength=0.3, num_steps=1)  # round(0.3) = 0 steps: nothing would be refined
    with pytest.raises(InputError, match="runs no DDIM step"):
        refine.build(MethodModel(apply=apply, schedule=schedule), cfg)


# -- end to end: coarse segmenter -> conditional refiner -> Table 3 ----------------------------


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """(coarse workdir, refiner workdir): the toy Res U-Net and, on its probabilities, the
    toy conditional refiner, trained a few steps through the train CLI, the refiner in two
    runs (the second resumes: the frozen coarse model is loaded again, not checkpointed).
    These are the toy runs of configs/resunet_peds.py and refiner_peds.py
    (tests/test_configs.py leaves them to this fixture)."""
    root = tmp_path_factory.mktemp("refine")
    coarse, refiner = root / "coarse", root / "refiner"
    every = "--config.train.checkpoint_every=1"
    argv = ["train", f"--config={REPO / 'configs' / 'resunet_peds.py'}:toy", f"--workdir={coarse}"]
    assert train_cli.main([*argv, "--config.train.num_steps=3", every]) == 0
    argv = [
        "train",
        f"--config={REPO / 'configs' / 'refiner_peds.py'}:toy",
        f"--workdir={refiner}",
        f"--config.refiner.coarse={coarse}",
        every,
    ]
    assert train_cli.main([*argv, "--config.train.num_steps=2"]) == 0
    assert train_cli.main([*argv, "--config.train.num_steps=3"]) == 0
    lines = (refiner / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # resumed at 2
    return coarse, refiner


def test_refiner_runs_on_the_frozen_coarse_model(trained_pair):
    coarse, workdir = trained_pair
    refiner = load_refiner(workdir)
    assert refiner.task.conditional and refiner.step == 3
    assert "coarse" in refiner.task.frozen and "coarse" not in refiner.task.params
    segmenter = load_segmenter(coarse)
    with pytest.raises(InputError, match="not a segmenter"):
        load_segmenter(workdir)
    with pytest.raises(InputError, match="not a diffusion refiner"):
        load_refiner(coarse)
    with pytest.raises(InputError, match=r"takes volumes \(B, X, Y, Z, 4\)"):
        segmenter.probabilities(np.zeros((1, 16, 16, 16, 2), np.float32))
    # A whole volume larger than the 16^3 window, odd sides: probabilities on the simplex.
    volume = np.random.default_rng(0).standard_normal((1, 20, 17, 16, 4)).astype(np.float32)
    probs = segmenter.probabilities(volume)
    assert probs.shape == (1, 20, 17, 16, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert set(np.unique(segmenter.labels(volume))) <= {0, 1, 2, 3}


def test_evaluate_refine_writes_table_3_panels_and_reports(trained_pair, tmp_path, capsys):
    _, workdir = trained_pair
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        f"--config={REPO / 'configs' / 'refiner_peds.py'}:toy",
        f"--checkpoint={workdir}",
        "--method=refine",
        "--split=train",
        f"--out={out}",
        "--config.counterfactual.refine.num_steps=4",
    ]
    assert evaluate_cli.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["results"]) == ["Coarse (resunet)", "Diffusion refiner (conditional)"]
    for row in summary["results"].values():
        assert 0.0 <= row["dice_avg"] <= 1.0 and row["hd95"] >= 0.0
    per_case = json.loads((out / "per_case.json").read_text())
    assert len(per_case) == summary["volumes"] == 2
    case = per_case[0]["case_id"]
    assert (out / f"panel_{case}.png").is_file()
    for suffix in (".json", ".md", "_prompt.txt", "_axial.png"):
        assert (out / "reports" / f"{case}{suffix}").is_file()
    assert "| Diffusion refiner (conditional) |" in (out / "metrics.md").read_text()
    # The coarse segmenter's workdir is not a refiner: one line, exit 2.
    bad = [*argv[:2], f"--checkpoint={trained_pair[0]}", *argv[3:]]
    assert evaluate_cli.main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "not a diffusion refiner" in err and len(err.splitlines()) == 1


def test_medsegdiff_trains_on_the_coarse_prior_and_evaluates_slice_by_slice(
    trained_pair, tmp_path, capsys
):
    """configs/medsegdiff_peds.py:toy, conditional on the toy coarse model: train CLI, then
    `evaluate --method=refine` runs it over the volumes' axial slices (odd sides padded)."""
    coarse, _ = trained_pair
    workdir, out = tmp_path / "medsegdiff", tmp_path / "eval"
    config = f"--config={REPO / 'configs' / 'medsegdiff_peds.py'}:toy"
    argv = ["train", config, f"--workdir={workdir}", f"--config.refiner.coarse={coarse}"]
    assert train_cli.main([*argv, "--config.train.num_steps=2"]) == 0
    line = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"noise_mse", "dice_ce", "dice_wt"} <= set(line)
    assert line["loss"] == pytest.approx(line["noise_mse"] + 10.0 * line["dice_ce"], rel=1e-4)
    argv = ["evaluate", config, f"--checkpoint={workdir}", "--method=refine", "--split=train"]
    argv += [f"--out={out}", "--config.counterfactual.medsegdiff.num_steps=3"]
    assert evaluate_cli.main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["method"] == "medsegdiff" and summary["window"] == "axial slices"
    assert list(summary["results"]) == ["Coarse (resunet)", "MedSegDiff (conditional)"]
    assert 0.0 <= summary["results"]["MedSegDiff (conditional)"]["dice_avg"] <= 1.0
    assert "DPM-Solver++ 3 steps" in (out / "metrics.md").read_text()
    # A network that does not read the prior, asked to train on one: one line, exit 2.
    capsys.readouterr()
    bad = ["train", config, f"--workdir={tmp_path / 'bad'}", f"--config.refiner.coarse={coarse}"]
    assert train_cli.main([*bad, "--config.model.prior=False"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the data's progress bars
    assert "and the coarse prior" in last and "model.prior False" in last
