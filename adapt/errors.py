"""User-facing errors: a leaf module any room may import.

A ``UserError`` is a person's mistake (a bad file, a bad config value); the CLI
prints its message on one line and exits 2. Anything else is a bug: exit 1.
"""


class UserError(Exception):
    """A mistake the user can fix; the message says what, where and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is wrong."""


class AudioError(UserError):
    """An audio file cannot be read or written as asked."""
