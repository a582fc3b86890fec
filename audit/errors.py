"""Errors the user can fix: shown as one line that names the problem, never as a traceback."""


class UserError(Exception):
    """Bad input or an environment problem the user can act on; the message is the whole story."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message as one line (its first, cut at `limit` characters), or its
    type's name when it has none: for messages quoting what a library or a parser said."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


class Cancelled(Exception):
    """A long job stopped because its cancel event was set."""
