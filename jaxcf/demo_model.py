"""Train the demo model from scratch and ship it (`make demo-model`), or export one.

    python -m jaxcf.demo_model [--steps N] [--workdir runs/demo-model] [--out DIR]
    python -m jaxcf.demo_model --export-only --workdir WORKDIR [--out DIR] [--train-seconds S]

Trains configs/quickstart.py (its seeds; --steps overrides train.num_steps) in a workdir
that holds no checkpoint, then writes the EMA weights of the last step as
DIR/model.safetensors + DIR/manifest.json (default DIR: jaxcf/assets/quickstart, which
`make demo` evaluates). --export-only exports an already trained workdir instead.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time


def train_fresh(workdir: pathlib.Path, steps: int | None, toy: bool) -> dict | None:
    """Train the quickstart config from step 0 in workdir; its wall time as
    {"seconds", "source", ...}, or None when a signal stopped training early."""
    import jax

    from jaxcf.checkpoint import Checkpoints
    from jaxcf.demo_weights import quickstart_config
    from jaxcf.errors import InputError
    from jaxcf.training.loop import train_and_evaluate

    checkpoints = Checkpoints(workdir)
    try:
        latest = checkpoints.latest_step
    finally:
        checkpoints.close()
    if latest is not None:
        raise InputError(
            f"--workdir {workdir}: holds a checkpoint (step {latest}); the demo model is trained "
            f"from scratch: remove it, or export it with --export-only"
        )
    config = quickstart_config(steps, toy)
    started = time.perf_counter()
    summary = train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - started
    if summary["interrupted"]:
        return None
    device = jax.devices()[0]
    if device.platform == "cpu":
        machine = f"CPU only, {os.cpu_count()} cores"
    else:
        machine = f"{jax.device_count()} x {device.device_kind}, {os.cpu_count()} CPU cores"
    return {
        "seconds": seconds,
        "source": "measured by python -m jaxcf.demo_model (phantoms, compiling, training)",
        "loop_seconds": summary["seconds"],
        "machine": machine,
    }


def main(argv: list[str] | None = None) -> int:
    from jaxcf.demo_weights import SHIPPED

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m jaxcf.demo_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/demo-model"))
    parser.add_argument("--out", type=pathlib.Path, default=SHIPPED, help="shipped model folder")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    parser.add_argument("--toy", action="store_true", help="the config's toy size (tests)")
    parser.add_argument("--export-only", action="store_true", help="export --workdir, no training")
    parser.add_argument("--step", type=int, default=None, help="--export-only: checkpoint step")
    parser.add_argument(
        "--train-seconds", type=float, default=None, help="--export-only: wall time"
    )
    parser.add_argument("--command", default=None, help="recorded as the command (default: this)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.export_only and (args.steps is not None or args.toy):
        parser.error("--steps / --toy train: they do not go with --export-only")
    if not args.export_only and (args.step is not None or args.train_seconds is not None):
        parser.error("--step / --train-seconds describe an existing run: use --export-only")
    command = args.command or shlex.join(["python", "-m", "jaxcf.demo_model", *argv])

    from absl import flags

    from jaxcf.cli import USER_ERRORS, fail, one_line
    from jaxcf.demo_weights import describe, export_model
    from jaxcf.runtime import enable_compilation_cache

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    enable_compilation_cache()
    try:
        if args.export_only:
            train_time = None
            if args.train_seconds is not None:
                train_time = {"seconds": args.train_seconds, "source": "--train-seconds"}
        else:
            train_time = train_fresh(args.workdir, args.steps, args.toy)
            if train_time is None:
                return fail("jaxcf.demo_model", "training interrupted; nothing exported", 130)
        manifest = export_model(
            args.workdir, args.out, command=command, train_time=train_time, step=args.step
        )
    except USER_ERRORS as err:
        return fail("jaxcf.demo_model", one_line(err), 2)
    print(
        f"wrote {args.out}/model.safetensors ({manifest['bytes'] / 1e6:.2f} MB, "
        f"{manifest['num_params']:,} float32 parameters) and manifest.json: {describe(manifest)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
