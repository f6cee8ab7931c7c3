"""The quickstart pipeline end to end at a toy size (phantoms -> train -> Diff-SCM and
promptable segmentation -> metrics table, NIfTI, panels), and the two inference CLIs
(python -m jaxcf.counterfactual, python -m jaxcf.evaluate) on its model, bad input included."""

from __future__ import annotations

import json
import pathlib
import time

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from jaxcf import demo, evaluate
from jaxcf.counterfactual import __main__ as counterfactual_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"--config={REPO / 'configs' / 'quickstart.py'}"


def test_quickstart_end_to_end_and_the_inference_clis(tmp_path, capsys):
    workdir = tmp_path / "quickstart"
    assert demo.main(["--workdir", str(workdir), "--toy"]) == 0
    printed = capsys.readouterr().out
    rows = (
        "Thresholding (FLAIR)",
        "Diff-SCM",
        "Promptable (oracle box)",
        "Promptable (heatmap box)",
    )
    for row in rows:
        assert f"| {row} |" in printed

    record = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
    results = record["results"]
    assert set(results) == {"threshold", "diffscm", "promptable", "promptable_heatmap_box"}
    counts = {row["slices"] for row in results.values()}
    assert len(counts) == 1 and 1 <= counts.pop() <= 16  # --toy: at most 16 tumour slices
    for name, row in results.items():
        for metric in ("dice", "iou", "auprc", "ideal_dice"):
            assert 0.0 <= row[metric] <= 1.0, (name, metric)
    assert (workdir / "eval" / "test" / "metrics.md").read_text().startswith("**Counterfactual")
    assert list((workdir / "eval" / "test").glob("example*_diffscm.png"))

    # NIfTI out with the input case's affine and shape; a PNG panel.
    summary = json.loads((workdir / "demo.json").read_text())
    case_id = summary["case"]["case"]
    source = nib.load(workdir / "phantom" / "brats2021" / case_id / f"{case_id}_flair.nii.gz")
    written = {
        kind: nib.load(workdir / "case" / f"{case_id}_{kind}.nii.gz")
        for kind in ("counterfactual", "heatmap", "mask")
    }
    assert written["counterfactual"].shape == (*source.shape, 4)
    for image in written.values():
        np.testing.assert_allclose(image.affine, source.affine)
        assert image.shape[:3] == source.shape
    assert set(np.unique(np.asarray(written["mask"].dataobj))) <= {0, 1}
    with Image.open(workdir / "case" / f"{case_id}_panel.png") as png:
        assert png.size[0] >= 3 * 128

    # python -m jaxcf.counterfactual, promptable with the default box prompt.
    out = tmp_path / "cf"
    case_dir = workdir / "phantom" / "brats2021" / case_id
    argv = [
        "counterfactual",
        CONFIG,
        f"--checkpoint={workdir}",
        f"--input={case_dir}",
        f"--out={out}",
        "--method=promptable",
        "--config.counterfactual.promptable.num_steps=5",
    ]
    assert counterfactual_cli.main(argv) == 0, capsys.readouterr().err
    assert "promptable on" in capsys.readouterr().out
    region = np.asarray(nib.load(out / f"{case_id}_region.nii.gz").dataobj)
    mask = np.asarray(nib.load(out / f"{case_id}_mask.nii.gz").dataobj)
    assert region.any() and not (mask & ~region.astype(bool)).any()  # masks stay in the prompt

    # Another experiment's method config with this checkpoint (different optimizer, model
    # size and data fields): only the EMA weights are read, the network comes from the
    # workdir's config.json.
    other = [
        "counterfactual",
        f"--config={REPO / 'configs' / 'diffscm_brats.py'}",
        f"--checkpoint={workdir}",
        f"--input={case_dir}",
        f"--out={tmp_path / 'cf_other'}",
        "--config.counterfactual.diffscm.num_steps=5",
    ]
    assert counterfactual_cli.main(other) == 0, capsys.readouterr().err
    assert "diffscm on" in capsys.readouterr().out

    # A given region file; one that does not fit the case is refused with its name.
    bad = tmp_path / "bad_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4)), bad)
    assert counterfactual_cli.main([*argv, f"--mask={bad}"]) == 2
    assert "bad_mask.nii.gz has shape (3, 3, 3)" in capsys.readouterr().err

    # python -m jaxcf.evaluate on the validation split, 8 slices.
    eval_out = tmp_path / "eval"
    eval_argv = [
        "evaluate",
        CONFIG,
        f"--checkpoint={workdir}",
        "--split=val",
        f"--out={eval_out}",
        "--config.eval.max_items=8",
        "--config.eval.methods=diffscm",
        "--config.counterfactual.diffscm.num_steps=5",
    ]
    # An --out that is a file is refused before any compute (loading the model included).
    taken = tmp_path / "taken"
    taken.write_text("")
    started = time.perf_counter()
    assert evaluate.main([*eval_argv[:-4], f"--out={taken}"]) == 2
    assert time.perf_counter() - started < 5
    assert f"--out: {taken} exists and is not a directory" in capsys.readouterr().err
    assert evaluate.main(eval_argv) == 0, capsys.readouterr().err
    table = (eval_out / "metrics.md").read_text()
    assert "| Diff-SCM |" in table and "Promptable" not in table
    first = json.loads((eval_out / "metrics.json").read_text())
    assert first["split"] == "val"
    # The same model, config and seed: the same table, to the last bit (issue 11, sec. 6).
    again = tmp_path / "eval_again"
    assert evaluate.main([*eval_argv[:-4], f"--out={again}", *eval_argv[-3:]]) == 0

    def scores(record: dict) -> dict:  # everything but the wall time
        return {m: {k: v for k, v in r.items() if k != "seconds"} for m, r in record.items()}

    second = json.loads((again / "metrics.json").read_text())["results"]
    assert scores(second) == scores(first["results"])
    assert (again / "per_slice.csv").read_text() == (eval_out / "per_slice.csv").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--checkpoint is required"),
        (["--checkpoint=/nonexistent", "--input=/x", "--out=/tmp/o"], "no such case folder"),
        (
            ["--checkpoint=/nonexistent", "--input=/x", "--out=/tmp/o", "--method=magic"],
            "unknown counterfactual method 'magic'; known: diffscm, promptable, prompt_swap",
        ),
        (
            ["--checkpoint=/nonexistent", "--input=/x", f"--out={__file__}"],
            "exists and is not a directory",
        ),
        (["--config.counterfactual.nonsense=1"], "nonsense"),
    ],
)
def test_counterfactual_cli_bad_input_exits_2(extra, message, capsys):
    assert counterfactual_cli.main(["counterfactual", CONFIG, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_counterfactual_cli_refuses_a_folder_that_is_not_a_case(tmp_path, capsys):
    argv = ["counterfactual", CONFIG, f"--checkpoint={tmp_path}", f"--input={tmp_path}"]
    assert counterfactual_cli.main([*argv, f"--out={tmp_path / 'o'}"]) == 2
    assert "is not a BraTS case folder" in capsys.readouterr().err


def test_counterfactual_cli_refuses_a_3d_nifti(tmp_path, capsys):
    path = tmp_path / "one_modality.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    argv = ["counterfactual", CONFIG, f"--checkpoint={tmp_path}", f"--input={path}"]
    assert counterfactual_cli.main([*argv, f"--out={tmp_path / 'o'}"]) == 2
    assert "expected a 4-D volume (X, Y, Z, 4)" in capsys.readouterr().err


def test_evaluate_cli_without_a_workdir_exits_2(tmp_path, capsys):
    assert evaluate.main(["evaluate", CONFIG, f"--checkpoint={tmp_path}"]) == 2
    assert "no config.json" in capsys.readouterr().err
