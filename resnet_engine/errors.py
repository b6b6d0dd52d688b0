"""Errors that come from user input and are shown as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: a bad config key, a missing file, a malformed annotation.

    The message names the file or key and the fix. Command lines print it and exit with code 2.
    Other packages mark their own input errors with a ``user_error = True`` class attribute.
    """

    user_error = True
    exit_code = 2


def is_user_error(error: BaseException) -> bool:
    return bool(getattr(error, "user_error", False))
