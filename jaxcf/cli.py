"""What every `python -m jaxcf.<tool> --config=configs/NAME.py ...` entry point shares:
ml_collections config flags with `--config.a.b=value` overrides, one-line errors and
exit codes (0 done, 2 bad input, 1 failed run, 130 interrupted)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from absl import flags
from ml_collections import config_flags

PARSE_ERRORS = (
    flags.Error,
    AttributeError,
    KeyError,
    TypeError,
    ValueError,
    OSError,
    SyntaxError,
)


class UsageError(Exception):
    """A bad command line: its message is printed as one line, exit code 2."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (ml_collections puts hints on later lines)."""
    text = str(err)
    if isinstance(err, KeyError | AttributeError):  # an unknown --config.<field>
        text = "unknown config field " + text.strip("'\"").replace("\\'", "'").replace("\\n", " ")
    return (
        " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__
    )


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse(
    argv: list[str], define: Callable[[flags.FlagValues], None] | None = None
) -> tuple[Any, flags.FlagValues]:
    """(config, flag values) from argv: --config=FILE with --config.* overrides, plus the
    flags `define(values)` declares. Fresh flag definitions per call, so a main() may run
    more than once in one process. Raises UsageError with a one-line message."""
    path = _config_path(argv)
    if path is None:
        raise UsageError("--config=configs/NAME.py is required")
    if not os.path.isfile(path):
        raise UsageError(f"--config: no config file at {path}")
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file (configs/*.py).",
        flag_values=values,
        lock_config=True,
        sys_argv=argv,  # ml_collections reads overrides from sys.argv unless given argv
    )
    if define is not None:
        define(values)
    try:
        values(argv)
        config = values.config  # ml_collections reports load errors on first access
    except PARSE_ERRORS as err:
        raise UsageError(one_line(err)) from err
    # grain's multiprocessing reads absl flags: parsing ours is enough.
    flags.FLAGS.mark_as_parsed()
    return config, values


def debugging() -> bool:
    """JAXCF_DEBUG=1: let exceptions through with their tracebacks."""
    return os.environ.get("JAXCF_DEBUG") == "1"


def start(
    prog: str,
    argv: list[str],
    define: Callable[[flags.FlagValues], None],
    required: tuple[str, ...] = (),
) -> tuple[Any, flags.FlagValues] | int:
    """Parse a CLI's flags ((config, values)) or report the usage error (exit code 2);
    the flags in `required` must be given. Turns on the persistent compilation cache."""
    try:
        config, values = parse(argv, define)
        for name in required:
            if not values[name].value:
                raise UsageError(f"--{name} is required")
    except UsageError as err:
        if debugging():
            raise
        return fail(prog, str(err), 2)
    from jaxcf.runtime import enable_compilation_cache

    enable_compilation_cache()
    return config, values


def call(prog: str, action: Callable[[], Any]) -> tuple[int, Any]:
    """(0, action()), or (exit code, None) after one line on stderr: 2 for bad input (a
    data, value or missing-file error), 130 for Ctrl-C."""
    from jaxcf.data.errors import DataError

    try:
        return 0, action()
    except (DataError, ValueError, FileNotFoundError) as err:
        if debugging():
            raise
        return fail(prog, one_line(err), 2), None
    except KeyboardInterrupt:
        return fail(prog, "interrupted", 130), None
