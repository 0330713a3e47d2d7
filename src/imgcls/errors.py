"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """A mistake in what the user asked for (a path, a flag, a file), not a bug in imgcls."""


def first_line(error: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name when it has none (a library's
    error wrapped into a UserError, a failed reload's answer)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
