"""The Prefect API a command talks to: a temporary one of its own, or `stemloop server`'s.

A command starts a temporary Prefect API (``start_prefect``) unless ``PREFECT_API_URL`` is
set; ``state.use_state_dir`` sets it from the record ``serve_prefect`` writes while a
`stemloop server` runs, so one-shot commands skip ~5 s of starting an API. Also here: the
check of Prefect's database before a start, the watchdog that stops a killed command's
server, and the filter that keeps a person's mistake to one line in Prefect's logs.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from stemloop.errors import UserError
from stemloop.files import write_json

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
