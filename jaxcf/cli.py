"""What every `python -m jaxcf.<tool> --config=configs/NAME.py ...` entry point shares:
ml_collections config flags with `--config.a.b=value` overrides, `--help` and
`--show_config`, one-line errors and exit codes (0 done, 2 bad input, 1 failed run, 130
interrupted)."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from absl import flags
from ml_collections import config_flags

from jaxcf.errors import InputError

PARSE_ERRORS = (
    flags.Error,
    AttributeError,
    KeyError,
    TypeError,
    ValueError,
    OSError,
    SyntaxError,
)
HELP_FLAGS = ("--help", "-h", "-help", "--helpfull", "--helpshort")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


# What a user can cause, and so fix: one line on stderr and exit code 2. A ValueError
# from anywhere else (numpy, jax, a bug of ours) is not bad input and keeps its traceback.
USER_ERRORS = (InputError, FileNotFoundError)


class UsageError(Exception):
    """A bad command line: its message is printed as one line, exit code 2."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (ml_collections puts hints on later lines)."""
    text = str(err)
    if "Traceback (most recent call last)" in text:  # a config file that failed to load
        head, trace = text.split("Traceback (most recent call last)", 1)
        lines = [line.strip() for line in trace.splitlines() if line.strip()]
        text = head.rstrip(" :\n") + ": " + (lines[-1] if lines else "")
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


def _load(argv: list[str], path: str, define: Callable[[flags.FlagValues], None] | None):
    """(config, values) from argv with fresh flag definitions; raises what parsing raises."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file (configs/*.py).",
        flag_values=values,
        lock_config=True,
        sys_argv=argv,  # ml_collections reads overrides from sys.argv unless given argv
    )
    flags.DEFINE_boolean(
        "show_config", False, "Print the resolved config and exit.", flag_values=values
    )
    if define is not None:
        define(values)
    values(argv)
    return values.config, values  # ml_collections reports load errors on first access


def _suggest(name: str, fields: list[str]) -> list[str]:
    """Fields `name` may have meant: close spellings, initials (learning_rate -> lr), and
    fields containing it or contained in it (steps -> num_steps)."""

    def initials(text: str) -> str:
        return "".join(word[0] for word in text.split("_") if word)

    found = difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
    for field in fields:
        if len(found) >= 3:
            break
        if field in found:
            continue
        if (
            ("_" in name and initials(name) == field)
            or ("_" in field and initials(field) == name)
            or (min(len(name), len(field)) >= 3 and (name in field or field in name))
        ):
            found.append(field)
    return found


def unknown_field(config: Any, dotted: str) -> str | None:
    """Why `--config.<dotted>` names no field of `config` (one line), or None if it does."""
    node, parts = config, dotted.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        parent = ".".join(parts[:i])
        if isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            kind = type(node).__name__
            return f"config field {parent} is a value ({kind}), not a group: {here} does not exist"
        fields = sorted(str(k) for k in node.keys())
        if part in fields:
            node = node[part]
            continue
        what = "config field" if parent else "config group"
        where = f"{parent}." if parent else ""
        close = _suggest(part, fields)
        if close:
            hint = " or ".join(where + f for f in close)
            return f"unknown {what} {here} (did you mean {hint}?)"
        owner = f"{parent}'s fields" if parent else "groups"
        return f"unknown {what} {here}; {owner}: {', '.join(fields)}"
    return None


def _diagnose(argv: list[str], path: str) -> str | None:
    """The first `--config.*` override of argv that names no field of the config file."""
    try:
        base, _ = _load([argv[0] if argv else "jaxcf", f"--config={path}"], path, None)
    except PARSE_ERRORS as err:  # the config file itself fails, overrides or not
        return (
            f"{path}: loading the config failed: {type(err).__name__}: {' '.join(str(err).split())}"
        )
    for arg in argv[1:]:
        match = _OVERRIDE.match(arg)
        if match:
            problem = unknown_field(base, match.group(1))
            if problem:
                return problem
    return None


def parse(
    argv: list[str], define: Callable[[flags.FlagValues], None] | None = None
) -> tuple[Any, flags.FlagValues]:
    """(config, flag values) from argv: --config=FILE with --config.* overrides, plus the
    flags `define(values)` declares and --show_config. Fresh flag definitions per call, so a
    main() may run more than once in one process. Raises UsageError with a one-line message."""
    path = _config_path(argv)
    if path is None:
        raise UsageError("--config=configs/NAME.py is required")
    if not os.path.isfile(path) and not os.path.isfile(path.split(":", 1)[0]):  # FILE:ARG
        raise UsageError(f"--config: no config file at {path}")
    try:
        config, values = _load(argv, path, define)
    except PARSE_ERRORS as err:
        problem = _diagnose(argv, path) if isinstance(err, KeyError | AttributeError) else None
        raise UsageError(problem or one_line(err)) from err
    # grain's multiprocessing reads absl flags: parsing ours is enough.
    flags.FLAGS.mark_as_parsed()
    return config, values


def help_text(
    prog: str,
    usage: str = "",
    define: Callable[[flags.FlagValues], None] | None = None,
    required: tuple[str, ...] = (),
) -> str:
    """`usage` (the CLI's docstring), its flags with their help strings, and how to see and
    override config fields."""
    values = flags.FlagValues()
    if define is not None:
        define(values)
    rows = [
        ("--config=FILE", "Experiment config file (configs/NAME.py). Required."),
        ("--config.GROUP.FIELD=VALUE", "Override one field of the config (repeatable)."),
        ("--show_config", "Print the resolved config (after overrides) and exit."),
    ]
    for name in sorted(values):
        flag = values[name]
        text = " ".join((flag.help or "").split())
        if name in required:
            text += " Required."
        elif flag.default not in (None, "", False):
            text += f" (default: {flag.default})"
        rows.append((f"--{name}" + ("" if flag.boolean else "=VALUE"), text))
    width = max(len(left) for left, _ in rows) + 2
    lines = [usage.strip(), ""] if usage.strip() else [f"python -m {prog} --config=FILE ...", ""]
    lines.append("Flags:")
    lines += [f"  {left.ljust(width)}{text}" for left, text in rows]
    lines += [
        "",
        "Config fields: --config.GROUP.FIELD=VALUE overrides any field of the config file",
        "(e.g. --config.train.num_steps=1000). Every field, with its value after overrides:",
        f"  python -m {prog} --config=configs/NAME.py --show_config",
    ]
    return "\n".join(lines)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for jaxcf's plain CLIs (no config file): the description printed as written
    (pass the module docstring) and bad arguments raised as UsageError; see parse_args."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(message)


def parse_args(
    prog: str, parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace | int:
    """parser.parse_args(argv), or an exit code: 0 after --help, 2 after one line
    `prog: message` on stderr for a bad argument."""
    try:
        return parser.parse_args(argv)
    except UsageError as err:
        if debugging():
            raise
        return fail(prog, f"{' '.join(str(err).split())} (see --help)", 2)
    except SystemExit as exit_info:  # argparse printed --help (or --version)
        return exit_info.code if isinstance(exit_info.code, int) else 0


def debugging() -> bool:
    """JAXCF_DEBUG=1: let exceptions through with their tracebacks."""
    return os.environ.get("JAXCF_DEBUG") == "1"


def start(
    prog: str,
    argv: list[str],
    define: Callable[[flags.FlagValues], None],
    required: tuple[str, ...] = (),
    usage: str = "",
) -> tuple[Any, flags.FlagValues] | int:
    """Parse a CLI's flags ((config, values)), or an exit code: 0 after --help (`usage`, the
    CLI's docstring, then its flags) or --show_config (the resolved config), 2 after a
    one-line usage error; the flags in `required` must be given. Turns on the persistent
    compilation cache."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(prog, usage, define, required))
        return 0
    try:
        config, values = parse(argv, define)
        if values.show_config:
            print(str(config).rstrip())
            return 0
        for name in required:
            if not values[name].value:
                raise UsageError(f"--{name} is required")
    except UsageError as err:
        if debugging():
            raise
        return fail(prog, str(err), 2)
    except USER_ERRORS as err:  # e.g. a derived config field that cannot be resolved
        if debugging():
            raise
        return fail(prog, one_line(err), 2)
    from jaxcf.runtime import enable_compilation_cache

    enable_compilation_cache()
    return config, values


def call(prog: str, action: Callable[[], Any]) -> tuple[int, Any]:
    """(0, action()), or (exit code, None) after one line on stderr: 2 for bad input (an
    InputError, DataError included, or a missing file), 130 for Ctrl-C. Anything else is a
    bug: it propagates with its traceback."""
    try:
        return 0, action()
    except USER_ERRORS as err:
        if debugging():
            raise
        return fail(prog, one_line(err), 2), None
    except KeyboardInterrupt:
        return fail(prog, "interrupted", 130), None
