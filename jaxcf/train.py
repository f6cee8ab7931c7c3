"""python -m jaxcf.train --config=configs/NAME.py --workdir=DIR [--config.a.b=value ...]

Trains the experiment a config file describes (see configs/). With data.root unset a
phantom dataset of the right kind is generated in the workdir first, so every config runs
out of the box. A second invocation with the same workdir resumes from its latest
checkpoint. Exit codes: 0 done; 2 bad input (config field, data file: one line on
stderr); 1 training diverged (the last good checkpoint is kept); 130 interrupted (a
checkpoint was saved; run again to resume). JAXCF_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import sys

from absl import flags

from jaxcf.cli import USER_ERRORS, debugging, fail, one_line, start

PROG = "jaxcf.train"


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints, logs and samples.", flag_values=values
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    started = start(PROG, argv, _define, required=("workdir",), usage=__doc__)
    if isinstance(started, int):
        return started
    config, values = started
    debug = debugging()

    from jaxcf.training.loop import TrainingDiverged, train_and_evaluate

    try:
        summary = train_and_evaluate(config, values.workdir)
    except USER_ERRORS as err:
        if debug:
            raise
        return fail(PROG, one_line(err), 2)
    except TrainingDiverged as err:
        return fail(PROG, str(err), 1)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted", 130)
    if summary["interrupted"]:
        print(
            f"jaxcf.train: {summary.get('signal')} at step {summary['step']}; checkpoint "
            f"saved at step {summary['checkpoint_step']}; run again to resume",
            file=sys.stderr,
        )
        return 130
    if summary["loss"] is None:  # resumed at train.num_steps: nothing left to do
        print(f"already trained to step {summary['step']}; checkpoint in {summary['workdir']}")
        return 0
    print(
        f"trained to step {summary['step']} (loss {summary['loss']:.4f}) in "
        f"{summary['seconds']:.0f} s; checkpoint and logs in {summary['workdir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
