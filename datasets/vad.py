"""Where nobody speaks: the recording's own background, found without the separator.

The loop's background material used to be the crude complement where the crude dialogue
was quiet. That misses exactly what the general model gets wrong: music it keeps in the
dialogue stem is neither in the complement nor "quiet" in the dialogue, so fine-tuning
never hears it as background (dev set drama-nl-22k: 81 % of the music, by least squares,
in v4's dialogue; 2.2 s of culled background in 45 s). A voice activity detector trained
for speech against music and noise (Silero VAD, MIT, its weights inside its wheel) judges
the recording itself, and the *recording* in its speech-free stretches is background with
all of its music, noise and room in it.

A stretch counts when the detector's speech probability, on the recording and on the crude
dialogue, stays below ``threshold`` for the whole stretch widened by ``margin_s`` on each
side (onsets, reverberant tails) and lasts at least ``min_s``. On the development set's
twelve mixtures (threshold 0.1, margin 0.2 s, v4's crude dialogue) this finds 0.5–8.4 s per
mixture with the true dialogue 14–75 dB below the recording there (mostly reverberant
tails; bench/RESULTS.md, bench/speech_free.py).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch

from stemloop.datasets.audio import resample
from stemloop.datasets.cull import Segment, _mean_db, active_runs, moving_rms_db

VAD_RATE = 16000
FRAME = 512  # Silero's frame at 16 kHz: 32 ms
_lock = threading.Lock()  # the scripted model keeps its recurrent state between calls


@lru_cache(maxsize=1)
def _model() -> torch.nn.Module:
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=False)


def speech_probability(audio: torch.Tensor, rate: int) -> np.ndarray:
    """Silero's speech probability per 32 ms frame of ``(channels, time)`` audio
    (channels averaged)."""
    mono = resample(audio.detach().float().mean(dim=0, keepdim=True), rate, VAD_RATE)
    peak = float(mono.abs().max())
    if peak == 0.0 or mono.shape[-1] < FRAME:
        return np.zeros(mono.shape[-1] // FRAME)
    with _lock, torch.inference_mode():
        return _model().audio_forward(mono / peak, VAD_RATE)[0].numpy()


def speech_free(audio: torch.Tensor, rate: int, threshold: float, margin_s: float,
                min_s: float, also: torch.Tensor | None = None) -> list[Segment]:
    """Stretches of ``audio`` (samples at ``rate``) where nobody speaks, with their level in
    dB re the loudest 50 ms of the recording. With ``also`` (the crude dialogue stem), the
    detector must hear no speech in that either: loud music can mask a voice from it in the
    recording (dev set drama-nl-44k: 19 s "speech-free" with the voice at -0.7 dB re the
    recording there; also requiring the crude dialogue to be speech-free: 9.6 s at -17.5 dB)."""
    probability = speech_probability(audio, rate)
    if also is not None:
        other = speech_probability(also, rate)
        n = min(len(probability), len(other))
        probability = np.maximum(probability[:n], other[:n])
    quiet = probability < threshold
    margin = int(round(margin_s * VAD_RATE / FRAME))
    if margin:  # erode: a frame counts only when every frame within the margin is quiet
        padded = np.concatenate([np.zeros(margin, bool), quiet, np.zeros(margin, bool)])
        window = np.lib.stride_tricks.sliding_window_view(padded, 2 * margin + 1)
        quiet = window.all(axis=1)
    scale = rate * FRAME / VAD_RATE  # samples per frame
    runs = active_runs(quiet, 0, max(1, int(np.ceil(min_s * VAD_RATE / FRAME))))
    hop = 0.025 * rate
    levels = moving_rms_db(audio, rate, 0.05, 0.025)
    found = []
    for first, last in runs:
        start = int(round(first * scale))
        stop = min(audio.shape[-1], int(round((last + 1) * scale)))
        found.append(Segment(start, stop, _mean_db(levels[int(start / hop): int(stop / hop) + 1])))
    return found
