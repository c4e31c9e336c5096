"""Prefect task: make sure a labelled library exists (builds it when its manifest is missing)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from adapt.config import LibraryConfig


@task(name="labelled-library")
def ensure_library(folder: str, hours: float, seed: int, config: LibraryConfig) -> str:
    """The library at ``folder``: reused when ``manifest.parquet`` is there, else built."""
    from datasets.library import build_library

    if not (Path(folder) / "manifest.parquet").is_file():
        build_library(folder, hours, seed, config)
    return folder
