"""Shared fixtures: real audio files written to a temp dir, and an isolated state dir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.signals import sine  # noqa: F401  (re-exported for tests)

# Before anything imports Prefect: a fresh ephemeral API otherwise logs "database is locked".
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@pytest.fixture
def write_wav(tmp_path: Path):
    """Write (time, channels) audio to tmp_path/name and return the path."""

    def _write(name: str, data: np.ndarray, rate: int = 16000, subtype: str = "FLOAT",
               fmt: str | None = None) -> Path:
        path = tmp_path / name
        sf.write(path, data, rate, subtype=subtype, format=fmt)
        return path

    return _write


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test gets its own STEMLOOP_HOME so nothing leaks into ./.stemloop."""
    monkeypatch.setenv("STEMLOOP_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real labelled library, as small as it gets (a few seconds of each class)."""
    from stemloop.flows.cli.main import main

    out = tmp_path_factory.mktemp("library")
    code = main(["library", "build", "--out", str(out), "--hours", "0.002", "--seed", "3",
                 "--set", "mixbus.library.composers=[bach]",
                 "--set", "mixbus.library.piece_max_s=6",
                 "--set", "mixbus.library.speech_clip_s=4"])
    assert code == 0
    return out


@pytest.fixture
def small_disk(tmp_path: Path):
    """``small_disk(size)``: a real file system that size (a tmpfs), unmounted afterwards;
    skips the test, with the reason, where mounting is not allowed."""
    mounted: list[Path] = []

    def _mount(size: str) -> Path:
        disk = tmp_path / f"disk-{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield _mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=False)
