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

import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.context import TaskRunContext

import datasets.adaptset
from adapt.checkpoint import load_checkpoint, save_checkpoint
from adapt.config import SUPPORTED_RATES, Config
from adapt.model import Separator
from adapt.train import Run, train
from adapt.upscale import upscale
from datasets.adaptset import holdout_pairs, reference_pairs
from datasets.batches import TrainingData
from tasks.caching import content_digest
from tasks.results import cached_task
from tasks.train import CODE, progress_logger


def _key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    config: Config = parameters["config"]
    if not config.orchestration.cache:
        return None
    files = [parameters["model"], parameters["schema"], parameters["holdout"]]
    if parameters.get("library"):
        files.append(Path(parameters["library"]) / "manifest.parquet")
    settings = (config.train, config.upscale, config.loop, parameters["rate"],
                parameters["folder"])
    code = (*CODE, datasets.adaptset, context.task.fn)
    return f"finetune-{content_digest(files, code, settings)}"


@cached_task(name="fine-tune", cache_key_fn=_key)
def finetune(model: str, schema: str, library: str | None, holdout: str, folder: str,
             rate: int, config: Config, run_id: str | None) -> dict[str, str]:
    """Returns ``{"working": checkpoint at the working rate, "recording": one at ``rate``}``."""
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
    logger = progress_logger(config, run_id, config.train.steps)
    train(current, batches, val, config.train, Run(work / "train"), on_metrics=logger,
          keep_start=True)
    working = save_checkpoint(work / f"model-{current.sample_rate}.pt", current)
    result = {"working": str(working), "recording": str(working)}
    # A pretrained model (Spleeter) has one rate: the recording is resampled for it instead.
    if (config.loop.upscale and isinstance(current, Separator) and rate > current.sample_rate
            and rate in SUPPORTED_RATES):
        high, report = upscale(current, rate, data_for, config.upscale, config.train, work,
                               progress_logger(config, run_id, config.upscale.new_layers_steps
                                               + config.upscale.all_steps))
        upscaled, resampled = report["final_si_sdr"], report["resampled_si_sdr"]
        keep = upscaled > resampled
        if keep:
            result["recording"] = str(save_checkpoint(work / f"model-{rate}.pt", high))
        get_run_logger().info(
            f"upscaled to {rate} Hz: {upscaled:.2f} dB on the reference, working-rate model "
            f"resampled: {resampled:.2f} dB; separating with the "
            + ("upscaled model" if keep else "working-rate model"))
    shutil.rmtree(work / "pools", ignore_errors=True)
    for resume_only in work.glob("*/last.pt"):
        resume_only.unlink()
    return result
