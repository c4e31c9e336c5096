"""Prefect tasks of the general-model flow: train at the low rate, upscale one rung.

Both checkpoint inside (``adapt.train`` resumes from ``last.pt``), so a crashed or
killed flow rerun continues where it stopped; finished stages are cached on the
content of their inputs (config, library manifest, code) and skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

import adapt.model
import adapt.train
import adapt.upscale
import datasets.batches
from adapt.checkpoint import load_checkpoint, save_checkpoint
from adapt.config import Config
from adapt.model import build_model
from adapt.train import Run, train
from adapt.upscale import upscale
from datasets.batches import TrainingData
from flows.state import state_dir
from flows.tracking import Tracker
from tasks.caching import content_digest

CODE = (adapt.model, adapt.train, adapt.upscale, datasets.batches)


def training_data(config: Config, library: str, folder: Path) -> TrainingData:
    from adapt.config import CONFIG_DIR

    t = config.train
    return TrainingData(CONFIG_DIR / config.mixbus.schema_path, library,
                        list(config.model.targets), folder / "pools", t.pool_size,
                        t.val_examples, t.pool_seconds, t.segment_s, t.batch_size, t.seed,
                        t.workers)


def _key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    config: Config = parameters["config"]
    if not config.orchestration.cache:
        return None
    files = [Path(parameters["library"]) / "manifest.parquet"]
    if parameters.get("checkpoint"):
        files.append(Path(parameters["checkpoint"]))
    settings = (config.model, config.train, config.upscale, config.mixbus,
                parameters.get("rate"), str(parameters["folder"]))
    return f"{context.task.name}-{content_digest(files, CODE, settings)}"


def _logger(config: Config, run_id: str | None):
    tracker = Tracker(config, state_dir(config))
    return lambda metrics, step: tracker.metrics(run_id, metrics, step)


@task(name="train-low-rate", cache_key_fn=_key, persist_result=True)
def train_low_rate(config: Config, library: str, folder: str, run_id: str | None
                   ) -> dict[str, Any]:
    """Train a fresh model at ``model.sample_rate``; returns its checkpoint path and figures."""
    data = training_data(config, library, Path(folder))
    batches, val = data(config.model.sample_rate)
    model = build_model(config.model)
    result = train(model, batches, val, config.train, Run(Path(folder) / "low-rate"),
                   on_metrics=_logger(config, run_id))
    path = save_checkpoint(Path(folder) / f"model-{model.sample_rate}.pt", model,
                           {"step": result["step"], "val_si_sdr": result["best_si_sdr"]})
    return {"checkpoint": str(path), "rate": model.sample_rate, "steps": result["step"],
            "val_si_sdr": result["best_si_sdr"], "stopped": result["stopped"]}


@task(name="upscale-rung", cache_key_fn=_key, persist_result=True)
def upscale_rung(config: Config, library: str, folder: str, checkpoint: str, rate: int,
                 run_id: str | None) -> dict[str, Any]:
    """Transplant ``checkpoint`` to ``rate`` and train the two stages; returns the new one."""
    model = load_checkpoint(checkpoint).model
    data = training_data(config, library, Path(folder))
    new, report = upscale(model, rate, data, config.upscale, config.train, Path(folder),
                          _logger(config, run_id))
    path = save_checkpoint(Path(folder) / f"model-{rate}.pt", new,
                           {"upscale": report, "val_si_sdr": report["final_si_sdr"]})
    return {"checkpoint": str(path), "rate": rate, **report}
