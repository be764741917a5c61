"""The one exception type that the CLI turns into a single clear error line."""


class VprkitError(Exception):
    """A user-facing error: bad input, mismatched files, impossible options.

    The message must say what is wrong and where (a file, a row, an option), in one line.
    """
