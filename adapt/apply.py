"""Chunked, streamed inference: any length of audio, memory bounded by one chunk.

``overlap_add`` is the whole algorithm: chunks of ``chunk`` samples every
``hop`` samples, each weighted by a Hann window (floored, so it never divides
by zero), summed, and divided by the summed weights. Chunk reads are clipped to
the file, so the first and last chunks see the file's real edges exactly as a
one-pass run does; a chunk's low-weight edges are covered by its neighbours'
high-weight middles, so every emitted sample comes mostly from a chunk that
saw context on both sides. When the chunk grid is aligned to the model's
``alignment`` (encoder stride × core hop), chunked output matches one-pass
output up to the model's dependence on audio more than a chunk away.

Sample rates: a model runs at its own rate. Audio at another rate is resampled
to the model's rate chunk by chunk and the targets are resampled back; the
complement is then recomputed at the input rate as mixture minus targets, so
whatever the model could not see (e.g. above its Nyquist) lands in the
complement. Output is always at the input's rate, length and channel count.

Sum to mixture: each step's complement is the mixture minus its targets, and
the float rounding left over after overlap-add is spread equally over the
stems, so the written stems sum to the input to float precision.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from stemloop.adapt.interface import SeparatorModel
from stemloop.datasets.audio import AudioInfo, open_writer, probe, read_range, resample

ChunkFn = Callable[[torch.Tensor], torch.Tensor]  # (channels, t) -> (sources, channels, t)
Emit = Callable[[torch.Tensor, torch.Tensor], None]  # stems (S, C, n), mixture (C, n)
Progress = Callable[[int, int], None]  # (frames done, frames total)


class ModelStep:
    """One model as a chunk function at ``rate``: ``(channels, t)`` → ``(sources, channels, t)``."""

    def __init__(self, model: SeparatorModel, rate: int, strength: float = 1.0):
        self.model, self.rate, self.strength = model, rate, strength
        self.names = model.sources

    @property
    def alignment(self) -> int:
        return self.model.alignment if self.rate == self.model.sample_rate else 1

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        channels, time = audio.shape
        if self.rate == self.model.sample_rate:
            return self.model(audio[None], self.strength)[0]
        inner = resample(audio, self.rate, self.model.sample_rate)
        targets = self.model(inner[None], self.strength)[0, :-1]
        targets = _fit(resample(targets, self.model.sample_rate, self.rate), time)
        return torch.cat([targets, (audio - targets.sum(0))[None]])


class AtRate(torch.nn.Module):
    """``model`` run on ``(batch, channels, time)`` audio at ``rate`` as the separation
    engine runs it: resampled to the model's rate, targets resampled back, the last
    source the remainder (so the sources still sum to the input)."""

    def __init__(self, model: SeparatorModel, rate: int):
        super().__init__()
        self.model, self.step = model, ModelStep(model, rate)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.step(example) for example in mixture])


def overlap_add(fn: ChunkFn, read: Callable[[int, int], torch.Tensor], frames: int, chunk: int,
                hop: int, emit: Emit) -> None:
    """Stream ``frames`` samples through ``fn`` in windowed chunks; ``emit`` gets them in order.

    ``read(lo, hi)`` returns ``(channels, hi - lo)``; ``emit`` is called with
    consecutive blocks ``(sources, channels, n)`` covering ``[0, frames)``, plus
    the matching mixture block.
    """
    window = torch.hann_window(chunk, periodic=True, dtype=torch.float64).clamp_min(1e-3)
    acc = weight = None
    for start in range(hop - chunk, frames, hop):
        lo, hi = max(start, 0), min(start + chunk, frames)
        mixture = read(lo, hi)
        w = window[lo - start:hi - start]
        out = fn(mixture).double()
        if acc is None:
            acc = torch.zeros(*out.shape[:2], chunk, dtype=torch.float64)
            weight = torch.zeros(chunk, dtype=torch.float64)
        acc[..., lo - start:hi - start] += out * w
        weight[lo - start:hi - start] += w
        a, b = lo - start, min(hop, frames - start)  # complete once this chunk is in
        if b > a:
            emit((acc[..., a:b] / weight[a:b]).float(), mixture[:, :b - a])
        acc = torch.roll(acc, -hop, dims=-1)
        weight = torch.roll(weight, -hop)
        acc[..., -hop:] = 0.0
        weight[-hop:] = 0.0


def exact_sum(stems: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Spread ``mixture - stems.sum(0)`` equally over the stems. ``(S, C, n)`` → same."""
    residual = mixture.double() - stems.double().sum(0)
    return (stems.double() + residual / stems.shape[0]).float()


# integer subtypes' bits (their sample grid is k / 2^(bits-1))
_GRID_BITS = {"PCM_16": 16, "PCM_24": 24}


def output_settings(fmt: str, subtype: str, info: AudioInfo) -> tuple[str, str]:
    """The stems' file format (``wav``/``flac``) and sample type for a recording: ``auto``
    follows it (FLAC stays FLAC, anything else becomes WAV; 16 and 24 bits stay, anything
    else is written as 32-bit float); FLAC stores integers only, so float becomes 24-bit."""
    if fmt == "auto":
        fmt = "flac" if info.format == "FLAC" else "wav"
    if subtype == "auto":
        subtype = info.subtype if info.subtype in _GRID_BITS else "FLOAT"
    if fmt == "flac" and subtype == "FLOAT":
        subtype = "PCM_24"
    return fmt, subtype


def on_grid(stems: torch.Tensor, mixture: torch.Tensor, subtype: str) -> torch.Tensor:
    """Stems ``(S, C, n)`` on an integer output's sample grid, the last (the complement)
    taking what the others' rounding left: written at 16 or 24 bits they still sum exactly
    to a mixture on that grid (a recording of that depth or less). Float64; float outputs
    come back as they are."""
    bits = _GRID_BITS.get(subtype)
    if bits is None:
        return stems
    scale = float(2 ** (bits - 1))
    top = (scale - 1) / scale
    others = torch.clamp(torch.round(stems[:-1].double() * scale) / scale, -1.0, top)
    rest = torch.clamp(mixture.double() - others.sum(0), -1.0, top)
    return torch.cat([others, rest[None]])


def chunk_grid(seconds: float, overlap: float, rate: int, alignment: int) -> tuple[int, int]:
    """``(chunk, hop)`` in samples, both multiples of ``alignment``."""
    chunk = max(1, math.ceil(seconds * rate / alignment)) * alignment
    hop = max(1, round(chunk * (1.0 - overlap) / alignment)) * alignment
    return chunk, min(hop, chunk)


def separate_tensor(fn: ChunkFn, audio: torch.Tensor, chunk: int, hop: int) -> torch.Tensor:
    """In-memory chunked separation of ``(channels, time)`` → ``(sources, channels, time)``."""
    blocks: list[torch.Tensor] = []
    with torch.inference_mode():
        overlap_add(fn, lambda lo, hi: audio[:, lo:hi], audio.shape[-1], chunk, hop,
                    lambda stems, mix: blocks.append(exact_sum(stems, mix)))
    return torch.cat(blocks, dim=-1)


def stem_paths(names: Sequence[str], out_dir: str | Path, suffix: str) -> dict[str, Path]:
    """Where each stem is written: stem ``a/b`` as ``out_dir/a.b<suffix>``."""
    return {name: Path(out_dir) / f"{name.replace('/', '.')}{suffix}" for name in names}


def separate_file(fn: ChunkFn, names: Sequence[str], source: str | Path, out_dir: str | Path,
                  chunk_seconds: float, overlap: float, alignment: int = 1, suffix: str = ".wav",
                  subtype: str = "FLOAT", progress: Progress | None = None,
                  info: AudioInfo | None = None) -> dict[str, Path]:
    """Separate a file into one file per stem in ``out_dir``, streamed block by block.

    Stem ``a/b`` is written as ``a.b<suffix>``. Files appear only when all are
    complete (atomic writes); on any error none of them is left behind.
    """
    info = info or probe(source)
    chunk, hop = chunk_grid(chunk_seconds, overlap, info.sample_rate, alignment)
    paths = stem_paths(names, out_dir, suffix)
    done = 0

    def emit(stems: torch.Tensor, mixture: torch.Tensor) -> None:
        nonlocal done
        stems = on_grid(exact_sum(stems, mixture), mixture, subtype)
        for writer, stem in zip(writers, stems, strict=True):
            writer.write(stem.numpy().T)
        done += mixture.shape[-1]
        if progress:
            progress(done, info.frames)

    with contextlib.ExitStack() as stack, torch.inference_mode():
        writers = [stack.enter_context(open_writer(p, info.sample_rate, info.channels, subtype))
                   for p in paths.values()]
        overlap_add(fn, lambda lo, hi: read_range(info, lo, hi), info.frames, chunk, hop, emit)
    return paths


def _fit(audio: torch.Tensor, time: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``time`` samples (resampling may be off by one)."""
    if audio.shape[-1] >= time:
        return audio[..., :time]
    return torch.nn.functional.pad(audio, (0, time - audio.shape[-1]))
