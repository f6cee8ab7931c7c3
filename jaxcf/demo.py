"""The quickstart (`make demo`): phantom BraTS -> train -> counterfactual segmentation.

    python -m jaxcf.demo [--workdir runs/quickstart] [--steps N] [--toy]

  1. writes a phantom BraTS 2021 dataset (real on-disk layout) and trains
     configs/quickstart.py on it: a small label-conditioned UNet with condition dropout,
     minutes on a CPU (resumes if the workdir already holds a checkpoint);
  2. segments the held-out test slices with a tumour by their healthy counterfactuals:
     Diff-SCM (paper 001) and the promptable counterfactual sampler (paper 000) with the
     ground truth's box as prompt (an oracle) and with a box drawn from a first Diff-SCM
     pass's heatmap, beside the FLAIR thresholding baseline Diff-SCM compares against, and
     prints Dice / IoU / AUPRC / ideal Dice (python -m jaxcf.evaluate does the same);
  3. runs `python -m jaxcf.counterfactual` on one held-out case: NIfTI with the case's
     affine and a PNG panel.
Everything lands under --workdir: checkpoints/, eval/test/ (metrics.md, metrics.json,
panels), case/ (NIfTI, panel), demo.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from jaxcf.errors import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.py"


def quickstart_config(steps: int | None, toy: bool):
    """configs/quickstart.py, optionally shortened (--steps) or at its test size (--toy:
    the config's own toy variant, get_config("toy"))."""
    import importlib.util

    if not QUICKSTART.is_file():
        raise FileNotFoundError(f"{QUICKSTART} is missing (run the demo from a jaxcf checkout)")
    spec = importlib.util.spec_from_file_location("quickstart_config", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("toy" if toy else None)
    if steps is not None:
        config.train.num_steps = steps
        config.train.checkpoint_every = min(config.train.checkpoint_every, steps)
    return config


def held_out_case(data_config) -> str:
    """The first test-split case with a tumour (from meta.json of the prepared shards)."""
    from jaxcf.data.pipeline import info

    meta = info(data_config)
    tests = [c for c in meta["cases"] if c["split"] == "test" and c.get("label", 0)]
    if not tests:
        raise InputError("the test split has no case with a tumour")
    return tests[0]["case_id"]


def run(workdir: pathlib.Path, steps: int | None, toy: bool) -> dict:
    from jaxcf.counterfactual import cases
    from jaxcf.experiments import segmentation
    from jaxcf.inference import load_trained
    from jaxcf.training.data import ensure_data
    from jaxcf.training.loop import train_and_evaluate

    config = quickstart_config(steps, toy)
    started = time.perf_counter()
    trained_summary = train_and_evaluate(config, workdir)
    train_seconds = time.perf_counter() - started

    trained = load_trained(workdir)
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
        "train": {**trained_summary, "seconds_this_run": train_seconds},
        "evaluation": {"seconds": eval_seconds, **evaluation},
        "case": case_summary,
    }
    summary["evaluation"].pop("table")
    (workdir / "demo.json").write_text(json.dumps(summary, indent=2, default=float))
    return {"table": evaluation["table"], **summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcf.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/quickstart"))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    parser.add_argument("--toy", action="store_true", help="tiny sizes (seconds; for tests)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")

    from absl import flags

    from jaxcf.cli import USER_ERRORS, fail, one_line
    from jaxcf.runtime import enable_compilation_cache

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    enable_compilation_cache()
    started = time.perf_counter()
    try:
        summary = run(args.workdir, args.steps, args.toy)
    except USER_ERRORS as err:
        return fail("jaxcf.demo", one_line(err), 2)
    total = time.perf_counter() - started
    print()
    print(summary["table"])
    case = summary["case"]
    print(
        f"training {summary['train']['seconds_this_run']:.0f} s, evaluation "
        f"{summary['evaluation']['seconds']:.0f} s, total {total:.0f} s"
    )
    print(
        f"wrote {args.workdir}/eval/test/metrics.md + panels; NIfTI and panel of "
        f"{case['case']} in {args.workdir}/case/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
