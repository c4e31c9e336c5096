"""Progress of long work, from where it happens to whoever shows it, in one process.

Work calls ``report(label, done, total)`` (``total`` None: a stage with no count, shown as
running); the CLI ``listen``s and draws bars with an ETA on stderr. With no listener (tests,
deployments, adapt-batch's threads) a report costs one attribute read. Labels name a stage a
person recognises ("iteration 1: fine-tuning"); a new label ends the one before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Listener = Callable[[str, float, float | None], None]

_listener: list[Listener] = []
_scope: list[str] = []  # "music", "iteration 1": prefixes of every label reported inside


def listen(listener: Listener | None) -> None:
    """Send reports to ``listener`` (None: stop). One listener per process: the command
    that runs one job (adapt-batch, whose recordings run at once, listens to none)."""
    _listener[:] = [listener] if listener else []


def report(label: str, done: float = 0.0, total: float | None = None) -> None:
    """``done`` of ``total`` units of the stage ``label`` are finished."""
    if _listener:
        _listener[0](f"{', '.join(_scope)}: {label}" if _scope else label, done, total)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Reports inside are labelled ``name: label`` (nested scopes join with commas)."""
    _scope.append(name)
    try:
        yield
    finally:
        _scope.pop()


class Stage:
    """``with Stage("library"):`` a stage with no count, finished when the block ends."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self) -> Stage:
        report(self.label)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            report(self.label, 1.0, 1.0)
