"""Pictures restorers would rather look at than read: spectrograms and iteration curves.

Pure functions from tensors / numbers to PNG files (matplotlib's Agg backend; no
display needed).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from stemloop.files import atomic_path

MAX_SECONDS = 60.0  # spectrograms show the first minute: enough to judge, small to store


def _log_spectrogram(audio: torch.Tensor, rate: int) -> tuple[np.ndarray, float]:
    x = audio.detach().float().mean(dim=0)[: int(MAX_SECONDS * rate)]
    n_fft = 2 ** round(math.log2(0.032 * rate))
    spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-8)
    return db.numpy(), x.shape[-1] / rate


def spectrogram_png(audio: torch.Tensor, rate: int, path: Path, title: str) -> Path:
    """One stem's log-magnitude spectrogram (dBFS, 80 dB range)."""
    db, seconds = _log_spectrogram(audio, rate)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    bar = fig.colorbar(_draw(ax, db, seconds, rate, title), ax=ax, pad=0.01)
    bar.set_label("dBFS", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def _draw(ax, db: np.ndarray, seconds: float, rate: int, title: str):
    top = float(db.max()) if db.size else 0.0
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                      extent=(0, seconds, 0, rate / 2000))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("s", fontsize=8)
    ax.set_ylabel("kHz", fontsize=8)
    ax.tick_params(labelsize=7)
    return image


def iterations_png(stems: list[dict[str, torch.Tensor]], rate: int, labels: list[str],
                   path: Path) -> Path:
    """Every iteration's stems side by side (rows: iterations, columns: stems; patent 4.4)."""
    names = list(stems[0])
    fig, axes = plt.subplots(len(stems), len(names), squeeze=False, dpi=90,
                             figsize=(4.5 * len(names), 2.2 * len(stems)))
    for row, (iteration, label) in enumerate(zip(stems, labels, strict=True)):
        for col, name in enumerate(names):
            db, seconds = _log_spectrogram(iteration[name], rate)
            _draw(axes[row][col], db, seconds, rate, f"{label}: {name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def curves_png(history: list[dict[str, float]], keys: list[str], best: int, path: Path,
               title: str) -> Path:
    """Metric curves across iterations, the delivered (best) iteration marked."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    steps = list(range(len(history)))
    for key in keys:
        values = [row.get(key, float("nan")) for row in history]
        if any(v == v for v in values):
            ax.plot(steps, values, marker="o", label=key)
    ax.axvline(best, color="grey", linestyle="--", label=f"delivered: iteration {best}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("dB (dB-like for the estimate)")
    ax.set_xticks(steps)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
