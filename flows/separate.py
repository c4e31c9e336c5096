"""Prefect flow ``separate``: one recording through a model or a recipe into stems.

Call ``flows.state.use_state_dir`` before importing this module (Prefect reads
its settings at import); the CLI does.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from adapt.config import load_config
from adapt.separate import RECORD_NAME
from flows.state import resolve_model
from tasks.separate import separate_file


@flow(name="separate", log_prints=False)
def separate(recording: str, out_dir: str, model: str | None = None, recipe: str | None = None,
             strength: float | None = None, config_path: str | None = None,
             overrides: list[str] | None = None) -> dict:
    """Separate ``recording`` into ``out_dir``; returns the record written as separation.json."""
    config = load_config(config_path, overrides or [])
    model = resolve_model(model or (None if recipe else config.separate.model), config)
    task = separate_file.with_options(refresh_cache=not outputs_intact(Path(out_dir)))
    record = task(recording, out_dir, model, recipe, strength, config)
    return record.model_dump(mode="json")


def outputs_intact(out_dir: Path) -> bool:
    """True when a previous run's record and every stem it names are still on disk."""
    try:
        record = json.loads((out_dir / RECORD_NAME).read_text())
        return all(Path(p).is_file() for p in record["stems"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
