"""Speech sources for the library: Debian TTS voices and recorded voices.

Each job renders one clip with one voice (festival, flite or espeak-ng, with
varied rate and pitch) reading seeded text, trims silence, normalises loudness
and writes a mono FLAC. Recorded voices join when their Debian packages are installed:

- ``fillets-ng-data`` (GPL-2): ~6 minutes of a game's English voice acting
  (characters: robots, fish, creatures), ``subclass: acted``;
- Asterisk's telephone prompts read by four people the demo set does not use
  (``NATURAL_VOICES``; CC BY-SA 3.0; 8 kHz, ~25 minutes each): natural read speech,
  ``subclass: natural``. Consecutive prompts of one voice are joined into clips of
  ``NATURAL_CLIP_S`` with short pauses between them, as speech has.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from stemloop.datasets.audio import loudness, write_audio
from stemloop.datasets.evalsources import TUXPAINT, check_not_evaluation
from stemloop.datasets.sentences import sentences

FESTIVAL_VOICES = {"cmu_us_slt_arctic_hts": "female", "kal_diphone": "male",
                   "ked_diphone": "male"}
FLITE_VOICES = {"slt": "female", "kal": "male", "kal16": "male", "awb": "male", "rms": "male"}
ESPEAK_LANGS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
                "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
ESPEAK_VARIANTS = {**{f"m{i}": "male" for i in range(1, 8)},
                   **{f"f{i}": "female" for i in range(1, 6)},
                   "croak": "male", "klatt": "male", "klatt2": "male", "klatt3": "male",
                   "whisperf": "female", "grandma": "female", "grandpa": "male"}
ENGINE_WEIGHTS = {"festival": 0.35, "flite": 0.3, "espeak-ng": 0.35}
FILLETS_DIR = Path("/usr/share/games/fillets-ng/sound")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds")
# voice folder -> (Debian package, language, gender); the Menardi set is Paola Dal Zot's
# voice. Allison Smith (en_US, es_MX) and Armelle Desjardins (fr) are held out for the
# demo set (datasets/evalsources.py).
NATURAL_VOICES = {"fr_CA_f_June": ("asterisk-core-sounds-fr-wav", "fr", "female"),
                  "it_IT_f_Menardi": ("asterisk-prompt-it-menardi-wav", "it", "female"),
                  "it_IT_m_Carlo": ("asterisk-core-sounds-it-wav", "it", "male"),
                  "ru_RU_f_IvrvoiceRU": ("asterisk-core-sounds-ru-wav", "ru", "female")}
NATURAL_CLIP_S = 8.0
NATURAL_GAP_S = 0.3
# tuxpaint-stamps-default (GPL-2): each stamp's description read by one volunteer per
# language, 44.1 kHz Vorbis phrases with real energy above 11 kHz (-28 to -45 dB of the
# whole, moving with the voice: bench/RESULTS.md, "Full band"): the library's full-band
# voices, with `mixbus.library.full_band_speech`. Bulgarian and Danish are held out as
# full-band evaluation material (datasets/evalsources.py).
FULL_BAND_LANGUAGES = ("ru", "be", "es", "ro")


def _run(cmd: list[str], timeout: float) -> None:
    subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _festival(text: str, wav: Path, rng: random.Random, timeout: float) -> dict[str, Any]:
    voice = rng.choice(sorted(FESTIVAL_VOICES))
    stretch = round(rng.uniform(0.85, 1.3), 2)
    txt = wav.with_suffix(".txt")
    txt.write_text(text)
    _run(["text2wave", "-eval", f"(voice_{voice})", "-eval",
          f"(Parameter.set 'Duration_Stretch {stretch})", "-o", str(wav), str(txt)], timeout)
    return {"voice": voice, "gender": FESTIVAL_VOICES[voice], "speed": 1 / stretch}


def _flite(text: str, wav: Path, rng: random.Random, timeout: float) -> dict[str, Any]:
    voice = rng.choice(sorted(FLITE_VOICES))
    stretch = round(rng.uniform(0.85, 1.3), 2)
    base = 170 if FLITE_VOICES[voice] == "female" else 105
    pitch = round(base * rng.uniform(0.8, 1.25))
    _run(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "--setf",
          f"int_f0_target_mean={pitch}", "-t", text, "-o", str(wav)], timeout)
    return {"voice": voice, "gender": FLITE_VOICES[voice], "speed": 1 / stretch, "pitch": pitch}


def _espeak(text: str, wav: Path, rng: random.Random, timeout: float) -> dict[str, Any]:
    lang = rng.choice(ESPEAK_LANGS)
    variant = rng.choice(sorted(ESPEAK_VARIANTS))
    words_per_min = rng.randint(120, 200)
    pitch = rng.randint(20, 80)
    _run(["espeak-ng", "-v", f"{lang}+{variant}", "-s", str(words_per_min), "-p", str(pitch),
          "-g", str(rng.randint(0, 6)), "-w", str(wav), text], timeout)
    return {"voice": f"{lang}+{variant}", "gender": ESPEAK_VARIANTS[variant],
            "speed": words_per_min / 160, "pitch": pitch}


ENGINES = {"festival": _festival, "flite": _flite, "espeak-ng": _espeak}


def trim_and_level(audio: np.ndarray, rate: int, lufs: float) -> torch.Tensor | None:
    """Mono float32 ``(1, time)``: silence trimmed (0.2 s kept), at ``lufs``, peak ≤ 0.98."""
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    loud = np.flatnonzero(np.abs(mono) > np.abs(mono).max() * 10 ** (-50 / 20))
    if not len(loud):
        return None
    pad = int(0.2 * rate)
    clip = torch.from_numpy(mono[max(0, loud[0] - pad): loud[-1] + pad].astype(np.float32))[None]
    level = loudness(clip, rate)
    if not np.isfinite(level):
        return None
    clip = clip * 10 ** ((lufs - level) / 20)
    peak = float(clip.abs().max())
    return clip * (0.98 / peak) if peak > 0.98 else clip


def render_speech(job_id: str, seed: int, out: Path, clip_s: float, lufs: float,
                  timeout: float) -> list[dict[str, Any]]:
    """One TTS clip of about ``clip_s`` seconds; returns its manifest row."""
    rng = random.Random(seed)
    engine = rng.choices(list(ENGINE_WEIGHTS), weights=list(ENGINE_WEIGHTS.values()))[0]
    text = sentences(seed, words=max(4, int(clip_s * 2.6)))
    with tempfile.TemporaryDirectory(prefix="stemloop-tts-") as tmp:
        wav = Path(tmp) / "speech.wav"
        meta = ENGINES[engine](text, wav, rng, timeout)
        data, rate = sf.read(str(wav), dtype="float32")
    clip = trim_and_level(data, rate, lufs)
    if clip is None:
        return []
    path = Path("speech") / f"{job_id}.flac"
    write_audio(out / path, clip, rate, "PCM_16")
    return [{"id": job_id, "path": str(path), "class": "speech", "subclass": "synthetic",
             "tool": engine, "text": text, "rate": rate, "duration": clip.shape[-1] / rate,
             "loudness": loudness(clip, rate), "seed": seed, **meta}]


@dataclass(frozen=True)
class RecordedClip:
    """One library clip from recorded files of one voice (played in order, with pauses)."""
    tool: str
    voice: str
    subclass: str          # natural | acted
    sources: tuple[str, ...]


def _natural_clips(files: list[Path], tool: str, voice: str, clip_s: float
                   ) -> list[RecordedClip]:
    """Consecutive prompts of one voice, grouped until each group lasts ``clip_s``."""
    clips, group, total = [], [], 0.0
    for path in files:
        group.append(str(path))
        total += sf.info(str(path)).duration + NATURAL_GAP_S
        if total >= clip_s:
            clips.append(RecordedClip(tool, voice, "natural", tuple(group)))
            group, total = [], 0.0
    return clips


def recorded_clips(seed: int = 0, full_band: bool = False) -> list[RecordedClip]:
    """Every installed recorded clip, interleaved across sources (each natural voice, and
    the voice acting as one) so that a budget that stops early still draws all of them;
    the order within a source is shuffled by ``seed``. With ``full_band``, the tuxpaint
    voices of ``FULL_BAND_LANGUAGES`` too."""
    rng = random.Random(seed)
    sources = []
    if FILLETS_DIR.is_dir():
        sources.append([RecordedClip("fillets-ng", p.stem.split("-")[0], "acted", (str(p),))
                        for p in sorted(FILLETS_DIR.glob("*/en/*.ogg"))])
    for name in NATURAL_VOICES:
        if (ASTERISK_DIR / name).is_dir():
            sources.append(_natural_clips(sorted((ASTERISK_DIR / name).rglob("*.wav")),
                                          "asterisk", name, NATURAL_CLIP_S))
    for language in FULL_BAND_LANGUAGES if full_band and TUXPAINT.is_dir() else ():
        sources.append(_natural_clips(sorted(TUXPAINT.rglob(f"*_desc_{language}.ogg")),
                                      "tuxpaint", f"tuxpaint-{language}", NATURAL_CLIP_S))
    for clips in sources:
        check_not_evaluation([f for clip in clips for f in clip.sources], "the library's speech")
        rng.shuffle(clips)
    longest = max((len(c) for c in sources), default=0)
    return [c[i] for i in range(longest) for c in sources if i < len(c)]


def _read_joined(sources: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """The files one after another, ``NATURAL_GAP_S`` of silence between them."""
    parts, rate = [], None
    for source in sources:
        data, r = sf.read(source, dtype="float32", always_2d=True)
        if rate is not None and r != rate:
            raise ValueError(f"{source}: {r} Hz, but the clip's first file is {rate} Hz")
        rate = r
        if parts:
            parts.append(np.zeros(int(NATURAL_GAP_S * rate), np.float32))
        parts.append(data.mean(axis=1))
    return np.concatenate(parts), rate


def import_recorded(job_id: str, clip: RecordedClip, out: Path, lufs: float
                    ) -> list[dict[str, Any]]:
    data, rate = _read_joined(clip.sources)
    audio = trim_and_level(data, rate, lufs)
    if audio is None or audio.shape[-1] < rate:
        return []
    path = Path("speech") / f"{job_id}.flac"
    write_audio(out / path, audio, rate, "PCM_16")
    meta = ({"language": NATURAL_VOICES[clip.voice][1], "gender": NATURAL_VOICES[clip.voice][2]}
            if clip.voice in NATURAL_VOICES else
            {"language": clip.voice.removeprefix("tuxpaint-"), "package":
             "tuxpaint-stamps-default", "licence": "GPL-2"} if clip.tool == "tuxpaint" else {})
    return [{"id": job_id, "path": str(path), "class": "speech", "subclass": clip.subclass,
             "tool": clip.tool, "voice": clip.voice, "source": clip.sources[0],
             "rate": rate, "duration": audio.shape[-1] / rate,
             "loudness": loudness(audio, rate), **meta}]
