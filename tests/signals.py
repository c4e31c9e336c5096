"""Deterministic test signals with known properties."""

from __future__ import annotations

import math

import numpy as np


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """(time, channels) float32 sine, the layout soundfile writes."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = amplitude * np.sin(2 * math.pi * freq * t)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def speechlike(rate: int, seconds: float, seed: int, peak: float = 0.3) -> np.ndarray:
    """Voiced-speech stand-in: a glottal-pulse-like harmonic series with a gliding pitch
    (90-185 Hz), syllable-rate envelope and true pauses (exact zeros). float64 (time,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 130 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 15 * np.sin(
        2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = min(30, int(0.45 * rate / 185))
    x = sum(np.sin(k * phase) / k**2 for k in range(1, harmonics + 1))  # -12 dB/octave source
    envelope = np.clip(np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)) + 0.3, 0, None) ** 1.5
    x = x * envelope
    return peak * x / np.abs(x).max()


def toy_batch(seed: int, batch: int, rate: int, seconds: float):
    """A deterministic separation batch: harmonic 'voice' over low-passed noise.

    Returns ``mixture (batch, 1, time)`` and ``sources (batch, 2, 1, time)`` (target,
    complement) as float32 tensors; the same ``seed`` always gives the same batch.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    frames = int(rate * seconds)
    t = torch.arange(frames) / rate
    f0 = 150 + 100 * torch.rand(batch, 1, generator=gen)
    voice = sum(torch.sin(2 * math.pi * k * f0 * t + k) / k for k in range(1, 6))
    gate = (torch.sin(2 * math.pi * 3 * t + 6 * torch.rand(batch, 1, generator=gen)) > -0.3)
    voice = 0.3 * voice * gate
    noise = torch.randn(batch, frames, generator=gen)
    noise = torch.nn.functional.avg_pool1d(noise[:, None], 5, 1, 2)[:, 0] * 0.3
    sources = torch.stack([voice, noise], dim=1)[:, :, None].float()
    return sources.sum(dim=1), sources
