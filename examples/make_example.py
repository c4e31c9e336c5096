"""Build the bundled example recording and its true stems (run once; outputs are committed).

An archival-style mono scene at 22.05 kHz, 20 s: two synthetic voices (espeak-ng)
in a small room over a FluidSynth string-and-piano cue, all through a band-limited
"1960s" chain, plus tape hiss, 50 Hz mains hum and record clicks. The true stems
(dialogue, music, noise) sum exactly to the mixture, so the demo and benchmarks
can report a true SI-SDR.

    python examples/make_example.py        # needs espeak-ng, fluidsynth, fluid-soundfont-gm
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

RATE = 22050
SECONDS = 20.0
HERE = Path(__file__).resolve().parent
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
LINES = [  # (start s, espeak voice, speed wpm, pitch, text)
    (0.6, "en-gb+m3", 150, 40, "The reel was found in a biscuit tin in the projection booth."),
    (5.2, "en-us+f2", 165, 60, "Is the sound still there, or has the damp taken it?"),
    (9.4, "en-gb+m3", 140, 40, "Most of it. Listen: the band comes in just under the voices."),
    (14.6, "en-us+f2", 160, 60, "Then we can keep the music and lose the hiss."),
]


def speech(voice: str, speed: int, pitch: int, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "line.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                        "-w", str(wav), text], check=True)
        data, rate = sf.read(wav, dtype="float64")
    return resample_poly(data, RATE, rate)


def midi_file(path: Path) -> None:
    """A two-track SMF: sustained strings (GM 48) and a piano line (GM 0), 80 bpm."""
    tpq = 480

    def track(channel: int, program: int, notes: list[tuple[float, float, int, int]]) -> bytes:
        events = [(0, bytes([0xC0 | channel, program]))]
        for start, length, pitch, velocity in notes:
            events.append((int(start * tpq), bytes([0x90 | channel, pitch, velocity])))
            events.append((int((start + length) * tpq), bytes([0x80 | channel, pitch, 0])))
        events.sort(key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))
        body, now = b"", 0
        for tick, message in events:
            body += _varlen(tick - now) + message
            now = tick
        body += b"\x00\xff\x2f\x00"
        return b"MTrk" + struct.pack(">I", len(body)) + body

    chords = [(57, 60, 64), (53, 57, 60), (48, 52, 55), (55, 59, 62)]  # Am F C G
    strings = [(bar * 4.0, 4.0, p, 58) for bar in range(7) for p in chords[bar % 4]]
    melody_pitches = [76, 74, 72, 71, 72, 74, 76, 79, 77, 76, 74, 72, 71, 69]
    piano = [(2.0 * i, 1.8, p, 70) for i, p in enumerate(melody_pitches)]
    tempo = b"\x00\xff\x51\x03" + (750000).to_bytes(3, "big")  # 80 bpm
    conductor = b"MTrk" + struct.pack(">I", len(tempo) + 4) + tempo + b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 1, 3, tpq)
    path.write_bytes(header + conductor + track(0, 48, strings) + track(1, 0, piano))


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def music() -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "cue.mid", Path(tmp) / "cue.wav"
        midi_file(mid)
        subprocess.run(["fluidsynth", "-ni", "-g", "0.6", "-r", "44100", "-F", str(wav),
                        SOUNDFONT, str(mid)], check=True, capture_output=True, timeout=60)
        data, rate = sf.read(wav, dtype="float64", always_2d=True)
    return resample_poly(data.mean(axis=1), RATE, rate)


def room(rng: np.random.Generator, rt60: float = 0.35) -> np.ndarray:
    """A small-room impulse response: direct path plus exponentially decaying noise."""
    n = int(rt60 * RATE)
    tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n) * 0.25
    tail[0] = 1.0
    return tail / np.sqrt(np.sum(tail**2))


def main() -> None:
    rng = np.random.default_rng(1962)
    frames = int(SECONDS * RATE)
    dialogue = np.zeros(frames)
    for start, voice, speed, pitch, text in LINES:
        line = speech(voice, speed, pitch, text)
        at = int(start * RATE)
        dialogue[at: at + len(line)] += line[: frames - at]
    dialogue = fftconvolve(dialogue, room(rng))[:frames]
    score = music()[:frames]
    score = np.pad(score, (0, frames - len(score)))
    # The 1960s chain: band-limited 150 Hz - 5 kHz, applied to every source (linear).
    band = butter(4, [150, 5000], btype="bandpass", fs=RATE, output="sos")
    dialogue = sosfilt(band, dialogue) * (0.5 / np.max(np.abs(dialogue)))
    score = sosfilt(band, score) * (0.16 / np.max(np.abs(score)))
    t = np.arange(frames) / RATE
    hum = sum(0.008 / k * np.sin(2 * np.pi * 50 * k * t + k) for k in (1, 2, 3, 5))
    hiss = sosfilt(butter(2, 3000, btype="highpass", fs=RATE, output="sos"),
                   rng.standard_normal(frames)) * 0.012
    clicks = np.zeros(frames)
    for at in rng.integers(0, frames - 40, size=14):
        clicks[at: at + 12] += rng.choice([-1, 1]) * 0.5 * np.exp(-np.arange(12) / 3)
    noise = hum + hiss + clicks
    stems = {name: _quantise(x) for name, x in
             {"dialogue": dialogue, "music": score, "noise": noise}.items()}
    mixture = stems["dialogue"] + stems["music"] + stems["noise"]
    assert np.max(np.abs(mixture)) < 1.0
    (HERE / "truth").mkdir(exist_ok=True)
    sf.write(HERE / "archive-dialogue.flac", mixture, RATE, subtype="PCM_24")
    for name, stem in stems.items():
        sf.write(HERE / "truth" / f"{name}.flac", stem, RATE, subtype="PCM_24")
    print(f"wrote {HERE / 'archive-dialogue.flac'} ({SECONDS:g} s, {RATE} Hz) and its stems")


def _quantise(x: np.ndarray) -> np.ndarray:
    """On the 24-bit grid, so the stems' sum is exactly representable in the mixture file."""
    return np.round(x * 2**23) / 2**23


if __name__ == "__main__":
    main()
