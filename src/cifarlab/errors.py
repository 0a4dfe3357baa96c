"""User-facing errors: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad usage or bad input: a missing file, a corrupt archive, an unknown config key.

    The message is one line that names the file or key; the CLI prints it without a traceback.
    """
