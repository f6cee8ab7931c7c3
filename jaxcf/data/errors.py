"""The error type for bad user data (missing / unreadable / inconsistent files)."""

from jaxcf.errors import InputError


class DataError(InputError):
    """Bad input data. The message names the file, column or field; command-line entry
    points print it as one line on stderr and exit with code 2."""
