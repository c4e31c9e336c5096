"""Archival-style test mixtures with exact ground truth: dialogue, music, noise.

A ``MixSpec`` names the voices, the score and its timbre, the length and rate;
``build_mixture`` draws every degradation from the spec's seed (band-limit,
resonance, room, tape dropout, hiss, mains hum, crackle and clicks) and renders
three stems. All processing is linear per source, so the stems, quantised to the
24-bit grid, sum exactly to the mixture that ``write_mixture`` stores.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from stemloop.datasets import augment
from stemloop.datasets.evalsources import RECORDED_MUSIC, recorded_music, render_music, speech_line

STEMS = ("dialogue", "music", "noise")


@dataclass(frozen=True)
class MixSpec:
    name: str
    seed: int
    voices: tuple[str, ...]     # speakers taking turns (datasets.evalsources.VOICES)
    composer: str               # music21 corpus composer … (or a recorded-music source)
    score: str                  # … and file name (or the track under that source's folder)
    font: str                   # sf_GMbank | pluck | reed ("" for recorded music)
    seconds: float = 30.0
    rate: int = 16000
    chain: str = "archival"     # archival (band-limited, resonant, noisy) | modern (full band,
                                # light hiss and hum: a film mix at 48 kHz)


def _draw(rng: random.Random) -> dict[str, Any]:
    """The degradation settings of one recording."""
    u = rng.uniform
    return {
        "band_hz": [round(u(80, 300)), round(u(3000, 7000))],
        "band_order": rng.choice([2, 3, 4]),
        "resonance": {"hz": round(u(700, 2500)), "db": round(u(-4, 6), 1), "oct": 0.6},
        "room_rt60_s": round(u(0.15, 0.8), 2),
        "room_wet": round(u(0.3, 0.9), 2),
        "music_room_rt60_s": round(u(0.3, 1.5), 2),
        "music_db": round(u(-11, -1), 1),       # music RMS relative to dialogue RMS
        "hiss_db": round(u(-30, -16), 1),       # relative to dialogue RMS
        "hiss_slope_db_oct": round(u(-1.5, 3.0), 1),
        "hum_hz": rng.choice([50.0, 60.0]),
        "hum_harmonics": rng.randint(3, 10),
        "hum_db": round(u(-36, -22), 1),
        "crackle_per_s": round(u(2, 40), 1),
        "crackle_db": round(u(-34, -22), 1),
        "clicks": rng.randint(3, 20),
        "click_db": round(u(-6, 3), 1),          # click peak relative to dialogue peak
        "dropouts": rng.randint(0, 2),
    }


def _room(rng: np.random.Generator, rt60: float, rate: int) -> torch.Tensor:
    """A synthetic small-room IR: direct path plus exponentially decaying noise."""
    n = max(2, int(rt60 * rate))
    tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n) * 0.3
    tail[0] = 1.0
    return torch.from_numpy(tail / np.sqrt(np.sum(tail**2)))


def _dialogue(spec: MixSpec, rng: random.Random, frames: int) -> tuple[np.ndarray, list]:
    """Speakers take turns with pauses; lines that do not fit are left out."""
    out, lines = np.zeros(frames), []
    at = int(rng.uniform(0.3, 1.2) * spec.rate)
    turn, misses = 0, 0
    while at < frames - spec.rate and misses < 4:
        voice = spec.voices[turn % len(spec.voices)]
        line, meta = speech_line(voice, rng, spec.rate)
        if at + len(line) > frames:
            misses += 1  # too long for what is left: try another line
            continue
        level = 10 ** (rng.uniform(-3, 3) / 20)
        out[at: at + len(line)] += level * line
        lines.append({"start_s": round(at / spec.rate, 3), "seconds": round(len(line) / spec.rate,
                      3), "gain_db": round(20 * np.log10(level), 2), **meta})
        at += len(line) + int(rng.uniform(0.25, 1.4) * spec.rate)
        turn += 1 if rng.random() < 0.8 else 0
    return out, lines


def _noise(p: dict, frames: int, rate: int, gen: torch.Generator, ref_rms: float,
           ref_peak: float) -> torch.Tensor:
    db = 10 ** (np.array([p["hiss_db"], p["hum_db"], p["crackle_db"]]) / 20) * ref_rms
    hiss = augment.coloured_noise(frames, rate, p["hiss_slope_db_oct"], gen).double() * db[0]
    hum = augment.hum(frames, rate, p["hum_hz"], p["hum_harmonics"], 4.0, gen).double() * db[1]
    crackle = augment.crackle(frames, rate, p["crackle_per_s"], gen).double() * db[2]
    clicks = torch.zeros(frames, dtype=torch.float64)
    shape = torch.exp(-torch.arange(int(0.0015 * rate) + 1, dtype=torch.float64)
                      / (0.0002 * rate))
    for _ in range(p["clicks"]):
        at = int(torch.randint(0, frames - len(shape), (1,), generator=gen))
        sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.5 else -1.0
        clicks[at: at + len(shape)] += sign * shape
    clicks *= 10 ** (p["click_db"] / 20) * ref_peak
    return hiss, hum + crackle + clicks


def build_mixture(spec: MixSpec) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Three stems ``(time,)`` at ``spec.rate`` on the 24-bit grid, and what went in."""
    rng = random.Random(spec.seed)
    np_rng = np.random.default_rng(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    frames = int(spec.seconds * spec.rate)
    p = _draw(rng)
    if spec.chain == "modern":  # drawn after the archival settings: those specs stay as built
        p.update(hiss_db=round(rng.uniform(-44, -34), 1), hum_db=round(rng.uniform(-56, -46), 1),
                 crackle_db=-120.0, clicks=0, dropouts=0)
    speech, lines = _dialogue(spec, rng, frames)
    if spec.composer in RECORDED_MUSIC:
        music, music_meta = recorded_music(spec.composer, spec.score, spec.rate, spec.seconds,
                                           rng)
    else:
        music, music_meta = render_music(spec.composer, spec.score, spec.font, spec.rate,
                                         spec.seconds, rng)
    dialogue = augment.convolve(torch.from_numpy(speech),
                                _room(np_rng, p["room_rt60_s"], spec.rate), p["room_wet"])
    score = augment.convolve(torch.from_numpy(music),
                             _room(np_rng, p["music_room_rt60_s"], spec.rate), 0.5)
    score = score * (10 ** (p["music_db"] / 20) * _rms(dialogue) / _rms(score))
    hiss, other = _noise(p, frames, spec.rate, gen, _rms(dialogue), float(dialogue.abs().max()))
    spans = [(rng.uniform(1, spec.seconds - 2), rng.uniform(0.05, 0.4))
             for _ in range(p["dropouts"])]
    p["dropout_spans_s"] = [[round(a, 3), round(b, 3)] for a, b in spans]
    env = augment.envelope_gaps(frames, spec.rate, [a for a, _ in p["dropout_spans_s"]],
                                [b for _, b in p["dropout_spans_s"]], -14.0, 0.01).double()
    stems = {}
    for name, x in (("dialogue", dialogue), ("music", score), ("noise", hiss)):
        # The recording chain: tape (dropouts) then the band-limited, resonant playback.
        if spec.chain == "modern":
            stems[name] = x * env
            continue
        x = augment.bandpass(x * env, spec.rate, *p["band_hz"], float(p["band_order"]))
        stems[name] = augment.peaking(x, spec.rate, p["resonance"]["hz"], p["resonance"]["db"],
                                      p["resonance"]["oct"])
    stems["noise"] = stems["noise"] + other  # hum and clicks enter after the chain
    peak = float(sum(stems.values()).abs().max())
    scale = 0.89 / peak
    out = {k: _quantise(v.numpy() * scale) for k, v in stems.items()}
    meta = {"spec": asdict(spec), "degradation": p, "lines": lines, "music": music_meta,
            "gain_to_peak": round(scale, 6),
            "rms_dbfs": {k: round(20 * np.log10(np.sqrt(np.mean(v**2)) + 1e-12), 2)
                         for k, v in out.items()}}
    return out, meta


def write_mixture(stems: dict[str, np.ndarray], meta: dict[str, Any], mixture_path: Path,
                  truth_dir: Path, meta_path: Path | None = None) -> None:
    """24-bit FLACs: the mixture is the exact sum of the truth stems."""
    rate = meta["spec"]["rate"]
    mixture = stems["dialogue"] + stems["music"] + stems["noise"]
    assert np.max(np.abs(mixture)) < 1.0
    truth_dir.mkdir(parents=True, exist_ok=True)
    sf.write(str(mixture_path), mixture, rate, subtype="PCM_24")
    for name in STEMS:
        sf.write(str(truth_dir / f"{name}.flac"), stems[name], rate, subtype="PCM_24")
    if meta_path is not None:
        meta_path.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt().clamp(min=1e-12))


def _quantise(x: np.ndarray) -> np.ndarray:
    """On the 24-bit grid, so the stems' sum is exactly representable in the mixture file."""
    return np.round(x * 2**23) / 2**23
