"""The one exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """A mistake in what the user asked for (a path, a flag, a file), not a bug in imgcls."""
