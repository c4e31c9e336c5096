"""Task cache keys from content: files by bytes, code by source, settings by repr.

Every cached task of stemloop takes its key from ``content_key``: the task names what
decides its result (``inputs``), and the key adds the task's own source, the library's
manifest when the task reads a library, and no key at all when caching is off.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from stemloop.config import Config
from stemloop.files import file_digest
from stemloop.names import MANIFEST

__all__ = ["content_digest", "content_key", "file_digest"]

if TYPE_CHECKING:  # importing Prefect reads its settings: not before use_state_dir
    from prefect.context import TaskRunContext

KeyInputs = Callable[[dict[str, Any]], tuple[list[Any], tuple[Any, ...], Any]]


def content_digest(files: Iterable[str | Path] = (), code: Iterable[ModuleType | Any] = (),
                   settings: Any = None) -> str:
    """One digest of file contents, the source of modules/functions, and settings' repr."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(file_digest(path).encode())
    for item in code:
        digest.update(inspect.getsource(item).encode())
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def content_key(inputs: KeyInputs) -> Callable[[TaskRunContext, dict[str, Any]], str | None]:
    """A ``cache_key_fn``: ``inputs(parameters)`` gives (files, code, settings); the key is
    ``<task name>-<digest>`` of those, the task's source and, when the task has a
    ``library`` parameter, that library's manifest; None when ``orchestration.cache`` is off."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        config: Config = parameters["config"]
        if not config.orchestration.cache:
            return None
        files, code, settings = inputs(parameters)
        if parameters.get("library"):
            files = [*files, Path(parameters["library"]) / MANIFEST]
        digest = content_digest(files, (*code, context.task.fn), settings)
        return f"{context.task.name}-{digest}"

    return key
