"""Shared fixtures: real audio files written to a temp dir, and an isolated state dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.signals import sine  # noqa: F401  (re-exported for tests)


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
