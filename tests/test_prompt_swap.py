"""Prompt swap (paper 004) with the exact denoiser of a two-prompt mixture: a 3-D "subject"
whose "high lesion load" twin has bright lesions. Swapping "minimal" -> "high" must add the
lesions and leave the rest of the volume alone, for synthetic subjects (one noise, two
prompts) and for a real subject (inverted under its own prompt); bad prompts are named."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxcf import diffusion as D
from jaxcf.counterfactual import MethodModel, MethodRunner, registry
from jaxcf.data.text import Tokenizer, build_vocab
from jaxcf.errors import InputError

PROMPTS = ("Subject has minimal lesion load", "Subject has high lesion load")
TOKENIZER = Tokenizer(build_vocab(PROMPTS), max_len=8)
HIGH = TOKENIZER.vocab.index("high")
SIZE = 8


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    """(2, 8, 8, 8, 1) means: a smooth head (label 0, minimal) and the same head with two
    bright lesions (label 1, high); the lesion mask (8, 8, 8)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, SIZE)] * 3, indexing="ij"), -1)
    head = np.where((grid**2).sum(-1) < 0.8, -0.3 + 0.2 * grid[..., 0], -1.0)
    lesions = np.zeros((SIZE,) * 3, bool)
    lesions[2:4, 2:4, 3:5] = lesions[5:7, 4:6, 2:4] = True
    high = np.where(lesions, 0.8, head)
    return np.stack([head, high])[..., None].astype(np.float32), lesions


MEANS, LESIONS = _volumes()
SCHEDULE = D.linear()


def _model(tokenizer=TOKENIZER) -> MethodModel:
    """The mixture's exact denoiser; a prompt is label 1 when it says "high", the null
    prompt (the bare <bos>) is label 2 (any component)."""

    def prepare_cond(weights, cond):
        if "label" in cond:
            return cond
        ids, mask = cond["prompt_ids"], cond["prompt_mask"]
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None]
        says_high = jnp.any((ids == HIGH) & mask, axis=1)
        null = mask.sum(axis=1) == 1
        return {"label": jnp.where(null, 2, says_high.astype(jnp.int32))}

    def null_cond(cond):
        length = cond["prompt_ids"].shape[-1]
        return {
            "prompt_ids": jnp.zeros((length,), jnp.int32).at[0].set(2),
            "prompt_mask": jnp.arange(length) == 0,
        }

    def apply(weights, x_t, t, cond):
        denoiser = D.mixture_denoiser(
            SCHEDULE, weights, 0.02, labels=jnp.array([0, 1]), null_label=2
        )
        return denoiser(x_t, t, cond)

    return MethodModel(
        apply=apply,
        schedule=SCHEDULE,
        null_cond=null_cond,
        prepare_cond=prepare_cond,
        x0_transform=D.static_clip,
        tokenizer=tokenizer,
    )


def _config(**settings) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"method": "prompt_swap", "batch_size": 2, "seed": 0})
    config.update(registry.default_configs())
    config.prompt_swap.update(num_steps=20, **settings)
    return config


def _runner(**settings) -> MethodRunner:
    mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1})
    return MethodRunner(
        _model(), jnp.asarray(MEANS), "prompt_swap", _config(**settings), mesh, progress=False
    )


def test_synthetic_swap_adds_the_lesions_and_keeps_the_subject():
    shape = np.zeros((3, SIZE, SIZE, SIZE, 1), np.float32)  # only the shape counts
    out = _runner(mode="synthetic")({"image": shape})
    assert out["factual"].shape == out["counterfactual"].shape == shape.shape
    # From the same noise: the minimal prompt gives the plain head, the high prompt the
    # head with lesions, and nothing else changes.
    np.testing.assert_allclose(
        out["factual"][..., 0], np.broadcast_to(MEANS[0, ..., 0], (3, *LESIONS.shape)), atol=0.15
    )
    np.testing.assert_allclose(
        out["counterfactual"][..., 0],
        np.broadcast_to(MEANS[1, ..., 0], (3, *LESIONS.shape)),
        atol=0.15,
    )
    heat = out["heatmap"]
    assert heat[:, LESIONS].min() > 0.5 and heat[:, ~LESIONS].max() < 0.15
    # Different rows are different noise: runs are per-row, not one shared sample.
    assert not np.array_equal(out["factual"][0], out["factual"][1])


def test_real_subject_is_inverted_under_its_prompt_and_decoded_under_the_target():
    subject = MEANS[:1] + 0.01 * np.random.default_rng(0).normal(size=MEANS[:1].shape)
    out = _runner(mode="real", strength=0.6)({"image": subject.astype(np.float32)})
    np.testing.assert_array_equal(out["factual"], subject.astype(np.float32))
    # Under its own prompt the subject comes back; under "high" it gains the lesions.
    assert np.abs(out["reconstruction"] - subject).max() < 0.1
    heat = out["heatmap"][0]
    assert heat[LESIONS].min() > 0.5 and heat[~LESIONS].max() < 0.1
    # The default residual edit: the subject plus what the prompt changed from the same
    # x_T; edit="decoded" is the target decode itself (the same sampler output).
    np.testing.assert_allclose(
        out["counterfactual"],
        out["factual"] + out["decoded"] - out["reconstruction"],
        atol=1e-6,
    )
    raw = _runner(mode="real", strength=0.6, edit="decoded")({"image": subject.astype(np.float32)})
    assert "decoded" not in raw
    np.testing.assert_allclose(raw["counterfactual"], out["decoded"], atol=1e-5)


def test_guidance_interval_and_scale_reach_the_sampler():
    shape = np.zeros((1, SIZE, SIZE, SIZE, 1), np.float32)
    plain = _runner(mode="synthetic")({"image": shape})["counterfactual"]
    # w = 1 inside any interval is the conditional model: the same samples.
    same = _runner(mode="synthetic", guidance_from=0.2, guidance_to=0.5)({"image": shape})
    np.testing.assert_allclose(same["counterfactual"], plain, atol=1e-5)
    stronger = _runner(mode="synthetic", guidance_scale=3.0)({"image": shape})["counterfactual"]
    assert not np.allclose(stronger, plain, atol=1e-4)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_prompt": "Subject has severe lesion load"}, "['severe'] not in the model's"),
        ({"mode": "real", "edit": "paste"}, "edit must be one of"),
        ({"source_prompt": "  "}, "source_prompt: the prompt is empty"),
        ({"mode": "dream"}, "mode must be one of"),
        ({"guidance_from": 0.8, "guidance_to": 0.2}, "guidance_from / guidance_to"),
        ({"mode": "synthetic", "strength": 0.5}, "needs mode='real'"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        runner = _runner(**settings)
        runner({"image": np.zeros((1, SIZE, SIZE, SIZE, 1), np.float32)})


def test_a_model_without_prompts_is_refused():
    model = MethodModel(apply=lambda *a: None, schedule=SCHEDULE)
    with pytest.raises(InputError, match="prompt-conditioned model"):
        registry.get("prompt_swap").build(model, _config().prompt_swap)


def test_per_row_prompts_override_the_config():
    ids, mask = TOKENIZER.encode_batch([PROMPTS[0], PROMPTS[0]])
    shape = np.zeros((2, SIZE, SIZE, SIZE, 1), np.float32)
    out = _runner(mode="synthetic")(
        {"image": shape, "target_prompt_ids": ids, "target_prompt_mask": mask}
    )
    # Target = source: no change at all.
    assert out["heatmap"].max() < 1e-5


# ------------------------------------------------------------------ the CLI on a toy WDM


def test_prompt_swap_cli_on_a_toy_text_wdm(tmp_path, capsys):
    """configs/wdm_ms.py:toy trained two steps, then python -m jaxcf.counterfactual
    --method=prompt_swap: synthetic subjects, a real (phantom) subject and bad input."""
    import importlib.util
    import pathlib

    import nibabel as nib

    from jaxcf.counterfactual import __main__ as cli
    from jaxcf.training.loop import train_and_evaluate

    repo = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("wdm_ms", repo / "configs" / "wdm_ms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("toy")
    config.train.update(num_steps=2, checkpoint_every=2, log_every=1)
    workdir = tmp_path / "wdm"
    train_and_evaluate(config, workdir)

    base = [
        "counterfactual",
        f"--config={repo / 'configs' / 'wdm_ms.py'}:toy",
        f"--checkpoint={workdir}",
        "--method=prompt_swap",
        "--config.counterfactual.prompt_swap.num_steps=3",
    ]
    out = tmp_path / "synthetic"
    assert cli.main([*base, f"--out={out}", "--count=2"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "prompt_swap (synthetic): 2 subject(s)" in printed and "subject PSNR" in printed
    size = int(config.data.volume_size)
    for kind in ("factual", "counterfactual", "difference"):
        image = nib.load(out / f"synthetic001_{kind}.nii.gz")
        assert image.shape == (size,) * 3
    assert (out / "synthetic000_panel.png").is_file()

    # A real subject: a phantom volume with its own affine, 2 mm voxels, shifted.
    phantom = sorted((workdir / "phantom").rglob("*.nii.gz"))[0]
    source = nib.load(phantom)
    subject = tmp_path / "subject.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj, np.float32), source.affine), subject)
    real = tmp_path / "real"
    argv = [*base, f"--out={real}", f"--input={subject}"]
    assert cli.main([*argv, "--config.counterfactual.prompt_swap.strength=0.5"]) == 0, (
        capsys.readouterr().err
    )
    assert "prompt_swap (real): 1 subject(s)" in capsys.readouterr().out
    written = nib.load(real / "subject_counterfactual.nii.gz")
    assert written.shape == (size,) * 3 and (real / "subject_reconstruction.nii.gz").is_file()
    assert (real / "subject_decoded.nii.gz").is_file()  # the target decode before the edit
    # The cube's world coordinates cover the input's: its centre maps near the input's.
    centre_in = source.affine @ np.array([*(np.array(source.shape[:3]) - 1) / 2, 1.0])
    centre_out = written.affine @ np.array([*(np.array(written.shape) - 1) / 2, 1.0])
    spacing = np.abs(np.diag(written.affine)[:3]).max()
    assert np.abs(centre_in - centre_out)[:3].max() <= spacing

    for extra, message in [
        (
            ["--config.counterfactual.prompt_swap.target_prompt=Subject has huge lesion load"],
            "['huge'] not in the model's prompt vocabulary",
        ),
        ([f"--input={tmp_path / 'missing.nii.gz'}"], "no such NIfTI file"),
    ]:
        assert cli.main([*base, f"--out={tmp_path / 'bad'}", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    # python -m jaxcf.evaluate --method=prompt_swap on the same model: Tables 1 and 2.
    from jaxcf import evaluate

    evaluated = tmp_path / "evaluated"
    argv = [
        "evaluate",
        f"--config={repo / 'configs' / 'wdm_ms.py'}:toy",
        f"--checkpoint={workdir}",
        "--method=prompt_swap",
        f"--out={evaluated}",
        "--split=train",  # the toy's 4 cases: the train split holds every category
        "--config.counterfactual.prompt_swap.num_steps=3",
        "--config.counterfactual.prompt_swap.strength=0.5",
        "--config.eval.synthetic_subjects=2",
        "--config.eval.guidance_scales=(1.0,2.0)",
    ]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "## Table 1: prompt swap, train split" in printed and "## Table 2" in printed
    summary = json.loads((evaluated / "metrics.json").read_text())
    assert [row["guidance_scale"] for row in summary["table2"]] == [1.0, 2.0]
    assert summary["table1"]["alignment"] is None  # no --classifier
    # No --features: untrained Med3D features, a Frechet distance never called FID.
    assert summary["table1"]["fid"]["label"].startswith("FD (untrained")
    assert 0 < summary["table1"]["subject_ms_ssim"] <= 1 and summary["real"]
    assert {row["edit"] for row in summary["real"]} == {"residual", "decoded"}
    assert summary["lesion_meter"]["dice"] > 0
    assert (evaluated / "synthetic_panel.png").is_file()
    assert evaluate.main([*argv[:-4], "--method=nope"]) == 2
    assert "--method must be one of" in capsys.readouterr().err
