"""Prefect flow ``adapt-batch``: ``adapt-recording`` over a folder or a CSV manifest.

One child flow run per recording (``adapt_recording`` as a subflow), at most
``orchestration.concurrency`` at a time, each in its own thread. A recording that
fails (bad file, bad row override, unwritable output) is recorded with a one-line
reason and never stops the others. The summary table (one row per recording) is
written to ``<state>/batches/<batch>/summary.{csv,json}`` and returned.

Folders and manifests are read by ``flows.manifest``. Call
``tasks.state.use_state_dir`` before importing this module.
"""

from __future__ import annotations

import contextvars
import errno
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, runtime

from stemloop.adapt.train import torch_threads
from stemloop.config import load_config
from stemloop.errors import UserError
from stemloop.files import write_json, write_text_atomic
from stemloop.flows.adapt import adapt_recording
from stemloop.flows.manifest import Job, read_jobs
from stemloop.names import QUALITY, truth_si_sdr
from stemloop.tasks.library import ensure_library
from stemloop.tasks.state import state_dir

SUMMARY_COLUMNS = ["recording", "status", "best_iteration", "quality", "si_sdr",
                   "iterations", "wall_s", "run_dir", "mlflow_run_id", "reason"]


def _flow_run_name() -> str:
    return f"adapt-batch-{Path(str(runtime.flow_run.parameters.get('source', 'batch'))).stem}"


@flow(name="adapt-batch", log_prints=False, persist_result=False, flow_run_name=_flow_run_name)
def adapt_batch(source: str, config_path: str | None = None,
                overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Adapt every recording of folder or manifest ``source``; returns the summary rows."""
    log = get_run_logger()
    overrides = list(overrides or [])
    config = load_config(config_path, overrides)
    jobs = read_jobs(source)
    state = state_dir(config)
    # Built once here: children starting together must not each build a missing library.
    ensure_library(config.mixbus.library_dir, str(state / "library"),
                   config.mixbus.library_hours, config.mixbus.seed, config.mixbus.library)
    overrides += share_threads(config.train.threads, config.orchestration.concurrency)
    log.info("%d recordings, %d at a time", len(jobs), config.orchestration.concurrency)
    pool = ThreadPoolExecutor(config.orchestration.concurrency, thread_name_prefix="adapt")
    try:
        # Each child runs in a copy of this flow's context, so it is a child flow run.
        futures = [pool.submit(contextvars.copy_context().run, _adapt_one, job, config_path,
                               overrides, config.loop.target) for job in jobs]
        rows = [future.result() for future in futures]
    except BaseException:  # Ctrl-C, SIGTERM: the queued recordings never start
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    folder = state / "batches" / f"{time.strftime('%Y%m%d-%H%M%S')}-{_batch_id()}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "summary.csv", table.to_csv(index=False))
    write_json(folder / "summary.json", {"source": str(source), "rows": rows})
    failed = int((table["status"] != "completed").sum())
    log.info("batch done: %d completed, %d failed; summary %s\n%s", len(rows) - failed, failed,
             folder / "summary.csv", format_summary(table))
    return rows


def share_threads(threads: int | str, concurrency: int) -> list[str]:
    """The override that shares this process's cores between the recordings adapted at
    once (``train.threads: auto`` would give each all of them: contended threads spin)."""
    if threads != "auto":
        return []
    return [f"train.threads={torch_threads('auto', concurrency)}"]


def _adapt_one(job: Job, config_path: str | None, overrides: list[str],
               target: str) -> dict[str, Any]:
    row: dict[str, Any] = {"recording": job.recording, "status": "failed"}
    if job.problem:
        return {**row, "reason": job.problem}
    began = time.monotonic()
    child = adapt_recording.with_options(flow_run_name=f"adapt-{Path(job.recording).stem}")
    try:
        report = child(job.recording, config_path, overrides + job.overrides, job.reference)
    except Exception as exc:  # one recording's failure is its row, not the batch's
        return {**row, "wall_s": round(time.monotonic() - began, 1), "reason": reason(exc)}
    best = report["best_iteration"]
    metrics = report["iterations"][best]
    return {**row, "status": "completed", "best_iteration": best,
            "quality": metrics.get(QUALITY),
            "si_sdr": metrics.get(truth_si_sdr(target)),
            "iterations": len(report["iterations"]), "wall_s": report["wall_s"],
            "run_dir": report["run_dir"], "mlflow_run_id": report["mlflow_run_id"],
            "reason": ""}


def reason(exc: BaseException) -> str:
    """One line a person can act on (a UserError already is one)."""
    if isinstance(exc, UserError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        code = errno.errorcode.get(exc.errno or 0, "")
        where = exc.filename or "output"
        text = (f"{where}: cannot write ({exc.strerror}{', ' + code if code else ''}); free "
                "space or make the state folder writable, then rerun (finished steps are cached)")
    else:
        text = f"{type(exc).__name__}: {exc} (a bug: please report it with the run's log)"
    return " ".join(text.split())


def format_summary(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["mlflow_run_id"]).copy()
    shown["recording"] = shown["recording"].map(lambda p: Path(str(p)).name)
    for column in ("quality", "si_sdr"):
        shown[column] = pd.to_numeric(shown[column]).round(2)
    return shown.fillna("").to_string(index=False)


def _batch_id() -> str:
    run_id = runtime.flow_run.id
    return str(run_id)[:8] if run_id else "local"
