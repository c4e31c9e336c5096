"""Prefect task: make sure a labelled library exists, built with the current recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import get_run_logger

from stemloop.config import LibraryConfig
from stemloop.tasks.results import cached_task


@cached_task(name="labelled-library")
def ensure_library(given: str | None, own: str, hours: float, seed: int,
                   config: LibraryConfig) -> str:
    """The library to use: ``given`` (one the user named) as it is, else stemloop's own at
    ``own``, built when missing and rebuilt when an older recipe made it (it lacks material
    added since). A named library from an older recipe is used with a warning."""
    from stemloop.datasets.library import (
        ADDED,
        MANIFEST,
        RECIPE,
        build_library,
        check_tools,
        library_recipe,
    )

    folder = Path(given or own)
    if (folder / MANIFEST).is_file():
        recipe = library_recipe(folder)
        if recipe >= RECIPE:
            return str(folder)
        if given:
            get_run_logger().warning(
                "%s: built by an older stemloop (library recipe %d, now %d), so it lacks "
                "material added since (%s); rebuild it with `stemloop library build --out %s`",
                folder, recipe, RECIPE,
                ", ".join(ADDED[r] for r in range(recipe + 1, RECIPE + 1) if r in ADDED), folder)
            return str(folder)
        get_run_logger().warning("%s: built by an older stemloop (library recipe %d, now %d); "
                                 "rebuilding it", folder, recipe, RECIPE)
        check_tools()  # a machine that cannot rebuild it keeps the old one
        shutil.rmtree(folder)
    build_library(folder, hours, seed, config)
    return str(folder)
