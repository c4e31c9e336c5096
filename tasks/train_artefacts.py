"""Prefect task of the artefact-model flow: render the artefact pools, train, checkpoint.

Training checkpoints inside (``adapt.train`` resumes from ``last.pt``) and the pools are
cached on disk, so a killed flow rerun continues; a finished run is cached on the
content of its inputs (config, library manifest, general model, code) and skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemloop import adapt, datasets
from stemloop.adapt.artefacts import identity_start, stem_estimator
from stemloop.adapt.checkpoint import load_checkpoint, save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.adapt.train import Run, train
from stemloop.config import CONFIG_DIR, Config, result_train
from stemloop.datasets.artefactset import ArtefactData
from stemloop.names import VAL_SI_SDR, VAL_SI_SDRI
from stemloop.tasks.caching import content_key
from stemloop.tasks.results import cached_task
from stemloop.tasks.train import progress_logger

CODE = (adapt.artefacts, adapt.model, adapt.train, datasets.artefactset)


def _inputs(parameters: dict[str, Any]):
    config: Config = parameters["config"]
    settings = (config.model, result_train(config), config.mixbus, parameters["target"],
                str(parameters["folder"]))
    return [Path(parameters["general"])], CODE, settings


@cached_task(name="train-artefact-model", cache_key_fn=content_key(_inputs))
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
    history = [row for row in result["history"] if VAL_SI_SDRI in row]
    best = max(history, key=lambda row: row[VAL_SI_SDR]) if history else {}
    path = save_checkpoint(Path(folder) / f"model-{rate}.pt", model,
                           {"step": result["step"], "val_si_sdr": result["best_si_sdr"],
                            "val_si_sdri": best.get(VAL_SI_SDRI), "general": general,
                            "target": target})
    return {"checkpoint": str(path), "rate": rate, "steps": result["step"],
            "val_si_sdr": result["best_si_sdr"], "val_si_sdri": best.get(VAL_SI_SDRI),
            "stopped": result["stopped"]}
