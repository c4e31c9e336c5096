"""User-facing errors, and reading a YAML file with them: a leaf module any room may import.

A ``UserError`` is a person's mistake (a bad file, a bad config value); the CLI
prints its message on one line and exits 2. Anything else is a bug: exit 1.
"""


from pathlib import Path
from typing import Any

import yaml


class UserError(Exception):
    """A mistake the user can fix; the message says what, where and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is wrong."""


class AudioError(UserError):
    """An audio file cannot be read or written as asked."""


def yaml_error(path: object, what: str, exc: Exception) -> ConfigError:
    """The one-line ConfigError for a YAML file that ``yaml.safe_load`` refused: a Python
    tag (``!!python/...``, never loaded: it could run code) or a syntax error, with its line."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = str(getattr(exc, "problem", "") or "")
    if "constructor" in problem and "python" in problem:
        return ConfigError(f"{path}: {what} uses a Python tag{where} (!!python/...), which "
                           "stemloop never loads; remove it")
    return ConfigError(f"{path}: {what} is not valid YAML{where}; fix the syntax")


def read_yaml(path: Path, what: str) -> Any:
    """``path``'s YAML (safe: no Python tags), or a one-line ConfigError naming the file and
    ``what`` it is (unreadable, a Python tag, a syntax error and its line)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise yaml_error(path, what, exc) from None
