"""Audio I/O: round trips, formats, resampling, loudness, and every bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from stemloop.datasets.audio import (
    StreamingLoudness,
    check_output_dir,
    iter_blocks,
    loudness,
    measure,
    normalise_loudness,
    probe,
    read_audio,
    resample,
    write_audio,
)
from stemloop.errors import AudioError
from tests.signals import sine


def noise(channels: int, frames: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(channels, frames, generator=gen) * 1.8 - 0.9).float()


# ---------------------------------------------------------------- round trips

def test_float32_wav_round_trip_is_bit_exact(tmp_path):
    audio = noise(2, 12345)
    write_audio(tmp_path / "x.wav", audio, 44100, subtype="FLOAT")
    back, rate = read_audio(tmp_path / "x.wav")
    assert rate == 44100 and back.dtype == torch.float32
    assert torch.equal(back, audio)


def test_pcm24_wav_round_trip_within_one_lsb(tmp_path):
    audio = noise(1, 48000)
    write_audio(tmp_path / "x.wav", audio, 48000, subtype="PCM_24")
    back, _ = read_audio(tmp_path / "x.wav")
    assert sf.info(str(tmp_path / "x.wav")).subtype == "PCM_24"
    assert float((back - audio).abs().max()) <= 1.0 / 2**23


def test_flac_is_lossless_for_24_bit_samples(tmp_path):
    audio = torch.round(noise(2, 20000) * 2**23) / 2**23  # exactly representable in 24 bits
    write_audio(tmp_path / "x.flac", audio, 96000)
    back, rate = read_audio(tmp_path / "x.flac")
    assert rate == 96000 and torch.equal(back, audio)


@pytest.mark.parametrize("fmt,subtype,suffix", [
    ("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"), ("WAV", "PCM_32", "wav"),
    ("WAV", "DOUBLE", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
    ("AIFF", "PCM_16", "aiff"),
])
def test_reads_every_common_format_as_float32(write_wav, fmt, subtype, suffix):
    path = write_wav(f"x.{suffix}", sine(440, 22050, 0.5, 0.5, channels=2), 22050, subtype, fmt)
    audio, rate = read_audio(path)
    assert audio.dtype == torch.float32 and audio.shape[0] == 2 and rate == 22050
    assert audio.shape[1] == 11025
    assert 0.45 < float(audio.abs().max()) < 0.55


@pytest.mark.parametrize("rate,channels", [(8000, 1), (16000, 8), (96000, 2), (192000, 1)])
def test_rates_and_channel_counts(write_wav, rate, channels):
    path = write_wav("x.wav", sine(1000, rate, 0.25, channels=channels), rate)
    info = probe(path)
    assert (info.sample_rate, info.channels, info.frames) == (rate, channels, rate // 4)


def test_block_reader_concatenates_to_the_whole_file(tmp_path):
    audio = noise(3, 10007)
    write_audio(tmp_path / "x.wav", audio, 16000)
    blocks = list(iter_blocks(tmp_path / "x.wav", 1000))
    assert len(blocks) == 11 and blocks[-1].shape == (3, 7)
    assert torch.equal(torch.cat(blocks, dim=1), audio)


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    write_audio(tmp_path / "x.wav", noise(1, 100), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]
    with pytest.raises(ValueError):
        write_audio(tmp_path / "y.wav", noise(1, 100)[0], 16000)  # wrong shape: a bug, not input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


# ---------------------------------------------------------------- resampling and loudness

@pytest.mark.parametrize("orig,new", [(44100, 16000), (16000, 48000), (48000, 22050),
                                      (8000, 96000)])
def test_resampling_keeps_a_1khz_sine_frequency_and_level(orig, new):
    audio = torch.from_numpy(sine(1000, orig, 2.0, 0.5).T.copy())
    out = resample(audio, orig, new)
    assert out.shape[-1] == 2 * new
    middle = out[0, new // 2: new // 2 + new].double().numpy()  # 1 s away from the edges
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert abs(np.argmax(spectrum) - 1000) <= 1  # 1 Hz bins
    level_db = 20 * math.log10(np.sqrt(np.mean(middle**2)) / (0.5 / math.sqrt(2)))
    assert abs(level_db) < 0.1


def test_full_scale_997hz_sine_measures_minus_3_lufs():
    audio = torch.from_numpy(sine(997, 48000, 5.0, 1.0).T.copy())
    assert loudness(audio, 48000) == pytest.approx(-3.01, abs=0.1)


def test_normalise_loudness_reaches_the_target():
    audio = noise(2, 5 * 44100) * 0.1
    normalised, gain_db = normalise_loudness(audio, 44100, -23.0)
    assert loudness(normalised, 44100) == pytest.approx(-23.0, abs=0.05)
    assert gain_db == pytest.approx(-23.0 - loudness(audio, 44100), abs=1e-9)


def test_streaming_loudness_equals_pyloudnorm_on_the_whole_signal():
    ramp = torch.linspace(0.0, 1.0, 9 * 22050)
    audio = noise(2, 9 * 22050, seed=3) * ramp * 0.5  # loudness varies: gating matters
    meter = StreamingLoudness(22050, 2)
    for start in range(0, audio.shape[1], 7777):
        meter.add(audio[:, start:start + 7777])
    assert meter.result() == pytest.approx(loudness(audio, 22050), abs=0.01)


def test_measure_reports_peak_clipping_and_silence(write_wav):
    data = sine(440, 16000, 2.0, 1.0)
    data[:16000] = 0.0  # first second digitally silent
    stats = measure(write_wav("x.wav", data, 16000), block_seconds=0.3)
    assert stats.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert stats.silence_pct == pytest.approx(50.0, abs=0.5)  # + the sine's zero crossings
    assert 0 < stats.clipped_pct < 5
    assert any("clipped" in note for note in stats.warnings())


def test_all_silent_input_is_a_warning_not_an_error(write_wav):
    stats = measure(write_wav("quiet.wav", np.zeros((16000, 1), np.float32), 16000))
    assert stats.lufs == float("-inf") and stats.peak_dbfs == float("-inf")
    assert any("silent" in note for note in stats.warnings())


# ---------------------------------------------------------------- bad input

def _truncated_wav(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, 16000, 1.0), 16000, subtype="PCM_16")
    data = good.read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    return path


def _nan_wav(tmp_path):
    data = sine(440, 16000, 1.0)
    data[8000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    return path


def _inf_wav(tmp_path):
    data = sine(440, 16000, 1.0)
    data[100] = np.inf
    path = tmp_path / "inf.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    return path


def _zero_length(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    return path


def _make(kind, tmp_path):
    if kind == "missing":
        return tmp_path / "nope.wav"
    if kind == "directory":
        (tmp_path / "adir.wav").mkdir()
        return tmp_path / "adir.wav"
    if kind == "empty":
        (tmp_path / "empty.wav").write_bytes(b"")
        return tmp_path / "empty.wav"
    if kind == "not audio":
        (tmp_path / "text.wav").write_text("this is not audio\n" * 50)
        return tmp_path / "text.wav"
    return {"truncated": _truncated_wav, "nan": _nan_wav, "inf": _inf_wav,
            "zero length": _zero_length}[kind](tmp_path)


BAD = {
    "missing": "no such file",
    "directory": "is a directory",
    "empty": "file is empty",
    "not audio": "not a readable audio file",
    "truncated": "truncated",
    "zero length": "zero length",
    "nan": "NaN or infinite",
    "inf": "NaN or infinite",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_is_a_one_line_audio_error_naming_the_file(tmp_path, kind):
    path = _make(kind, tmp_path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(AudioError) as caught:
        read_audio(path)
    message = str(caught.value)
    assert str(path) in message and BAD[kind] in message and "\n" not in message
    if before is not None:
        assert path.read_bytes() == before  # the input is untouched


def test_audio_shorter_than_the_minimum_is_rejected(write_wav):
    path = write_wav("short.wav", sine(440, 16000, 0.5))
    with pytest.raises(AudioError, match=r"short\.wav: 0\.500 s .* shorter than the minimum 1 s"):
        read_audio(path, min_duration_s=1.0)
    assert read_audio(path, min_duration_s=0.4)[0].shape == (1, 8000)


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_directory_is_an_error_and_writes_nothing(tmp_path, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = blocker / "out" if where == "under_a_file" else "/proc/stemloop-out"
    with pytest.raises(AudioError, match="output directory is not writable"):
        check_output_dir(target)
    with pytest.raises(AudioError):
        write_audio(f"{target}/stem.wav", noise(1, 10), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_written_files_are_readable_by_others(tmp_path):
    write_audio(tmp_path / "x.wav", noise(1, 100), 16000)
    assert (tmp_path / "x.wav").stat().st_mode & 0o044 == 0o044
