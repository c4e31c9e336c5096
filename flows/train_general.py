"""Prefect flow ``train-general``: the general dialogue model (patent 2.1–2.2, 3.1).

library → mix-bus dataset (dialogue vs music + noise, archival degradations) →
train at ``model.sample_rate`` → climb ``upscale.ladder`` (transplant, new layers
frozen-then-unfrozen) → copy the checkpoints to ``out`` and register the top
rung in MLflow as ``general-dialogue`` with an alias. Every stage checkpoints and
is cached on content, so a rerun resumes. Call ``flows.state.use_state_dir``
before importing this module.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from prefect import flow

from adapt.config import CONFIG_DIR, Config, load_config
from flows.state import state_dir
from flows.tracking import Tracker
from tasks.caching import file_digest
from tasks.library import ensure_library
from tasks.train import train_low_rate, upscale_rung

MODEL_NAME = "general-dialogue"


@flow(name="train-general", log_prints=False, persist_result=False)
def train_general(out: str, config_path: str | None = None, overrides: list[str] | None = None,
                  library: str | None = None, hours: float = 1.0, alias: str = "candidate",
                  init: str | None = None) -> dict[str, Any]:
    """Train the general model into folder ``out`` (from scratch, or continuing from
    checkpoint ``init`` with a new schedule); returns what ran and its figures."""
    config = load_config(config_path, overrides or [])
    state = state_dir(config)
    library = ensure_library(library or config.mixbus.library_dir, str(state / "library"),
                             hours, config.mixbus.seed, config.mixbus.library)
    folder = state / "train-general" / (_config_id(config) if not init
                                         else f"{_config_id(config)}-{file_digest(init)[:8]}")
    tracker = Tracker(config, state)
    run_id = tracker.start(MODEL_NAME, {**_params(config), "init": init},
                           {"stemloop.flow": "train-general"})
    try:
        rungs = [train_low_rate(config, library, str(folder), run_id, init)]
        for rate in config.upscale.ladder:
            if rate > rungs[-1]["rate"]:
                rungs.append(upscale_rung(config, library, str(folder), rungs[-1]["checkpoint"],
                                          rate, run_id))
        shipped = _ship(rungs, Path(out))
        manifest = file_digest(Path(library) / "manifest.parquet")
        tracker.params(run_id, {"data/manifest_sha256": manifest})
        for rung in rungs:
            tracker.metrics(run_id, {f"val/si_sdr_{rung['rate']}": rung["val_si_sdr"]
                                     if "val_si_sdr" in rung else rung["final_si_sdr"]}, 0)
        for path in shipped:
            tracker.artifact(run_id, path, "model")
        version = tracker.register(run_id, "model", MODEL_NAME, alias,
                                   f"rates {[r['rate'] for r in rungs]}; manifest {manifest[:12]}")
    except BaseException:
        tracker.end(run_id, "FAILED")
        raise
    tracker.end(run_id)
    return {"out": out, "rungs": rungs, "library": library, "run_id": run_id,
            "registered_version": version, "manifest_sha256": manifest}


def _ship(rungs: list[dict[str, Any]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shipped = []
    for rung in rungs:
        target = out / f"model-{rung['rate']}.pt"
        shutil.copyfile(rung["checkpoint"], target)
        shipped.append(target)
    return shipped


def _config_id(config: Config) -> str:
    """What decides the result: not thread or worker counts, so those can change on resume."""
    train = config.train.model_copy(update={"threads": 0, "workers": 1})
    relevant = (config.model, train, config.upscale, config.mixbus)
    schema = (CONFIG_DIR / config.mixbus.schema_path).read_bytes()
    return hashlib.sha256(repr(relevant).encode() + schema).hexdigest()[:12]


def _params(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in ("model", "train", "upscale", "mixbus"):
        for key, value in getattr(config, section).model_dump(mode="json").items():
            flat[f"{section}.{key}"] = value
    return flat


@flow(name="upscale", log_prints=False, persist_result=False)
def upscale_model(model: str, rate: int, out: str, config_path: str | None = None,
                  overrides: list[str] | None = None, library: str | None = None,
                  hours: float = 1.0) -> dict[str, Any]:
    """Transplant checkpoint ``model`` to ``rate`` and train the two stages into ``out``."""
    config = load_config(config_path, overrides or [])
    state = state_dir(config)
    library = ensure_library(library or config.mixbus.library_dir, str(state / "library"),
                             hours, config.mixbus.seed, config.mixbus.library)
    folder = state / "upscale" / f"{file_digest(model)[:12]}-{_config_id(config)}"
    tracker = Tracker(config, state)
    run_id = tracker.start(f"upscale-{rate}", {"model": model, "rate": rate,
                                               **_params(config)})
    rung = upscale_rung(config, library, str(folder), model, rate, run_id)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rung["checkpoint"], out)
    tracker.end(run_id)
    return {**rung, "out": out}
