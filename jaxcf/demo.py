"""The quickstart (`make demo`): phantom BraTS -> model -> counterfactual segmentation.

    python -m jaxcf.demo [--workdir runs/quickstart] [--train] [--steps N] [--model DIR] [--toy]

  1. writes a phantom BraTS 2021 dataset (real on-disk layout) and takes the shipped demo
     model (jaxcf/assets/quickstart, written by `make demo-model`: configs/quickstart.py
     trained on these phantoms; --model DIR or $JAXCF_DEMO_MODEL for another) without
     training; with --train (or --steps, or no shipped model; --toy unless a model is
     named) it trains configs/quickstart.py on them instead: a small label-conditioned UNet
     with condition dropout, minutes on a CPU (resumes if the workdir already holds a
     checkpoint of its own);
  2. segments the held-out test slices with a tumour by their healthy counterfactuals:
     Diff-SCM (paper 001) and the promptable counterfactual sampler (paper 000) with the
     ground truth's box as prompt (an oracle) and with a box drawn from a first Diff-SCM
     pass's heatmap, beside the FLAIR thresholding baseline Diff-SCM compares against, and
     prints Dice / IoU / AUPRC / ideal Dice (python -m jaxcf.evaluate does the same);
  3. runs `python -m jaxcf.counterfactual` on one held-out case: NIfTI with the case's
     affine and a PNG panel.
Everything lands under --workdir: checkpoints/, eval/test/ (metrics.md, metrics.json,
panels), case/ (NIfTI, panel), demo.json ("train.model": "shipped" or "trained").
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from jaxcf.errors import InputError


def held_out_case(data_config) -> str:
    """The first test-split case with a tumour (from meta.json of the prepared shards)."""
    from jaxcf.data.pipeline import info

    meta = info(data_config)
    tests = [c for c in meta["cases"] if c["split"] == "test" and c.get("label", 0)]
    if not tests:
        raise InputError("the test split has no case with a tumour")
    return tests[0]["case_id"]


def train_model(workdir: pathlib.Path, config) -> dict:
    """Train (or resume) config in workdir; the summary, with this run's seconds. A shipped
    model installed there earlier is removed first: it is a copy, the package keeps it."""
    from jaxcf import demo_weights
    from jaxcf.training.loop import train_and_evaluate

    if demo_weights.remove_installed(workdir):
        print(f"removed the shipped model installed in {workdir}; training from scratch")
    started = time.perf_counter()
    summary = train_and_evaluate(config, workdir)
    return {"model": "trained", **summary, "seconds_this_run": time.perf_counter() - started}


def use_shipped(workdir: pathlib.Path, model_dir: pathlib.Path) -> dict:
    """Install the shipped model into workdir and write its data (the phantoms of the
    manifest's data config, i.e. those it was trained and is evaluated on); no training."""
    import ml_collections

    from jaxcf import demo_weights
    from jaxcf.training.data import ensure_data

    started = time.perf_counter()
    manifest = demo_weights.install_model(model_dir, workdir)
    print(f"using the shipped demo model ({demo_weights.describe(manifest)}) from {model_dir}")
    ensure_data(ml_collections.ConfigDict(manifest["config"]["data"]), workdir)
    keep = ("step", "sha256", "train_time", "command", "reproduce", "git_at_export", "created")
    return {
        "model": "shipped",
        "shipped_from": str(model_dir),
        **{k: manifest.get(k) for k in keep},
        "seconds_this_run": time.perf_counter() - started,
    }


def run(
    workdir: pathlib.Path,
    steps: int | None,
    toy: bool,
    *,
    train: bool = True,
    model_dir: pathlib.Path | None = None,
) -> dict:
    """The demo in workdir: train (train=True, or no model_dir) or install the shipped
    model in model_dir, then evaluate the test split and segment one held-out case."""
    from jaxcf.counterfactual import cases
    from jaxcf.demo_weights import quickstart_config
    from jaxcf.experiments import segmentation
    from jaxcf.inference import load_trained
    from jaxcf.training.data import ensure_data

    config = quickstart_config(steps, toy)
    if train or model_dir is None:
        model_summary = train_model(workdir, config)
    else:
        model_summary = use_shipped(workdir, model_dir)

    # The network and data from the workdir's config.json; the evaluation settings from
    # configs/quickstart.py (the same when the model was just trained from it).
    trained = load_trained(workdir, config)
    started = time.perf_counter()
    evaluation = segmentation.evaluate(trained, workdir, "test", workdir / "eval" / "test")
    eval_seconds = time.perf_counter() - started

    data_config = ensure_data(trained.config.data, workdir)
    case_id = held_out_case(data_config)
    case = cases.load_case(pathlib.Path(data_config.root) / case_id)
    case_summary = segmentation.segment_case(
        segmentation.method_runner(trained, str(trained.config.counterfactual.method)),
        case,
        workdir / "case",
        image_size=int(trained.config.data.image_size),
        vote=str(trained.config.counterfactual.vote),
    )
    summary = {
        "train": model_summary,
        "evaluation": {"seconds": eval_seconds, **evaluation},
        "case": case_summary,
    }
    summary["evaluation"].pop("table")
    text = json.dumps(summary, indent=2, default=float)
    tmp = workdir / "demo.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, workdir / "demo.json")
    return {"table": evaluation["table"], **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcf.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/quickstart"))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    parser.add_argument("--toy", action="store_true", help="tiny sizes (seconds; for tests)")
    parser.add_argument(
        "--train",
        action="store_true",
        help="train (or resume) instead of using the shipped model (make demo TRAIN=1)",
    )
    parser.add_argument(
        "--model",
        type=pathlib.Path,
        default=None,
        help="folder of a shipped model (model.safetensors + manifest.json); default: "
        "$JAXCF_DEMO_MODEL, else jaxcf/assets/quickstart (not with --toy)",
    )
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    train = args.train or args.steps is not None  # --steps: a training length
    if train and args.model is not None:
        parser.error("--model names a trained model: it does not go with --train / --steps")

    from absl import flags

    from jaxcf.cli import USER_ERRORS, fail, one_line
    from jaxcf.demo_weights import SHIPPED, shipped_model_dir
    from jaxcf.runtime import enable_compilation_cache

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    enable_compilation_cache()
    started = time.perf_counter()
    try:
        model_dir = None if train else shipped_model_dir(args.model, toy=args.toy)
        if not train and model_dir is None and not args.toy:
            print(f"no shipped demo model in {SHIPPED} (`make demo-model` writes it): training")
        summary = run(args.workdir, args.steps, args.toy, train=train, model_dir=model_dir)
    except USER_ERRORS as err:
        return fail("jaxcf.demo", one_line(err), 2)
    total = time.perf_counter() - started
    print()
    print(summary["table"])
    case = summary["case"]
    shipped = summary["train"]["model"] == "shipped"
    print(
        f"{'installing the shipped model' if shipped else 'training'} "
        f"{summary['train']['seconds_this_run']:.0f} s, evaluation "
        f"{summary['evaluation']['seconds']:.0f} s, total {total:.0f} s"
    )
    print(
        f"wrote {args.workdir}/eval/test/metrics.md + panels; NIfTI and panel of "
        f"{case['case']} in {args.workdir}/case/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
