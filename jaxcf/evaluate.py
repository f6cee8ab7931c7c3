"""python -m jaxcf.evaluate --config=configs/X.py --checkpoint=WORKDIR [--split=test]
    [--out=DIR] [--method=segmentation|prompt_swap|attention|refine] [--config.eval.*=...]
    [--config.counterfactual.<method>.*=...]

--method=segmentation (default; papers 001 / 000): runs the registered counterfactual
methods of eval.methods (and the FLAIR thresholding baseline) over a split of the model's
slices and writes metrics.json and metrics.md (a table shaped like the papers' Table 1),
per_slice / per_case scores (JSON and CSV) and example panels.

--method=attention (paper 003, prompt-conditioned CXR models): Table 2's ablation of the
attention-regulated edit (plain prompt edit, full, without Eq. 5 / 6 / 9) on the split's
normal radiographs asked for an opacity in one lung zone: SSIM, the share of the change
outside the ROI and outside the lungs, ROI hit rate and gain, and with --classifier=WORKDIR
paper 003's Conf (jaxcf.experiments.attention_eval).

--method=refine (paper 002, a refiner workdir trained with configs/refiner_peds.py, or a
MedSegDiff one trained with configs/medsegdiff_peds.py, run slice by slice):
Table 3 (Dice TC / WT / ET / avg, HD95 in mm, sensitivity, precision) of the coarse
segmenter alone and of its prediction refined, over the split's whole volumes, with
per-case scores, comparison panels and structured reports (jaxcf.experiments.refine_eval).

--method=prompt_swap (paper 004, text-conditioned 3-D models): Table 1 (FID on 3-D
features, diversity MS-SSIM, subject MS-SSIM, PSNR, text alignment) and Table 2 (the
eval.guidance_scales sweep) from eval.synthetic_subjects synthetic subjects and from the
split's real subjects inverted under their own prompt, lesion voxels where the data has
lesion masks, and PNG panels. [--classifier=WORKDIR] a classifier run
(configs/classifier_ms.py) for text alignment; [--features=FILE] MedicalNet / Med3D
weights for FID (without them the Frechet distance of untrained Med3D features is
reported under that name, never as FID; --features=none skips it).

Everything goes to --out (default WORKDIR/eval/<split>, or WORKDIR/eval/prompt_swap_<split>).
The network and the data are the training run's (its config.json: data.root, or the
phantom set it generated); --config gives the method and eval settings.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys

from absl import flags

from jaxcf.cli import call, start
from jaxcf.errors import InputError

PROG = "jaxcf.evaluate"
SPLITS = ("train", "val", "test")
METHODS = ("segmentation", "prompt_swap", "attention", "refine")


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir of the model.", flag_values=values)
    flags.DEFINE_string(
        "split", None, "train | val | test (default eval.split).", flag_values=values
    )
    flags.DEFINE_string(
        "out", None, "Output directory (default WORKDIR/eval/SPLIT).", flag_values=values
    )
    flags.DEFINE_string(
        "method", "segmentation", f"What to evaluate: {' | '.join(METHODS)}.", flag_values=values
    )
    flags.DEFINE_string(
        "classifier",
        None,
        "prompt_swap: workdir of a trained classifier (text alignment); attention: of a "
        "CXR opacity classifier (configs/classifier_cxr.py; the Conf column).",
        flag_values=values,
    )
    flags.DEFINE_string(
        "features",
        None,
        "prompt_swap: Med3D / MedicalNet weights for FID; none = no FID column.",
        flag_values=values,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    started = start(PROG, argv, _define, required=("checkpoint",), usage=__doc__)
    if isinstance(started, int):
        return started
    config, values = started

    def run() -> dict:
        from jaxcf.counterfactual.cases import output_dir
        from jaxcf.experiments import segmentation
        from jaxcf.inference import load_trained, saved_config, workdir_of

        split = values.split or config.eval.split
        if split not in SPLITS:
            raise InputError(f"--split must be one of {SPLITS}, got {split!r}")
        if values.method not in METHODS:
            raise InputError(f"--method must be one of {METHODS}, got {values.method!r}")
        if values.method == "prompt_swap":
            return _prompt_swap(config, values, split)
        if values.method == "attention":
            return _attention(config, values, split)
        if values.method == "refine":
            return _refine(config, values, split)
        segmentation.eval_methods(config)  # unknown names fail before any work
        if config.eval.slices not in segmentation.SLICES:
            raise InputError(
                f"eval.slices must be one of {segmentation.SLICES}, got {config.eval.slices!r}"
            )
        workdir = workdir_of(values.checkpoint)
        saved_config(workdir)  # a jaxcf workdir, or a clear error before anything is created
        out = output_dir(values.out or workdir / "eval" / split, "--out")
        trained = load_trained(workdir, config)
        return {**segmentation.evaluate(trained, workdir, split, out), "out": out}

    code, summary = call(PROG, run)
    if code:
        return code
    print(summary["table"])
    if values.method in ("prompt_swap", "attention"):
        print(f"wrote {summary['out']}/metrics.json, metrics.md and PNG panels")
        return 0
    if values.method == "refine":
        print(
            f"wrote {summary['out']}/metrics.json, metrics.md, per_case.json, panels and reports/"
        )
        return 0
    print(
        f"wrote {summary['out']}/metrics.json, metrics.md, per_case.csv, per_slice.csv "
        "(and .json) and example panels"
    )
    return 0


def _prompt_swap(config, values, split: str) -> dict:
    """evaluate --method=prompt_swap (jaxcf.experiments.prompt_swap_eval)."""
    from jaxcf.counterfactual.cases import output_dir
    from jaxcf.experiments import prompt_swap_eval
    from jaxcf.inference import load_trained, saved_config, workdir_of

    workdir = workdir_of(values.checkpoint)
    saved_config(workdir)
    scorers = prompt_swap_eval.load_scorers(values.classifier, values.features)
    out = output_dir(values.out or workdir / "eval" / f"prompt_swap_{split}", "--out")
    trained = load_trained(workdir, config)
    return {**prompt_swap_eval.evaluate(trained, workdir, split, out, scorers=scorers), "out": out}


def _attention(config, values, split: str) -> dict:
    """evaluate --method=attention (jaxcf.experiments.attention_eval)."""
    from jaxcf.counterfactual.cases import output_dir
    from jaxcf.experiments import attention_eval
    from jaxcf.inference import load_trained, saved_config, workdir_of

    workdir = workdir_of(values.checkpoint)
    saved_config(workdir)
    out = output_dir(values.out or workdir / "eval" / f"attention_{split}", "--out")
    classifier = None
    if values.classifier:
        from jaxcf.evaluation.alignment import load_classifier

        classifier = load_classifier(values.classifier).predict
    trained = load_trained(workdir, config)
    summary = attention_eval.evaluate(trained, workdir, split, out, classifier=classifier)
    return {**summary, "out": out}


def _refine(config, values, split: str) -> dict:
    """evaluate --method=refine (jaxcf.experiments.refine_eval)."""
    from jaxcf.counterfactual.cases import output_dir
    from jaxcf.experiments import refine_eval
    from jaxcf.inference import load_refiner, saved_config, workdir_of

    workdir = workdir_of(values.checkpoint)
    saved_config(workdir)
    out = output_dir(values.out or workdir / "eval" / f"refine_{split}", "--out")
    refiner = load_refiner(workdir, config)
    return {**refine_eval.evaluate(refiner, split, out), "out": out}


if __name__ == "__main__":
    sys.exit(main())
