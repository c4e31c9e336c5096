"""Prefect flow ``train-general``: the general dialogue model (patent 2.1–2.2, 3.1).

library → mix-bus dataset (dialogue vs music + noise, archival degradations) →
train at ``model.sample_rate`` → climb ``upscale.ladder`` (transplant, new layers
frozen-then-unfrozen) → copy the checkpoints to ``out`` and register the top
rung in MLflow as ``general-dialogue`` with an alias. Every stage checkpoints and
is cached on content, so a rerun resumes. Call ``tasks.state.use_state_dir``
before importing this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow

from stemloop.config import Config, load_config
from stemloop.names import MANIFEST
from stemloop.tasks.caching import file_digest
from stemloop.tasks.library import ensure_library
from stemloop.tasks.state import config_id, state_dir
from stemloop.tasks.tracking import Tracker, config_params
from stemloop.tasks.train import train_low_rate, upscale_rung

SECTIONS = ("model", "train", "upscale", "mixbus")  # what decides a general model


def model_name(config) -> str:
    """The registered model's name: general-<targets> (general-dialogue, general-music...)."""
    return "general-" + "-".join(config.model.targets)


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
    folder = state / "train-general" / (config_id(config, SECTIONS) if not init else
                                         f"{config_id(config, SECTIONS)}-{file_digest(init)[:8]}")
    tracker = Tracker(config, state)
    name = model_name(config)
    with tracker.run(name, config_params(config, SECTIONS, init=init),
                     {"stemloop.flow": "train-general"}) as run_id:
        rungs = [train_low_rate(config, library, str(folder), run_id, init)]
        for rate in config.upscale.ladder:  # a Spleeter model's own rate: its band head
            if rate > rungs[-1]["rate"] or (rate == rungs[-1]["rate"] and widens(config, init)):
                rungs.append(upscale_rung(config, library, str(folder), rungs[-1]["checkpoint"],
                                          rate, run_id))
        shipped = _ship(rungs, Path(out))
        manifest = file_digest(Path(library) / MANIFEST)
        tracker.params(run_id, {"data/manifest_sha256": manifest})
        for rung in rungs:
            tracker.metrics(run_id, {f"val/si_sdr_{rung['rate']}": rung["val_si_sdr"]
                                     if "val_si_sdr" in rung else rung["final_si_sdr"]}, 0)
        for path in shipped:
            tracker.artifact(run_id, path, "model")
        version = tracker.register(run_id, "model", name, alias,
                                   f"rates {[r['rate'] for r in rungs]}; manifest {manifest[:12]}")
    return {"out": out, "rungs": rungs, "library": library, "run_id": run_id,
            "registered_version": version, "manifest_sha256": manifest}


def widens(config: Config, init: str | None) -> bool:
    """Whether train-general's start is a Spleeter-family model without a band head: then
    ``upscale.ladder`` naming its own rate (44100) adds the head (``adapt.pretrained.widen``)."""
    from stemloop.adapt.pretrained import SpleeterSeparator, bandwidth
    from stemloop.tasks.train import start_model

    model = start_model(config, init) if init else None
    return isinstance(model, SpleeterSeparator) and bandwidth(model) < model.sample_rate / 2


def _ship(rungs: list[dict[str, Any]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shipped = []
    for rung in rungs:
        target = out / f"model-{rung['rate']}.pt"
        shutil.copyfile(rung["checkpoint"], target)
        shipped.append(target)
    return shipped


@flow(name="upscale", log_prints=False, persist_result=False)
def upscale_model(model: str, rate: int, out: str, config_path: str | None = None,
                  overrides: list[str] | None = None, library: str | None = None,
                  hours: float = 1.0) -> dict[str, Any]:
    """Transplant checkpoint ``model`` to ``rate`` and train the two stages into ``out``."""
    config = load_config(config_path, overrides or [])
    state = state_dir(config)
    library = ensure_library(library or config.mixbus.library_dir, str(state / "library"),
                             hours, config.mixbus.seed, config.mixbus.library)
    folder = state / "upscale" / f"{file_digest(model)[:12]}-{config_id(config, SECTIONS)}"
    tracker = Tracker(config, state)
    with tracker.run(f"upscale-{rate}", config_params(config, SECTIONS, model=model,
                                                      rate=rate)) as run_id:
        rung = upscale_rung(config, library, str(folder), model, rate, run_id)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rung["checkpoint"], out)
    return {**rung, "out": out}
