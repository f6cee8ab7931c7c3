"""Write a phantom dataset in a real dataset's on-disk layout.

    python -m jaxcf.data.make_phantom --kind brats2021 --out /tmp/brats --cases 16 --size 64

Bad arguments print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from jaxcf.cli import ArgumentParser, debugging, fail, one_line, parse_args
from jaxcf.data.phantoms import KINDS, auto_workers, generate
from jaxcf.data.phantoms.anatomy import ANATOMIES
from jaxcf.errors import InputError

PROG = "jaxcf.make_phantom"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m jaxcf.data.make_phantom", description=__doc__)
    parser.add_argument("--kind", required=True, choices=KINDS, help="dataset layout")
    parser.add_argument("--out", required=True, help="output directory (must be empty)")
    parser.add_argument("--cases", type=int, default=16, help="number of cases (default 16)")
    parser.add_argument(
        "--size", type=int, default=64, help="in-plane size S: volumes S x S x round(S*155/240)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--tumour-free-fraction",
        type=float,
        default=0.25,
        help="share of tumour-free BraTS cases / normal radiographs (default 0.25)",
    )
    parser.add_argument(
        "--anatomy",
        choices=ANATOMIES,
        default=None,
        help="brain anatomy: mni152 (default for brain kinds: real MNI152 anatomy) or "
        "procedural (fast geometric heads; the only choice for cxr)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel processes (default 0: one per CPU, at most 8, for jobs over ~3 s "
        "on >= 4 CPUs); the output does not depend on it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 with one line `jaxcf.make_phantom: ...` on
    stderr for bad arguments)."""
    args = parse_args(PROG, _parser(), argv)
    if isinstance(args, int):
        return args
    try:
        summary = generate(
            args.kind,
            args.out,
            args.cases,
            args.size,
            args.seed,
            tumour_free_fraction=args.tumour_free_fraction,
            anatomy=args.anatomy or ("procedural" if args.kind == "cxr" else "mni152"),
            overwrite=args.overwrite,
            workers=args.workers or auto_workers(args.kind, args.cases, args.size),
            progress=not args.no_progress,
        )
    except (InputError, OSError) as error:
        if debugging():
            raise
        return fail(PROG, one_line(error), 2)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
