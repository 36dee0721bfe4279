"""Errors a user can fix: printed as one line and answered with exit code 2, no traceback."""

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem with the user's input (config, data, paths, checkpoints), not a bug."""


def allowed(key: str, value, what: str) -> UserError:
    """The standard message: the key, the value given and what is allowed."""
    return UserError(f"{key}={value!r} is not allowed: {what}")
