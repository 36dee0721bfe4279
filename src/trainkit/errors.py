"""Errors a user can fix: printed as one line and answered with exit code 2, no traceback."""

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem with the user's input (config, data, paths, checkpoints), not a bug."""


def allowed(key: str, value, what: str) -> UserError:
    """The standard message: the key, the value given and what is allowed."""
    return UserError(f"{key}={value!r} is not allowed: {what}")


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError behind `error`: Hydra's instantiate wraps what a constructor raises."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
