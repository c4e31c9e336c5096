"""Prefect tasks of the general-model flow: train at the low rate, upscale one rung.

Both checkpoint inside (``adapt.train`` resumes from ``last.pt``), so a crashed or
killed flow rerun continues where it stopped; finished stages are cached on the
content of their inputs (config, library manifest, code) and skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemloop import adapt, datasets, progress
from stemloop.adapt.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.adapt.train import Run, train
from stemloop.adapt.upscale import upscale
from stemloop.config import Config, result_train
from stemloop.datasets.batches import TrainingData
from stemloop.tasks.caching import content_key
from stemloop.tasks.results import cached_task
from stemloop.tasks.state import state_dir
from stemloop.tasks.tracking import Tracker

CODE = (adapt.model, adapt.pretrained, adapt.train, adapt.upscale, datasets.batches)


def training_data(config: Config, library: str, folder: Path) -> TrainingData:
    from stemloop.config import CONFIG_DIR

    t = config.train
    return TrainingData(CONFIG_DIR / config.mixbus.schema_path, library,
                        list(config.model.targets), folder / "pools", t.pool_size,
                        t.val_examples, t.pool_seconds, t.segment_s, t.batch_size, t.seed,
                        t.workers)


def _inputs(parameters: dict[str, Any]):
    config: Config = parameters["config"]
    files = [Path(parameters[name]) for name in ("checkpoint", "init") if parameters.get(name)]
    settings = (config.model, result_train(config), config.upscale, config.mixbus,
                parameters.get("rate"), str(parameters["folder"]))
    return files, (*CODE, training_data), settings


def progress_logger(config: Config, run_id: str | None, total: int, label: str = "training"):
    """Metrics to MLflow every step; a progress line to the flow's log at each validation;
    the step to a progress bar (``stemloop.progress``, as ``label``)."""
    from prefect import get_run_logger

    tracker, log = Tracker(config, state_dir(config)), get_run_logger()

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        progress.report(label, step, total)
        tracker.metrics(run_id, metrics, step)
        val = {k: v for k, v in metrics.items() if "val/" in k}
        if val:
            loss = next((f"  loss {v:.3f}" for k, v in metrics.items()
                         if k.endswith("train/total")), "  (start)")
            log.info("step %d/%d%s  %s", step, total, loss,
                     "  ".join(f"{k} {v:.2f}" for k, v in val.items()))

    return on_metrics


def start_model(config: Config, init: str | None):
    """The model to train: a pretrained one given as ``init`` as it is (at its own rate),
    else the config's architecture, from ``init``'s weights when given."""
    if init:
        start = load_checkpoint(init).model
        if start.DELTA_BASE is not None:  # a pretrained family keeps its own architecture;
            if list(start.config.targets) != list(config.model.targets):  # trained for others
                start.config = start.config.model_copy(update={
                    "targets": list(config.model.targets),
                    "complement": config.model.complement})
            return start
    model = build_model(config.model)
    return load_weights_into(model, init) if init else model


@cached_task(name="train-low-rate", cache_key_fn=content_key(_inputs))
def train_low_rate(config: Config, library: str, folder: str, run_id: str | None,
                   init: str | None = None) -> dict[str, Any]:
    """Train a model at ``model.sample_rate``, fresh or continuing from checkpoint ``init``
    (same architecture, or a pretrained model at its own rate; new schedule); returns its
    checkpoint path and figures."""
    model = start_model(config, init)
    data = training_data(config, library, Path(folder))
    batches, val = data(model.sample_rate)
    result = train(model, batches, val, config.train, Run(Path(folder) / "low-rate"),
                   on_metrics=progress_logger(config, run_id, config.train.steps))
    pretrained = model.DELTA_BASE is not None  # shipped as its difference from the wheel's
    path = save_checkpoint(Path(folder) / f"model-{model.sample_rate}.pt", model,
                           {"step": result["step"], "val_si_sdr": result["best_si_sdr"]},
                           delta=pretrained)
    return {"checkpoint": str(path), "rate": model.sample_rate, "steps": result["step"],
            "val_si_sdr": result["best_si_sdr"], "stopped": result["stopped"]}


@cached_task(name="upscale-rung", cache_key_fn=content_key(_inputs))
def upscale_rung(config: Config, library: str, folder: str, checkpoint: str, rate: int,
                 run_id: str | None) -> dict[str, Any]:
    """Transplant ``checkpoint`` to ``rate`` and train the two stages; returns the new one."""
    model = load_checkpoint(checkpoint).model
    data = training_data(config, library, Path(folder))
    new, report = upscale(model, rate, data, config.upscale, config.train, Path(folder),
                          progress_logger(config, run_id, config.upscale.new_layers_steps
                                  + config.upscale.all_steps))
    path = save_checkpoint(Path(folder) / f"model-{rate}.pt", new,
                           {"upscale": report, "val_si_sdr": report["final_si_sdr"]},
                           delta=new.DELTA_BASE is not None)
    return {"checkpoint": str(path), "rate": rate, **report}
