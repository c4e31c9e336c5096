"""Prefect task: fit the dialogue schema's degradations to the recording (once per run)."""

from __future__ import annotations

from pathlib import Path

from prefect.tasks import task_input_hash

from stemloop.config import CONFIG_DIR
from stemloop.tasks.results import cached_task


@cached_task(name="match-recording", cache_key_fn=task_input_hash)
def match_schema(recording: str, recording_sha256: str, schema: str, library: str | None,
                 out: str) -> str:
    """Write the matched schema to ``out`` (``recording_sha256`` keys the cache on content)."""
    from stemloop.datasets.match import match_recording

    match_recording(recording, CONFIG_DIR / schema, out, Path(library) if library else None)
    return out
