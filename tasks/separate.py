"""Prefect task: separate one file (calls ``adapt.separate``; paths in, a small record out).

Cached on content: the key hashes the input audio, the checkpoint(s) or
recipe, the strength, the output folder, the config sections that change the
result, and the source of the code that computes it. A rerun with the same
content reuses the persisted record; the flow refreshes the cache when a file
the record names is gone or no longer has the SHA-256 the record holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemloop import adapt
from stemloop.adapt.apply import Progress
from stemloop.adapt.separate import SeparationRecord, prepare, run_separation
from stemloop.config import Config
from stemloop.tasks.caching import content_key
from stemloop.tasks.results import cached_task

_progress: list[Progress] = []  # a callback the CLI installs; tasks get no callables as inputs


def report_progress(callback: Progress | None) -> None:
    """Send ``(frames done, frames total)`` of the running separation to ``callback``."""
    _progress[:] = [callback] if callback else []


def _inputs(parameters: dict[str, Any]):
    config: Config = parameters["config"]
    files = [Path(parameters["source"])]
    if parameters["recipe"]:
        files += [Path(parameters["recipe"]), *adapt.recipe.model_files(parameters["recipe"])]
    if parameters["model"]:
        files.append(Path(parameters["model"]))
    settings = (parameters["strength"], str(Path(parameters["out_dir"]).resolve()),
                config.io.model_dump_json(), config.separate.model_dump_json())
    return files, (adapt.apply, adapt.model, adapt.recipe, adapt.separate), settings


@cached_task(name="separate-file", cache_key_fn=content_key(_inputs))
def separate_file(source: str, out_dir: str, model: str | None, recipe: str | None,
                  strength: float | None, config: Config, force: bool = False
                  ) -> SeparationRecord:
    job = prepare(source, config, model, recipe, strength)
    return run_separation(job, out_dir, config, _progress[0] if _progress else None, force)
