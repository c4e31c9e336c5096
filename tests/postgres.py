"""A private PostgreSQL server for tests: Debian's binaries, a fresh cluster in a temporary
folder, listening on 127.0.0.1 at a free port, trust authentication, stopped and removed
at the end. Run as the ``postgres`` user when the tests run as root (PostgreSQL refuses
root). Skips the test, with the reason, where the binaries are missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres(*databases: str) -> Iterator[str]:
    """Yield ``postgresql://postgres@127.0.0.1:PORT`` with ``databases`` created."""
    binaries = _bin()
    if binaries is None:
        pytest.skip("PostgreSQL's binaries are not installed (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="stemloop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]}: {done.stdout}{done.stderr}"

    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
        "--no-sync")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
              "-c max_connections=200", "start")
    try:
        for name in databases:
            run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                "postgres", name)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
