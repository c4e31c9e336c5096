"""Prefect flow ``separate``: one recording through a model or a recipe into stems.

Call ``tasks.state.use_state_dir`` before importing this module (Prefect reads
its settings at import); the CLI does.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from stemloop.adapt.separate import read_record
from stemloop.config import load_config
from stemloop.files import file_digest
from stemloop.tasks.separate import separate_file
from stemloop.tasks.state import resolve_model


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return f"separate-{Path(str(flow_run.parameters.get('recording', 'recording'))).stem}"


@flow(name="separate", log_prints=False, persist_result=False, flow_run_name=_flow_run_name)
def separate(recording: str, out_dir: str, model: str | None = None, recipe: str | None = None,
             strength: float | None = None, config_path: str | None = None,
             overrides: list[str] | None = None, force: bool = False) -> dict:
    """Separate ``recording`` into ``out_dir``; returns the record written as separation.json.

    Never writes over the recording; replaces files in ``out_dir`` that are not this job's
    own earlier outputs only with ``force`` (``adapt.separate.check_outputs``).
    """
    config = load_config(config_path, overrides or [])
    model = resolve_model(model or (None if recipe else config.separate.model), config)
    task = separate_file.with_options(refresh_cache=not outputs_intact(Path(out_dir)))
    record = task(recording, out_dir, model, recipe, strength, config, force).model_dump(
        mode="json")
    if read_record(out_dir) != record:  # the cache's record is not what the folder holds now
        task = separate_file.with_options(refresh_cache=True)
        record = task(recording, out_dir, model, recipe, strength, config, force).model_dump(
            mode="json")
    return record


def outputs_intact(out_dir: Path) -> bool:
    """True when a previous run's record is there and every stem it names still has the
    SHA-256 it recorded (a replaced or edited stem makes the cache rerun)."""
    record = read_record(out_dir)
    try:
        stems, sums = record["stems"], record["sha256"]
        return bool(sums) and sums.keys() == stems.keys() and all(
            Path(stems[name]).is_file() and file_digest(stems[name]) == digest
            for name, digest in sums.items())
    except (OSError, KeyError, TypeError, AttributeError):
        return False
