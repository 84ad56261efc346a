"""Errors a user can act on.

A :class:`UserError` carries one line that names the file or value at fault and
what was expected; the command line prints it without a traceback and exits
non-zero. Anything else escaping is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a file, a flag, a patch or a stream."""
