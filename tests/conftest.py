"""Shared fixtures: real audio files written to a temp dir, and an isolated state dir."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """(time, channels) float32 sine, the layout soundfile writes."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = amplitude * np.sin(2 * math.pi * freq * t)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


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
