"""The one exception type the CLI turns into a one-line error (exit code 2) instead of a traceback."""


class NFieldsError(Exception):
    """A user-facing problem: bad input, missing data, an impossible setting.

    The message must be one line that names the file or option and the problem, e.g.
    ``nfields: error: ../data/dtu/mask/003.png: mask is 800x600 but image is 1600x1200``.
    """
