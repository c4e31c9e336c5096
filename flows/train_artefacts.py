"""Prefect flow ``train-artefacts``: the artefact model (patent 4.2, FIG. 9).

library → mix-bus mixtures → the general model's estimates of one stem → artefact pools
(truth, estimate − truth) → train a small clean/artefacts separator → copy its best
checkpoint to ``out`` and register it in MLflow as ``artefact-model``. Cached on content
and checkpointed inside, so a rerun resumes. Call ``tasks.state.use_state_dir`` before
importing this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow

from stemloop.config import load_config
from stemloop.names import MANIFEST
from stemloop.tasks.caching import file_digest
from stemloop.tasks.library import ensure_library
from stemloop.tasks.state import config_id, state_dir
from stemloop.tasks.tracking import Tracker, config_params
from stemloop.tasks.train_artefacts import train_artefact_model

SECTIONS = ("model", "train", "mixbus")  # what decides an artefact model

MODEL_NAME = "artefact-model"


@flow(name="train-artefacts", log_prints=False, persist_result=False)
def train_artefacts(out: str, general: str, target: str, config_path: str | None = None,
                    overrides: list[str] | None = None, library: str | None = None,
                    hours: float = 1.0, alias: str = "candidate") -> dict[str, Any]:
    """Train an artefact model of ``general``'s ``target`` stem into folder ``out``."""
    config = load_config(config_path, overrides or [])
    state = state_dir(config)
    library = ensure_library(library or config.mixbus.library_dir, str(state / "library"),
                             hours, config.mixbus.seed, config.mixbus.library)
    general_sha = file_digest(general)
    folder = state / "train-artefacts" / f"{config_id(config, SECTIONS)}-{general_sha[:8]}-{target}"
    tracker = Tracker(config, state)
    params = config_params(config, SECTIONS, general=general, general_sha256=general_sha,
                           target=target)
    with tracker.run(MODEL_NAME, params, {"stemloop.flow": "train-artefacts"}) as run_id:
        result = train_artefact_model(config, library, general, target, str(folder), run_id)
        Path(out).mkdir(parents=True, exist_ok=True)
        shipped = Path(out) / f"model-{result['rate']}.pt"
        shutil.copyfile(result["checkpoint"], shipped)
        manifest = file_digest(Path(library) / MANIFEST)
        tracker.params(run_id, {"data/manifest_sha256": manifest})
        tracker.metrics(run_id, {"val/best_si_sdr": result["val_si_sdr"],
                                 "val/best_si_sdri": result["val_si_sdri"] or 0.0}, 0)
        tracker.artifact(run_id, shipped, "model")
        version = tracker.register(run_id, "model", MODEL_NAME, alias,
                                   f"artefacts of {Path(general).name} ({target}); "
                                   f"manifest {manifest[:12]}")
    return {"out": str(shipped), **result, "library": library, "run_id": run_id,
            "registered_version": version, "manifest_sha256": manifest}
