"""Prefect task: cull an iteration's stems and build its adaptation dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger

from stemloop import datasets
from stemloop.config import Config
from stemloop.datasets import vad  # noqa: F401  (its code is part of the cache key)
from stemloop.datasets.adaptschema import reference_speech
from stemloop.datasets.adaptset import IterationDataset, build_iteration
from stemloop.datasets.mixbus_yaml import load_schema
from stemloop.tasks.caching import content_key
from stemloop.tasks.results import cached_task


def _inputs(parameters: dict[str, Any]):
    config: Config = parameters["config"]
    settings = (parameters["iteration"], config.cull, config.loop, config.train.seed,
                parameters["folder"])
    return ([*parameters["stems"].values(), parameters["matched"]],
            (datasets.adaptset, datasets.adaptschema, datasets.cull, datasets.vad), settings)


@cached_task(name="build-dataset", cache_key_fn=content_key(_inputs))
def build_dataset(stems: dict[str, str], iteration: int, config: Config, folder: str,
                  matched: str, holdout_file: str, library: str | None = None
                  ) -> IterationDataset:
    base = load_schema(matched)
    voices = reference_speech(library, config.loop.reference_speech)
    if iteration == 0 and library and voices is None and config.loop.reference_speech == "natural":
        get_run_logger().warning(
            f"the library {library} holds no natural recorded speech, so the matched reference "
            "uses its synthetic voices; `make sysdeps` installs the Asterisk voices, and "
            "deleting the library folder rebuilds it with them")
    return build_iteration({k: Path(v) for k, v in stems.items()}, config.loop.target,
                           iteration, config, Path(folder), base, Path(holdout_file), voices)
