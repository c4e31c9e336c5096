"""Prefect task: fine-tune the current model on an iteration's dataset (and upscale it).

Trains at the working rate from the current working-rate model, validating on the
run's matched reference (library voices over the recording's held-out background;
the starting weights stay unless training beats them there); then, for a recording above the working
rate, moves the result up to the recording's rate (frozen new layers, then all) and
keeps the upscaled model only if it beats the working-rate model run through
resampling on the recording-rate reference: on band-limited recordings it often does
not (film-it: the upscale lost 0.46 dB of true SI-SDR that fine-tuning had gained).
Checkpoints inside, so a killed run resumes mid-training. The rendered training pools
(~700 MB an iteration at defaults) and the ``last.pt`` checkpoints (optimizer state) serve
only that resume: they are removed once the task has its result, which the cache keeps.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from stemloop import datasets, heap
from stemloop.adapt.checkpoint import load_checkpoint, save_checkpoint
from stemloop.adapt.interface import SeparatorModel
from stemloop.adapt.train import Run, train
from stemloop.adapt.upscale import (
    FineTuned,
    Validation,
    can_upscale,
    keeps_upscaled,
    reference_has_band,
    upscale,
)
from stemloop.config import Config, TrainConfig
from stemloop.datasets.adaptset import holdout_pairs, reference_pairs
from stemloop.datasets.batches import TrainingData
from stemloop.tasks.caching import content_key
from stemloop.tasks.results import cached_task
from stemloop.tasks.train import CODE, progress_logger


def _inputs(parameters: dict[str, Any]):
    config: Config = parameters["config"]
    settings = (config.train, config.upscale, config.loop, parameters["rate"],
                parameters["folder"], parameters["high_band_db"])
    return ([parameters["model"], parameters["schema"], parameters["holdout"]],
            (*CODE, datasets.adaptset, _fine_tune, head_kept), settings)


@cached_task(name="fine-tune", cache_key_fn=content_key(_inputs))
def finetune(model: str, schema: str, library: str | None, holdout: str, folder: str,
             rate: int, config: Config, run_id: str | None, high_band_db: float = -math.inf
             ) -> FineTuned:
    """The fine-tuned model's checkpoints at the working rate and for the recording
    (``high_band_db``: the recording's energy above 11 kHz, ``energy_above_db``)."""
    heap.trim()  # what the separation and scoring before freed: not into the pool workers
    try:
        return _fine_tune(model, schema, library, holdout, folder, rate, config, run_id,
                          high_band_db)
    finally:
        heap.trim()  # the model, optimiser and pools just freed


def _fine_tune(model: str, schema: str, library: str | None, holdout: str, folder: str,
               rate: int, config: Config, run_id: str | None, high_band_db: float
               ) -> FineTuned:
    work = Path(folder)
    current = load_checkpoint(model).model
    data = TrainingData(schema, library, [config.loop.target], work / "pools",
                        config.train.pool_size, 1, config.train.pool_seconds,
                        config.train.segment_s, config.train.batch_size, config.train.seed,
                        config.train.workers)

    def data_for(r: int):  # validate on the matched reference (a true target) when there is one
        return data(r)[0], (reference_pairs(Path(holdout), library, r, config)
                            or holdout_pairs(Path(holdout), r, config))

    batches, val = data_for(current.sample_rate)
    floor = config.upscale.min_high_band_db
    logger = progress_logger(config, run_id, config.train.steps, "fine-tuning")
    train(current, batches, val, head_kept(current, val, config, floor), Run(work / "train"),
          on_metrics=logger, keep_start=True)
    working = save_checkpoint(work / f"model-{current.sample_rate}.pt", current)
    recording = working
    grows = config.loop.upscale and can_upscale(current, rate, high_band_db, floor)
    if grows and not reference_has_band(current, val, floor):
        get_run_logger().info(
            f"not widening: the recording holds content above 11 kHz ({high_band_db:.1f} dB), "
            "but the matched reference's voices hold none, so it could not tell whether a "
            "band head pays (the library has no full-band speech)")
    elif grows:
        high, report = upscale(current, rate, data_for, config.upscale, config.train, work,
                               progress_logger(config, run_id, config.upscale.new_layers_steps
                                               + config.upscale.all_steps, "upscaling"))
        keep = keeps_upscaled(report)
        if keep:
            recording = save_checkpoint(work / f"model-{rate}.pt", high)
        get_run_logger().info(
            f"upscaled to {rate} Hz: {report['final_si_sdr']:.2f} dB on the reference, "
            f"working-rate model resampled: {report['resampled_si_sdr']:.2f} dB; separating "
            "with the " + ("upscaled model" if keep else "working-rate model"))
    shutil.rmtree(work / "pools", ignore_errors=True)
    for resume_only in work.glob("*/last.pt"):
        resume_only.unlink()
    return FineTuned(working=str(working), recording=str(recording))


def head_kept(model: SeparatorModel, val: Validation, config: Config, floor_db: float
              ) -> TrainConfig:
    """The fine-tuning's train settings. A model with a band head (the full-band general
    model) trains its head only when the matched reference's voices hold a band above
    11 kHz (``reference_has_band``): over a band-limited library the head would learn to
    give the recording's band to the complement. There it stays as shipped, in the graph,
    while the U-Nets adapt. (Setting it aside, the U-Nets trained alone and the head
    grafted back, did no better: bench/RESULTS.md, "Full band".)"""
    if not getattr(model.config, "full_band", False) or reference_has_band(model, val,
                                                                            floor_db):
        return config.train
    return config.train.model_copy(update={"freeze": [*config.train.freeze, "head.*"]})
