"""Small atomic file writes (temp file in the same folder + rename) and file digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary path beside ``path`` to write to; renamed onto ``path`` when the
    block completes, removed if it fails. Keeps the suffix (``.x.1a2b.part.png``) so writers
    that infer a format from it still work; two writers never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=f".part{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644 & ~umask())  # mkstemp makes 0600; outputs are for people to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    current = os.umask(0)
    os.umask(current)
    return current


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` so that ``path`` holds either its old content or all of the new."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic, indented JSON; non-finite floats are written as null (valid JSON)."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def copy_files(paths: dict[str, str], folder: Path) -> dict[str, str]:
    """Copy each named file into ``folder`` (created), each atomically; the copies' paths."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name, path in paths.items():
        target = folder / Path(path).name
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
        copies[name] = str(target)
    return copies
