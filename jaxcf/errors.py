"""The error type for input a user can cause, and so can fix.

`InputError` (a ValueError) is raised where jaxcf checks a value it was given: a config
field, a flag, a file, an array's shape or range. Its message names the field, file or
argument. Command-line tools print it as one line and exit with code 2; any other
exception is a bug and keeps its traceback (exit code 1). `jaxcf.data.errors.DataError`
(bad data files) is an InputError.
"""


class InputError(ValueError):
    """Bad input: the message names the field, file or argument and what was wrong."""
