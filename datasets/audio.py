"""Audio I/O: read, stream, write atomically, resample, measure loudness.

Audio is float32 ``(channels, time)`` tensors everywhere. Anything libsndfile
reads is accepted; every way a file can be wrong is an ``AudioError`` whose
one-line message names the file, what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from stemloop.errors import AudioError
from stemloop.files import umask

if TYPE_CHECKING:
    import torch
    import torchaudio

# torch, and pyloudnorm with scipy.signal, are imported inside the functions that use them:
# `stemloop info` measures loudness without torch, `stemloop separate` needs no loudness, and
# each import is over half a second.

MAX_CHANNELS = 8
RATE_RANGE = (8000, 192000)
# "data : 32000 (should be 15978)": libsndfile's log of a chunk longer than the file.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def probe(path: str | Path, min_duration_s: float = 0.0) -> AudioInfo:
    """Check that ``path`` is a readable, complete, non-empty audio file and describe it."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory; give an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as exc:
        raise AudioError(f"{path}: not a readable audio file ({_sf_reason(exc)}); "
                         "give WAV, FLAC, OGG or AIFF") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot open ({exc.strerror})") from None
    short = _SHORT_CHUNK.search(info.extra_info or "")
    if short and int(short[2]) not in _STREAMED_SIZES and int(short[2]) - int(short[3]) > 1:
        raise AudioError(f"{path}: file is truncated (header promises {short[2]} bytes of audio, "
                         f"{short[3]} present); re-export or re-copy it")
    if info.frames <= 0:
        raise AudioError(f"{path}: holds no audio (zero length)")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: {info.channels} channels; 1 to {MAX_CHANNELS} are supported")
    if not RATE_RANGE[0] <= info.samplerate <= RATE_RANGE[1]:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz is outside "
                         f"{RATE_RANGE[0]}–{RATE_RANGE[1]} Hz")
    result = AudioInfo(path, info.format, info.subtype, int(info.samplerate), info.channels,
                       int(info.frames))
    if result.duration < min_duration_s:
        raise AudioError(f"{path}: {result.duration:.3f} s of audio is shorter than the minimum "
                         f"{min_duration_s:g} s (io.min_duration_s)")
    return result


def read_audio(path: str | Path, min_duration_s: float = 0.0) -> tuple[torch.Tensor, int]:
    """Whole file as float32 ``(channels, time)`` and its sample rate."""
    info = probe(path, min_duration_s)
    import torch

    data = _read(info, 0, info.frames)
    _check_finite(data, info.path, 0, info.sample_rate)
    return torch.from_numpy(data), info.sample_rate


def iter_blocks(path: str | Path, block_frames: int, min_duration_s: float = 0.0
                ) -> Iterator[torch.Tensor]:
    """Stream a file as float32 ``(channels, block_frames)`` blocks; the last may be short."""
    import torch

    for block in _iter_arrays(probe(path, min_duration_s), block_frames):
        yield torch.from_numpy(block)


def _iter_arrays(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    for start in range(0, info.frames, block_frames):
        block = _read(info, start, min(start + block_frames, info.frames))
        _check_finite(block, info.path, start, info.sample_rate)
        yield block


def read_range(info: AudioInfo, start: int, stop: int) -> torch.Tensor:
    """Frames ``[start, stop)`` of a probed file as float32 ``(channels, stop - start)``."""
    import torch

    block = _read(info, start, stop)
    _check_finite(block, info.path, start, info.sample_rate)
    return torch.from_numpy(block)


def _read(info: AudioInfo, start: int, stop: int) -> np.ndarray:
    try:
        data = sf.read(str(info.path), start=start, stop=stop, dtype="float32", always_2d=True)[0]
    except sf.LibsndfileError as exc:
        raise AudioError(f"{info.path}: cannot decode audio near {start / info.sample_rate:.1f} s "
                         f"({_sf_reason(exc)}); the file may be truncated or corrupt") from None
    if data.shape[0] < stop - start:
        end = (start + data.shape[0]) / info.sample_rate
        raise AudioError(f"{info.path}: audio ends at {end:.1f} s but the header promises "
                         f"{info.duration:.1f} s; the file is truncated")
    return np.ascontiguousarray(data.T)


def _check_finite(data: np.ndarray, path: Path, offset: int, rate: int) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        first = offset + int(np.argmax(bad.any(axis=0)))
        raise AudioError(f"{path}: holds NaN or infinite samples (first at {first / rate:.3f} s); "
                         "re-export it as PCM")


def _sf_reason(exc: sf.LibsndfileError) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1].strip().rstrip(".") if ": " in text else text


# ---------------------------------------------------------------- writing

_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def check_output_dir(directory: str | Path) -> Path:
    """Create ``directory`` if needed and prove it is writable; an AudioError if not."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".stemloop-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise AudioError(f"{directory}: output directory is not writable ({reason}); "
                         "choose another with --out") from None
    return directory


@contextlib.contextmanager
def open_writer(path: str | Path, sample_rate: int, channels: int, subtype: str = "FLOAT"
                ) -> Iterator[sf.SoundFile]:
    """A SoundFile for block writing that appears at ``path`` only if the block completes.

    Write ``(time, channels)`` numpy blocks with ``.write``. On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unsupported output extension; use .wav or .flac")
    if fmt == "FLAC" and subtype == "FLOAT":
        subtype = "PCM_24"  # FLAC stores integers only
    check_output_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=channels, format=fmt,
                          subtype=subtype) as handle:
            yield handle
        os.chmod(tmp, 0o644 & ~umask())  # mkstemp makes 0600; stems are for people to share
        os.replace(tmp, path)
    except (OSError, sf.SoundFileRuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        if "System error" in reason and shutil.disk_usage(path.parent).free < 2**22:
            reason = "no space left on the device"  # libsndfile's word for ENOSPC
        raise AudioError(f"{path}: could not be written ({reason}); check free space and "
                         "permissions, or choose another folder with --out") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_audio(path: str | Path, audio: torch.Tensor, sample_rate: int,
                subtype: str = "FLOAT") -> Path:
    """Write float ``(channels, time)`` audio atomically; format from the suffix (.wav/.flac)."""
    if audio.ndim != 2:
        raise ValueError(f"expected (channels, time) audio, got shape {tuple(audio.shape)}")
    with open_writer(path, sample_rate, audio.shape[0], subtype) as handle:
        handle.write(audio.detach().float().cpu().numpy().T)
    return Path(path)


# ---------------------------------------------------------------- resampling and loudness

def resample(audio: torch.Tensor, orig_rate: int, new_rate: int, fast: bool = False
             ) -> torch.Tensor:
    """Band-limited resampling of ``(..., time)`` audio: a Kaiser-windowed sinc 64 zero
    crossings wide, or with ``fast`` (rendering training examples, where the kernel is
    reused) a Hann sinc 16 wide, built once per rate pair and process."""
    if orig_rate == new_rate:
        return audio
    if fast:
        return _fast_resampler(orig_rate, new_rate)(audio)
    import torchaudio.functional as AF

    return AF.resample(audio, orig_rate, new_rate, lowpass_filter_width=64, rolloff=0.9475,
                       resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


@functools.lru_cache(maxsize=32)
def _fast_resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    import torchaudio

    return torchaudio.transforms.Resample(orig, new, lowpass_filter_width=16, rolloff=0.95)


def loudness(audio: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4, LUFS) of ``(channels, time)`` audio; -inf if silent."""
    data = audio.detach().cpu().double().numpy().T
    if data.shape[0] < int(0.4 * sample_rate) + 1:
        return float("-inf")  # shorter than one 400 ms gating block
    if data.shape[1] > len(StreamingLoudness.GAINS[:5]):  # pyloudnorm stops at five channels
        meter = StreamingLoudness(sample_rate, data.shape[1])
        meter.add(audio)
        return meter.result()
    import pyloudnorm

    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(sample_rate).integrated_loudness(data))


def normalise_loudness(audio: torch.Tensor, sample_rate: int, target_lufs: float
                       ) -> tuple[torch.Tensor, float]:
    """Scale audio to ``target_lufs``; returns the audio and the gain applied in dB."""
    current = loudness(audio, sample_rate)
    if not np.isfinite(current):
        return audio, 0.0
    gain_db = target_lufs - current
    return audio * 10.0 ** (gain_db / 20.0), gain_db


class StreamingLoudness:
    """BS.1770-4 integrated loudness fed block by block (memory bounded by the block).

    Uses pyloudnorm's K-weighting filters with carried state, 400 ms gating blocks
    at 75 % overlap built from 100 ms sums, absolute (-70 LUFS) and relative (-10 LU) gates.
    Channel weights are BS.1770's for up to five channels (L, R, C, Ls, Rs, as pyloudnorm);
    a sixth to eighth channel, whose position a file does not say, weighs 1.0.
    """

    GAINS = (1.0, 1.0, 1.0, 1.41, 1.41, 1.0, 1.0, 1.0)

    def __init__(self, sample_rate: int, channels: int):
        import pyloudnorm
        from scipy.signal import lfilter

        self._lfilter = lfilter
        meter = pyloudnorm.Meter(sample_rate)
        self._filters = [(f.b, f.a) for f in meter._filters.values()]
        self._state = [[np.zeros(max(len(b), len(a)) - 1) for b, a in self._filters]
                       for _ in range(channels)]
        self._hop = int(round(0.1 * sample_rate))
        self._pending = np.zeros((channels, 0))
        self._hop_energy: list[np.ndarray] = []  # per 100 ms: mean square per channel

    def add(self, block: torch.Tensor | np.ndarray) -> None:
        data = np.array(block.detach().cpu() if hasattr(block, "detach") else block,
                        dtype=np.float64)
        for ch in range(data.shape[0]):
            for i, (b, a) in enumerate(self._filters):
                data[ch], self._state[ch][i] = self._lfilter(b, a, data[ch], zi=self._state[ch][i])
        data = np.concatenate([self._pending, data], axis=1)
        usable = data.shape[1] // self._hop * self._hop
        if usable:
            squares = (data[:, :usable] ** 2).reshape(data.shape[0], -1, self._hop).mean(axis=2)
            self._hop_energy.extend(squares.T)
        self._pending = data[:, usable:]

    def result(self) -> float:
        if len(self._hop_energy) < 4:
            return float("-inf")
        hops = np.stack(self._hop_energy)  # (hops, channels)
        z = np.lib.stride_tricks.sliding_window_view(hops, 4, axis=0).mean(axis=-1)
        gains = np.array(self.GAINS[: z.shape[1]])
        with np.errstate(divide="ignore"):
            block_lufs = -0.691 + 10 * np.log10((gains * z).sum(axis=1))
            above = z[block_lufs >= -70.0]
            if not len(above):
                return float("-inf")
            relative = -0.691 + 10 * np.log10((gains * above.mean(axis=0)).sum()) - 10.0
            gated = z[(block_lufs > relative) & (block_lufs > -70.0)]
            if not len(gated):
                return float("-inf")
            return float(-0.691 + 10 * np.log10((gains * gated.mean(axis=0)).sum()))


# ---------------------------------------------------------------- whole-file statistics

@dataclass(frozen=True)
class AudioStats:
    info: AudioInfo
    peak_dbfs: float
    lufs: float
    clipped_pct: float
    silence_pct: float

    def warnings(self) -> list[str]:
        """Things worth telling a restorer that are not errors."""
        notes = []
        if self.silence_pct >= 99.999:
            notes.append(f"{self.info.path}: the recording is digitally silent")
        if self.clipped_pct > 0.01:
            notes.append(f"{self.info.path}: {self.clipped_pct:.2f} % of samples are clipped; "
                         "separation cannot restore them")
        return notes


def measure(path: str | Path, block_seconds: float = 30.0, clip_threshold: float = 0.999,
            silence_dbfs: float = -90.0, min_duration_s: float = 0.0, loudness: bool = True
            ) -> AudioStats:
    """Peak, loudness, clipping and digital silence of a file, streamed in blocks (without
    ``loudness``, ``lufs`` is NaN and the K-weighting filters and their imports are skipped)."""
    info = probe(path, min_duration_s)
    meter = StreamingLoudness(info.sample_rate, info.channels) if loudness else None
    silence = 10.0 ** (silence_dbfs / 20.0)
    peak = 0.0
    clipped = silent = 0
    for block in _iter_arrays(info, max(1, int(block_seconds * info.sample_rate))):
        magnitude = np.abs(block)
        peak = max(peak, float(magnitude.max()))
        clipped += int((magnitude >= clip_threshold).sum())
        silent += int((magnitude < silence).sum())
        if meter is not None:
            meter.add(block)
    total = info.frames * info.channels
    with np.errstate(divide="ignore"):
        peak_dbfs = float(20.0 * np.log10(peak)) if peak > 0 else float("-inf")
    lufs = meter.result() if meter is not None else float("nan")
    return AudioStats(info, peak_dbfs, lufs, 100.0 * clipped / total,
                      100.0 * silent / total)


def energy_above_db(audio: torch.Tensor, rate: int, edge_hz: float) -> float:
    """Energy of ``(channels, time)`` audio above ``edge_hz`` over its whole energy, in dB
    (-inf when the rate's Nyquist frequency is below the edge): whether a recording holds
    real content above a model's band (archival transfers: none, below -60 dB)."""
    if rate / 2 <= edge_hz:
        return -math.inf
    return _ratio_db(*_band_energy(audio, rate, edge_hz))


def file_energy_above_db(path: str | Path, edge_hz: float, block_s: float = 60.0) -> float:
    """``energy_above_db`` of a whole file, read a block at a time (an hour at 48 kHz in
    memory would be 0.7 GB a channel, and its spectrogram more)."""
    info = probe(path)
    if info.sample_rate / 2 <= edge_hz:
        return -math.inf
    sums = [_band_energy(block, info.sample_rate, edge_hz)
            for block in iter_blocks(path, int(block_s * info.sample_rate))]
    return _ratio_db(sum(a for a, _ in sums), sum(w for _, w in sums))


def _band_energy(audio: torch.Tensor, rate: int, edge_hz: float) -> tuple[float, float]:
    import torch

    audio = torch.nn.functional.pad(audio.reshape(-1, audio.shape[-1]).float(),
                                    (0, max(0, 4096 - audio.shape[-1])))  # a short last block
    spec = torch.stft(audio, 4096, 1024,
                      window=torch.hann_window(4096), return_complex=True).abs().pow(2)
    return float(spec[:, int(edge_hz / rate * 4096) + 1:].sum()), float(spec.sum())


def _ratio_db(above: float, whole: float) -> float:
    return 10 * math.log10(above / max(whole, 1e-20) + 1e-30)
