"""python -m jaxcf.evaluate --config=configs/X.py --checkpoint=WORKDIR [--split=test]
    [--out=DIR] [--config.eval.*=...] [--config.counterfactual.<method>.*=...]

Runs the registered counterfactual methods of eval.methods (and the FLAIR thresholding
baseline) over a split of the model's data and writes metrics.json and metrics.md (a table
shaped like the papers' Table 1), per_slice / per_case scores (JSON and CSV) and example
panels to --out (default WORKDIR/eval/<split>). The network and the data are the training
run's (its config.json: data.root, or the phantom set it generated); --config gives the
method and eval settings.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys

from absl import flags

from jaxcf.cli import call, start
from jaxcf.errors import InputError

PROG = "jaxcf.evaluate"
SPLITS = ("train", "val", "test")


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir of the model.", flag_values=values)
    flags.DEFINE_string(
        "split", None, "train | val | test (default eval.split).", flag_values=values
    )
    flags.DEFINE_string(
        "out", None, "Output directory (default WORKDIR/eval/SPLIT).", flag_values=values
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
    print(
        f"wrote {summary['out']}/metrics.json, metrics.md, per_case.csv, per_slice.csv "
        "(and .json) and example panels"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
