"""Content digests for task cache keys: files by bytes, code by source, settings by repr."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from datasets.files import file_digest

__all__ = ["content_digest", "file_digest"]


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
