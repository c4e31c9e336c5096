"""Review of adaptation runs: the MLflow runs as a table, and what a run's review page reads.

``runs_table`` reads the parent runs (tag ``stemloop.flow=adapt``) of the tracking
experiment. ``load_report``, ``iteration_stems`` and ``_flac_preview`` read a finished run
folder for the review page (``review_app``: served by `stemloop review`, written as one
file by `stemloop report` and `review --out`). No Prefect here.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from stemloop.adapt.quality import delivered_iteration
from stemloop.errors import UserError
from stemloop.names import PSEUDO_SI_SDR, QUALITY, SEPARATION_RECORD, truth_si_sdr

RUN_COLUMNS = ["recording", "run", "status", "best_iteration", "quality", "si_sdr",
               "iterations", "stems", "started", "run_id"]


def runs_table(client, experiment: str, limit: int = 200) -> pd.DataFrame:
    """One row per adaptation run (newest first), from MLflow."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = client.search_runs([found.experiment_id], "tags.`stemloop.flow` = 'adapt'",
                              max_results=limit, order_by=["attributes.start_time DESC"])
    rows = [_run_row(client, run) for run in runs
            if "mlflow.parentRunId" not in run.data.tags]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _run_row(client, run) -> dict[str, Any]:
    row = {"recording": Path(run.data.params.get("recording", "?")).name,
           "run": run.info.run_name, "status": run.info.status, "iterations": 0,
           "run_id": run.info.run_id,
           "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M")}
    recipe = run.data.params.get("recipe.steps")
    if recipe:
        row["stems"] = "; ".join(_stem_summary(client, run, *step.split("=", 1))
                                 for step in recipe.split(","))
        return row
    found = _delivered(client, run, run.data.params.get("loop.target", "dialogue"))
    if found:
        best, quality, truth = found
        row.update(iterations=len(quality), best_iteration=best, quality=round(quality[best], 2),
                   si_sdr=round(truth[best], 2) if best in truth else None)
    return row


def _delivered(client, run, target: str, prefix: str = ""
               ) -> tuple[int, dict[int, float], dict[int, float]] | None:
    """The iteration the loop delivered, from a run's ``<prefix>`` metric histories (as
    ``delivered_iteration`` picks it), with the quality estimate's and the target's true
    SI-SDR's histories; None before any iteration was scored."""
    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                   f"{prefix}{key}")}

    quality = history(QUALITY)
    if not quality:
        return None
    pseudo = history(PSEUDO_SI_SDR)
    steps = sorted(quality)
    guard = run.data.params.get("loop.own_voice_guard_db", "None")
    best = steps[delivered_iteration(
        [{QUALITY: quality[s], **({PSEUDO_SI_SDR: pseudo[s]} if s in pseudo else {})}
         for s in steps], None if guard == "None" else float(guard))]
    return best, quality, history(truth_si_sdr(target))


def _stem_summary(client, run, name: str, target: str) -> str:
    """A recipe step in one cell: ``music: iteration 1, estimate 3.40 (0: 2.95), true 4.10``,
    from the recipe run's ``<step>/...`` metrics (delivered as the loop delivers)."""
    found = _delivered(client, run, target, f"{name}/")
    if not found:
        return f"{name}: not scored yet"
    best, quality, truth = found
    text = f"{name}: iteration {best}, estimate {quality[best]:.2f} (0: {quality[0]:.2f})"
    return text + (f", true {truth[best]:.2f} (0: {truth[0]:.2f})" if best in truth else "")


def load_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no report.json, so the run has not finished; give a "
                        "finished run folder or its MLflow run id (see `stemloop runs`)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable run report ({exc}); rerun the adaptation to "
                        "rewrite it") from None


def iteration_stems(run_dir: Path, k: int) -> dict[str, str]:
    """Iteration ``k``'s stem files by name, as its separation record lists them (their
    format follows the recording's: io.output_format auto); empty when there is none."""
    try:
        record = json.loads((run_dir / f"iter-{k:03d}" / "stems" / SEPARATION_RECORD)
                            .read_text())
    except (OSError, ValueError):
        return {}
    return dict(record.get("stems") or {}) if isinstance(record, dict) else {}


def _flac_preview(path: Path, seconds: float) -> tuple[str, str]:
    """The first ``seconds`` of ``path`` as base64 16-bit FLAC, and what was cut."""
    info = sf.info(str(path))
    frames = min(info.frames, int(seconds * info.samplerate))
    audio, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    buffer = io.BytesIO()
    sf.write(buffer, audio.clip(-1, 1), rate, format="FLAC", subtype="PCM_16")
    whole = info.frames / info.samplerate
    note = (f"({whole:.1f} s)" if frames == info.frames
            else f"(first {frames / rate:.1f} s of {whole:.1f} s)")
    return base64.b64encode(buffer.getvalue()).decode(), note
