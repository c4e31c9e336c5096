"""One writer per run folder: a second run is refused in one line; a dead holder frees it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stemloop.errors import UserError
from stemloop.tasks.state import check_run_free, run_lock

ROOT = Path(__file__).resolve().parent.parent


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path: Path):
    run = tmp_path / "runs" / "take-1234abcd" / "run-1"
    check_run_free(run)
    assert not run.exists()  # checking creates nothing
    with run_lock(run):
        with pytest.raises(UserError, match=rf"this run is in progress \(pid {os.getpid()} on "):
            with run_lock(run):
                pass
        with pytest.raises(UserError, match="--run NAME"):
            check_run_free(run)
    with run_lock(run):  # released on exit
        pass
    check_run_free(run)


def test_a_killed_holder_never_blocks_its_retry(tmp_path: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from stemloop.tasks.state import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
         str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            check_run_free(run)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        deadline = time.monotonic() + 10
        while True:
            try:
                check_run_free(run)
                break
            except UserError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        holder.kill()


def prefect_servers(state: Path) -> list[int]:
    """PIDs of Prefect API servers whose home is ``state/prefect``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"uvicorn" in cmdline and b"prefect.server.api.server" in cmdline
                and f"PREFECT_HOME={state / 'prefect'}".encode() in environ):
            found.append(int(proc.name))
    return found


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


HOLDER = """
import sys, time
from pathlib import Path
from stemloop.flows.cli.main import _exit_on_sigterm
from stemloop.tasks.server import start_prefect
from stemloop.tasks.state import use_state_dir

try:
    _exit_on_sigterm()
    start_prefect(use_state_dir(Path(sys.argv[1])))
    print("up", flush=True)
    time.sleep(600)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_prefect_server_outlives_its_command(tmp_path: Path, sig):
    """SIGTERM unwinds like Ctrl-C and Prefect stops its server; after SIGKILL the watchdog
    does (before, each killed command left a ~200 MB server running with parent 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STEMLOOP_"))}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        assert len(prefect_servers(tmp_path)) == 1
        holder.send_signal(sig)
        assert holder.wait(30) == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert wait_until(lambda: not prefect_servers(tmp_path), 20), prefect_servers(tmp_path)
    finally:
        holder.kill()
        for pid in prefect_servers(tmp_path):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["half-migrated", "not-a-database"])
def test_a_damaged_prefect_database_is_moved_aside_and_a_fresh_one_made(tmp_path: Path, damage):
    """A first start cut short (a full disk) used to leave every later start timing out."""
    import sqlite3

    db = tmp_path / "prefect" / "prefect.db"
    db.parent.mkdir(parents=True)
    if damage == "half-migrated":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            con.execute("INSERT INTO alembic_version VALUES ('9725c1cbee35')")
            con.execute("CREATE TABLE flow (id CHAR(36))")
    else:
        db.write_bytes(b"\0" * 4096)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STEMLOOP_"))}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(60) == 130
        said = holder.stderr.read()  # Prefect's own start/stop lines besides
        warning = [line for line in said.splitlines() if line.startswith("stemloop:")]
        assert len(warning) == 1 and "moved to prefect.db.damaged-" in warning[0], said
        [aside] = db.parent.glob("prefect.db.damaged-*")
        assert aside.stat().st_size > 0 and db.is_file()
        with sqlite3.connect(db) as con:  # the fresh one is fully migrated
            from stemloop.tasks.server import prefect_head_revision

            assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [
                (prefect_head_revision(),)]
    finally:
        holder.kill()


def test_a_full_or_read_only_state_folder_is_one_line(tmp_path: Path):
    from stemloop.flows.cli.main import storage_problem
    from stemloop.tasks.state import check_state_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: use a read-only path instead
            locked = Path("/proc/stemloop-state")
        with pytest.raises(UserError, match="not writable.*STEMLOOP_HOME"):
            check_state_dir(locked / "state")
    finally:
        (tmp_path / "locked").chmod(0o700)
    import errno

    line = storage_problem(OSError(errno.ENOSPC, "No space left on device", "/x/pool.pt"))
    assert line.startswith("/x/pool.pt: no space left;") and "rerun" in line
    assert storage_problem(OSError(errno.ENOENT, "gone")) is None
    import sqlite3

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full") from inner
    except RuntimeError as wrapped:
        assert "database or disk full; free space" in storage_problem(wrapped)
    assert storage_problem(ValueError("a bug")) is None


@pytest.mark.slow
def test_separate_on_a_nearly_full_state_disk_is_one_line_and_writes_nothing(tmp_path: Path,
                                                                            small_disk):
    """A real small file system (tmpfs) as STEMLOOP_HOME: refused before Prefect starts."""
    import numpy as np
    import soundfile as sf

    disk = small_disk("4m")
    source = tmp_path / "take.wav"
    sf.write(source, np.zeros((16000, 1), np.float32) + 0.01, 16000)
    env = {**os.environ, "STEMLOOP_HOME": str(disk / "state")}
    r = subprocess.run([sys.executable, "-m", "stemloop.flows.cli", "separate", str(source),
                        "--model", "spleeter", "--out", str(tmp_path / "stems"),
                        "--config", "smoke"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "MB free" in lines[0] and "STEMLOOP_HOME" in lines[0], lines
    assert not (tmp_path / "stems").exists()


def test_prefect_console_logs_drop_user_error_tracebacks():
    """A person's mistake inside a flow is one line from the CLI, not Prefect's traceback."""
    import io
    import logging

    import prefect.main  # noqa: F401  (Prefect's logging set-up, which disables older loggers)

    from stemloop.tasks.server import quiet_user_errors

    stream = io.StringIO()
    logger = logging.getLogger("prefect.stemloop-test")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        quiet_user_errors()
        for exc in (UserError("take.wav: holds NaN"), ValueError("a bug")):
            try:
                try:
                    raise exc
                except Exception as inner:
                    raise RuntimeError("wrapped") from inner
            except RuntimeError:
                logger.exception("Encountered exception during execution")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("Encountered exception") == 1 and "ValueError: a bug" in text
    assert "NaN" not in text


def test_an_interrupted_batch_does_not_wait_for_its_threads(tmp_path: Path):
    """adapt-batch runs recordings in threads; after SIGTERM the command ends at once, its
    exit handlers run (Prefect's server stop among them) instead of waiting for them."""
    script = f"""
import atexit, sys, threading, time
from pathlib import Path
from stemloop.flows.cli.main import exit_now_if_threads_linger
atexit.register(lambda: Path({str(tmp_path / "handlers-ran")!r}).touch())
threading.Thread(target=time.sleep, args=(600,)).start()
exit_now_if_threads_linger(130)
"""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert done.returncode == 130 and time.monotonic() - began < 30
    assert (tmp_path / "handlers-ran").exists()


def test_a_database_from_an_older_prefect_that_started_is_left_to_migrate(tmp_path: Path):
    """Only a database no start completed at is moved aside; one an older Prefect started
    (the marker start_prefect writes) is Prefect's to migrate."""
    import sqlite3

    from stemloop.tasks.server import _marker, check_prefect_db

    db = tmp_path / "prefect.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("INSERT INTO alembic_version VALUES ('9725c1cbee35')")
    _marker(db).write_text("9725c1cbee35")
    assert check_prefect_db(db) is None and db.is_file()
    _marker(db).write_text("some-other-revision")
    assert "moved to prefect.db.damaged-" in check_prefect_db(db) and not db.exists()


FINDER = """
import os, sys
from pathlib import Path
from stemloop.tasks.server import start_prefect
from stemloop.tasks.state import use_state_dir

start_prefect(use_state_dir(Path(sys.argv[1])))
print(os.environ.get("PREFECT_API_URL"), flush=True)
"""


@pytest.mark.slow
def test_commands_use_a_running_stemloop_server_instead_of_starting_their_own(
        tmp_path: Path, write_wav, monkeypatch):
    """`stemloop server` serves the state folder's API; a command there starts none of its
    own and runs its flow through it; a second server is refused; Ctrl-C stops it and
    forgets it, and a record left by a killed server is ignored."""
    import re

    import numpy as np

    from stemloop.tasks.server import running_server

    monkeypatch.delenv("PREFECT_HOME", raising=False)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STEMLOOP_"))}
    env["STEMLOOP_HOME"] = str(state)
    cli = [sys.executable, "-m", "stemloop.flows.cli"]
    log = (tmp_path / "server.log").open("w")  # not a pipe: its logs must never block it
    server = subprocess.Popen([*cli, "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=log, text=True)
    try:
        first = server.stdout.readline()
        url = re.search(r" at (http://127\.0\.0\.1:\d+/api)$", first.strip()).group(1)
        assert "Ctrl-C stops it" in server.stdout.readline()
        assert len(servers := prefect_servers(state)) == 1
        assert running_server(state) == url

        found = subprocess.run([sys.executable, "-c", FINDER, str(state)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        assert found.returncode == 0, found.stderr
        assert found.stdout.strip() == url and prefect_servers(state) == servers

        noise = np.random.default_rng(0).standard_normal((32000, 1)).astype("float32") * 0.1
        take = write_wav("take.wav", noise)
        done = subprocess.run([*cli, "separate", str(take), "--out", str(tmp_path / "stems")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "stems" / "separation.json").is_file()

        again = subprocess.run([*cli, "server"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 2
        assert again.stderr.strip() == (f"stemloop: error: a stemloop server already serves "
                                        f"{state} at {url}")
        server.send_signal(signal.SIGINT)
        assert server.wait(60) == 0, (tmp_path / "server.log").read_text()[-2000:]
        assert not (state / "prefect" / "server.json").exists()
        assert wait_until(lambda: not prefect_servers(state), 20)
    finally:
        server.kill()
        log.close()
        for pid in prefect_servers(state):
            os.kill(pid, signal.SIGKILL)

    record = {"url": url, "pid": server.pid, "home": str(state / "prefect")}
    (state / "prefect" / "server.json").write_text(json.dumps(record))  # a SIGKILLed server
    assert running_server(state) is None
