"""Prefect task of the artefact-model flow: render the artefact pools, train, checkpoint.

Training checkpoints inside (``adapt.train`` resumes from ``last.pt``) and the pools are
cached on disk, so a killed flow rerun continues; a finished run is cached on the
content of its inputs (config, library manifest, general model, code) and skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext

import adapt.artefacts
import adapt.model
import adapt.train
import datasets.artefactset
from adapt.artefacts import identity_start, stem_estimator
from adapt.checkpoint import load_checkpoint, save_checkpoint
from adapt.config import CONFIG_DIR, Config
from adapt.model import build_model
from adapt.train import Run, train
from datasets.artefactset import ArtefactData
from tasks.caching import content_digest
from tasks.results import cached_task
from tasks.train import progress_logger

CODE = (adapt.artefacts, adapt.model, adapt.train, datasets.artefactset)


def _key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    config: Config = parameters["config"]
    if not config.orchestration.cache:
        return None
    files = [Path(parameters["library"]) / "manifest.parquet", Path(parameters["general"])]
    train_config = config.train.model_copy(update={"threads": 0, "workers": 1})
    settings = (config.model, train_config, config.mixbus, parameters["target"],
                str(parameters["folder"]))
    return f"{context.task.name}-{content_digest(files, (*CODE, context.task.fn), settings)}"


@cached_task(name="train-artefact-model", cache_key_fn=_key)
def train_artefact_model(config: Config, library: str, general: str, target: str, folder: str,
                         run_id: str | None) -> dict[str, Any]:
    """Artefact pools of ``general``'s ``target`` estimates, then train ``config.model`` on
    them; returns the best checkpoint's path and its validation figures."""
    t, rate = config.train, config.model.sample_rate
    # The CLI checked that the general model runs at model.sample_rate.
    data = ArtefactData(stem_estimator(load_checkpoint(general).model, target), rate,
                        CONFIG_DIR / config.mixbus.schema_path, library, target,
                        Path(folder) / "pools", t.pool_size, t.val_examples, t.pool_seconds,
                        t.segment_s, t.batch_size, t.seed, t.workers)
    batches, val = data(rate)
    model = identity_start(build_model(config.model))
    # keep_start: the (near-identity) start is validated first and stays the best unless
    # training beats it, so the result never makes the separator's estimates worse on
    # the validation pool.
    result = train(model, batches, val, t, Run(Path(folder) / "train"),
                   on_metrics=progress_logger(config, run_id, t.steps), keep_start=True)
    history = [row for row in result["history"] if "val/si_sdri" in row]
    best = max(history, key=lambda row: row["val/si_sdr"]) if history else {}
    path = save_checkpoint(Path(folder) / f"model-{rate}.pt", model,
                           {"step": result["step"], "val_si_sdr": result["best_si_sdr"],
                            "val_si_sdri": best.get("val/si_sdri"), "general": general,
                            "target": target})
    return {"checkpoint": str(path), "rate": rate, "steps": result["step"],
            "val_si_sdr": result["best_si_sdr"], "val_si_sdri": best.get("val/si_sdri"),
            "stopped": result["stopped"]}
