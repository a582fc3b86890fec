"""Errors the user can fix: shown as one line that names the problem, never as a traceback."""


class UserError(Exception):
    """Bad input or an environment problem the user can act on; the message is the whole story."""


class Cancelled(Exception):
    """A long job stopped because its cancel event was set."""
