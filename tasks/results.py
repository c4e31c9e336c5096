"""Cached task results as data, never code: a JSON serializer and key storage that refuses the rest.

Prefect persists a cached task's result with metadata that names the serializer to decode
it with; its default is cloudpickle, and its JSON serializer imports any decoder the
metadata names. Either way, whoever can write the state folder could make the next rerun
execute code. Here:

* ``DataOnlyJSON`` (type ``stemloop-json``) writes plain JSON. It encodes only JSON values,
  the records listed in ``RECORDS`` (rebuilt by validation, never by import path) and a
  failed task's exception (as its class name and message, read back as ``PersistedError``);
  anything else is a TypeError at write time, so a task that returns something new fails
  in the tests, not in production.
* ``KeyStorage`` holds each cache key's metadata (Prefect's ``key_storage``, so the value
  itself lies apart, in Prefect's result folder). It hands Prefect metadata only if its
  serializer is exactly ``{"type": "stemloop-json"}``: anything else (pickle, Prefect's
  JSON with a decoder, bytes that are not metadata) raises, Prefect treats the entry as
  absent, recomputes the task and overwrites it. The value is then decoded by
  ``DataOnlyJSON`` whatever its file holds (a value that does not decode also makes the
  entry absent). Writes are atomic (a unique temp file, then a
  rename), so a crash never leaves half a record.

``cached_task`` is ``prefect.task`` with these settings and ``persist_result=True``. Flows
persist nothing (``persist_result=False``): no flow result is ever read back.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import DEFAULT, CacheKeyFnPolicy
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer
from prefect.settings import get_current_settings
from pydantic import BaseModel

TYPE = "stemloop-json"
_TAG = "__stemloop_record__"
_ERROR = "__stemloop_error__"


# The record classes a result may hold, by name, and the module each lives in (imported on
# first use of that record: a one-shot `stemloop separate` loads no dataset or training code).
RECORDS = {"SeparationRecord": "stemloop.adapt.separate",
           "IterationDataset": "stemloop.datasets.adaptset",
           "FineTuned": "stemloop.adapt.upscale"}


def record_class(name: str) -> type[BaseModel] | None:
    """The listed record class called ``name``, or None (never an import the data names)."""
    module = RECORDS.get(name)
    return getattr(importlib.import_module(module), name) if module else None


class UnsafeResult(ValueError):
    """A persisted result that is not stemloop's data-only JSON."""


class PersistedError(Exception):
    """A failed task's exception read back: its class name and message, never its class."""


def encode(value: Any) -> Any:
    """A JSON value for ``value``: JSON types as they are, listed records tagged by name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("result dicts must have string keys")
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseException):  # a failed task's state: kept as words only
        return {_ERROR: type(value).__qualname__, "message": str(value)}
    name = type(value).__name__
    if name in RECORDS and record_class(name) is type(value):
        return {_TAG: name, "data": value.model_dump(mode="json")}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy/torch scalars
        return encode(value.item())
    raise TypeError(f"cannot persist a {type(value).__qualname__} as a result; return plain "
                    "data or add a record class to tasks.results.RECORDS")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if _ERROR in value:
            return PersistedError(f"{value[_ERROR]}: {value.get('message', '')}")
        if _TAG in value:
            cls = record_class(value[_TAG])
            if cls is None:
                raise UnsafeResult(f"unknown record {value[_TAG]!r}")
            return cls.model_validate(value["data"])
        return {k: decode(v) for k, v in value.items()}
    return value


class DataOnlyJSON(Serializer):
    """Plain JSON in, plain JSON out; no field but its type, so an envelope cannot add one."""

    type: Literal["stemloop-json"] = TYPE

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(encode(obj)).encode()

    def loads(self, blob: bytes) -> Any:
        return decode(json.loads(blob))


def check_metadata(content: bytes) -> bytes:
    """``content`` if it is result metadata naming ``DataOnlyJSON`` and the value it points
    to decodes as data; else UnsafeResult (the cache entry is then treated as absent)."""
    try:
        metadata = json.loads(content)
        serializer, value = metadata["serializer"], metadata["storage_key"]
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsafeResult(f"not stemloop result metadata ({exc})") from None
    if serializer != {"type": TYPE}:
        raise UnsafeResult(f"refusing a result written with serializer {serializer!r}")
    base = Path(get_current_settings().results.local_storage_path).resolve()
    path = (base / str(value)).resolve()  # an absolute key stays itself
    if base not in path.parents or not path.is_file():
        raise UnsafeResult(f"{value}: not a result file inside {base}")
    try:
        DataOnlyJSON().loads(path.read_bytes())
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UnsafeResult(f"{value}: not a data-only result ({exc})") from None
    return content


class KeyStorage(LocalFileSystem):
    """Cache-key metadata storage: hands Prefect only data-only metadata, writes atomically.

    Without a basepath it uses ``keys/`` under Prefect's local result path at the time of
    each call, as Prefect's own default storage does (the state folder is chosen at run time).
    """

    _block_type_name = "stemloop key storage"
    _block_type_slug = "stemloop-key-storage"

    def _resolve_path(self, path: str) -> Path:
        if self.basepath:
            return super()._resolve_path(path)
        base = Path(get_current_settings().results.local_storage_path) / "keys"
        return LocalFileSystem(basepath=str(base))._resolve_path(path)

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    def read_path(self, path: str, **_: Any) -> bytes:
        return check_metadata(Path(self._resolve_path(path)).read_bytes())

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)

    def write_path(self, path: str, content: bytes, **_: Any) -> str:
        target = Path(self._resolve_path(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)


def cached_task(cache_key_fn: Callable | None = None, **options: Any) -> Callable:
    """``@task`` whose result is persisted as data only (see the module docstring), its
    runs named after what they work on (``fine-tune-iter-1``, ``score-iteration-music-iter-0``)."""
    policy = CacheKeyFnPolicy(cache_key_fn=cache_key_fn) if cache_key_fn else DEFAULT
    options.setdefault("task_run_name", run_name(options["name"]))
    return task(persist_result=True, result_serializer=DataOnlyJSON(),
                cache_policy=policy.configure(key_storage=KeyStorage()), **options)


_STEP, _ITERATION = re.compile(r"[/\\]steps[/\\]([\w.-]+)"), re.compile(r"iter-(\d+)")


def run_name(base: str) -> Callable[[], str]:
    """A task run's name: ``base``, then the recipe step and iteration that its path
    parameters (a run folder's ``steps/<name>/iter-NNN/...``) point into, when they do."""

    def name() -> str:
        from prefect.runtime import task_run

        texts = []
        parameters = task_run.parameters  # where the task writes says most: look there first
        for key in sorted(parameters, key=lambda k: k not in ("folder", "out_dir", "stems")):
            value = parameters[key]
            texts += [str(v) for v in (value.values() if isinstance(value, dict) else [value])
                      if isinstance(v, str | Path)]
        text = " ".join(texts)
        step, iteration = _STEP.search(text), _ITERATION.search(text)
        return "-".join([base, *([step[1]] if step else []),
                         *([f"iter-{int(iteration[1])}"] if iteration else [])])

    return name
