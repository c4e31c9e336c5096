"""Prefect task: cull an iteration's stems and build its adaptation dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger
from prefect.context import TaskRunContext

import datasets.adaptset
import datasets.cull
from adapt.config import Config
from datasets.adaptset import build_iteration, reference_speech
from tasks.caching import content_digest
from tasks.results import cached_task


def _key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    config: Config = parameters["config"]
    if not config.orchestration.cache:
        return None
    files = [*parameters["stems"].values(), parameters["matched"]]
    if parameters.get("library"):
        files.append(Path(parameters["library"]) / "manifest.parquet")
    settings = (parameters["iteration"], config.cull, config.loop, config.train.seed,
                parameters["folder"])
    code = (datasets.adaptset, datasets.cull)
    return f"dataset-{content_digest(files, code, settings)}"


@cached_task(name="build-dataset", cache_key_fn=_key)
def build_dataset(stems: dict[str, str], iteration: int, config: Config, folder: str,
                  matched: str, holdout_file: str, library: str | None = None) -> dict[str, Any]:
    base = yaml.safe_load(Path(matched).read_text())
    voices = reference_speech(library, config.loop.reference_speech)
    if iteration == 0 and library and voices is None and config.loop.reference_speech == "natural":
        get_run_logger().warning(
            f"the library {library} holds no natural recorded speech, so the matched reference "
            "uses its synthetic voices; `make sysdeps` installs the Asterisk voices, and "
            "deleting the library folder rebuilds it with them")
    return build_iteration({k: Path(v) for k, v in stems.items()}, config.loop.target,
                           iteration, config, Path(folder), base, Path(holdout_file), voices)
