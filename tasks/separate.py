"""Prefect task: separate one file (calls ``adapt.separate``; paths in, a small record out).

Cached on content: the key hashes the input audio, the checkpoint(s) or
recipe, the strength, the output folder, the config sections that change the
result, and the source of the code that computes it. A rerun with the same
content reuses the persisted record; the flow refreshes the cache when a file
the record names is gone or no longer has the SHA-256 the record holds.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext

import adapt.apply
import adapt.model
import adapt.recipe
import adapt.separate
from adapt.apply import Progress
from adapt.config import Config
from adapt.separate import SeparationRecord, prepare, run_separation
from tasks.caching import file_digest
from tasks.results import cached_task

_progress: list[Progress] = []  # a callback the CLI installs; tasks get no callables as inputs


def report_progress(callback: Progress | None) -> None:
    """Send ``(frames done, frames total)`` of the running separation to ``callback``."""
    _progress[:] = [callback] if callback else []


def content_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    config: Config = parameters["config"]
    if not config.orchestration.cache:
        return None
    digest = hashlib.sha256()
    files = [Path(parameters["source"])]
    if parameters["recipe"]:
        files += [Path(parameters["recipe"]), *adapt.recipe.model_files(parameters["recipe"])]
    if parameters["model"]:
        files.append(Path(parameters["model"]))
    for path in files:
        digest.update(file_digest(path).encode())
    settings = (parameters["strength"], str(Path(parameters["out_dir"]).resolve()),
                config.io.model_dump_json(), config.separate.model_dump_json())
    digest.update(repr(settings).encode())
    for module in (adapt.apply, adapt.model, adapt.recipe, adapt.separate):
        digest.update(inspect.getsource(module).encode())
    digest.update(inspect.getsource(separate_file).encode())
    return f"separate-{digest.hexdigest()}"


@cached_task(name="separate-file", cache_key_fn=content_key)
def separate_file(source: str, out_dir: str, model: str | None, recipe: str | None,
                  strength: float | None, config: Config, force: bool = False
                  ) -> SeparationRecord:
    job = prepare(source, config, model, recipe, strength)
    return run_separation(job, out_dir, config, _progress[0] if _progress else None, force)
