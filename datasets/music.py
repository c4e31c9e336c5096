"""Music stems for the library: score corpora rendered part by part with FluidSynth.

A job takes one score from music21's bundled corpus, a random excerpt, a tempo,
a General MIDI soundfont and an instrument per part (fitted to the part's
register), writes each part alone to a MIDI file and renders it alone, so the
stems are exact and sum to the piece. Renders are capped twice: the excerpt is
at most ``piece_max_s`` long (grace notes, which make FluidSynth run on, are
dropped), and FluidSynth is killed after ``timeout_s``.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mido
import numpy as np
import soundfile as sf
import torch

from stemloop.datasets.audio import loudness, write_audio

# name: (GM program, family, lowest MIDI note, highest MIDI note)
INSTRUMENTS = {
    "violin": (40, "strings", 55, 100), "viola": (41, "strings", 48, 88),
    "cello": (42, "strings", 36, 76), "contrabass": (43, "strings", 28, 60),
    "flute": (73, "woodwind", 60, 96), "oboe": (68, "woodwind", 58, 91),
    "clarinet": (71, "woodwind", 50, 91), "bassoon": (70, "woodwind", 34, 72),
    "alto_sax": (65, "woodwind", 49, 81), "trumpet": (56, "brass", 55, 82),
    "horn": (60, "brass", 41, 77), "trombone": (57, "brass", 40, 72),
    "tuba": (58, "brass", 28, 58), "piano": (0, "keys", 21, 108),
    "organ": (19, "keys", 24, 96), "harpsichord": (6, "keys", 29, 89),
    "guitar": (24, "plucked", 40, 84), "harp": (46, "plucked", 24, 103),
    "choir": (52, "voices", 43, 81),
}
SOUNDFONTS = {"FluidR3_GM": ("/usr/share/sounds/sf2/FluidR3_GM.sf2", 0.5),
              "TimGM6mb": ("/usr/share/sounds/sf2/TimGM6mb.sf2", 0.35),
              # An sf3 decompresses its samples at load (~4 s a part): used less.
              "MuseScore_General_Lite": ("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3", 0.15)}
SCORE_SUFFIXES = {".mxl", ".xml", ".musicxml", ".krn", ".abc"}
MAX_PARTS = 6


def score_paths(composers: list[str]) -> dict[str, list[str]]:
    """Score files from music21's bundled corpus, by composer, sorted."""
    from music21 import corpus

    found = {c: sorted({str(p) for p in corpus.getComposer(c)
                        if Path(p).suffix in SCORE_SUFFIXES}) for c in composers}
    return {c: paths for c, paths in found.items() if paths}


def available_soundfonts() -> dict[str, tuple[str, float]]:
    return {name: sf for name, sf in SOUNDFONTS.items() if Path(sf[0]).is_file()}


def _parts(score_path: str) -> list[list[tuple[float, float, list[int]]]]:
    """Notes of each part as (offset, length, midi pitches) in quarter notes."""
    from music21 import converter

    score = converter.parse(score_path)
    parts = []
    for part in list(score.parts)[:MAX_PARTS] or [score]:
        notes = [(float(n.offset), float(n.quarterLength), [p.midi for p in n.pitches])
                 for n in part.flatten().notes if float(n.quarterLength) > 0]  # no grace notes
        if notes:
            parts.append(notes)
    return parts


def _fit_instrument(notes: list, rng: random.Random, family: str | None
                    ) -> tuple[str, int]:
    """An instrument whose range holds the part's median pitch, and an octave shift."""
    median = float(np.median([p for _, _, ps in notes for p in ps]))
    for shift in (0, -12, 12, -24, 24):
        fits = [name for name, (_, fam, lo, hi) in INSTRUMENTS.items()
                if lo + 5 <= median + shift <= hi - 5 and (family is None or fam == family)]
        if fits:
            return rng.choice(sorted(fits)), shift
    return "piano", 0


def _midi(notes: list, program: int, shift: int, bpm: float, start_ql: float, end_ql: float,
          rng: random.Random, path: Path) -> None:
    ticks = 480
    events = []
    for offset, length, pitches in notes:
        if not start_ql <= offset < end_ql:
            continue
        on = int((offset - start_ql) * ticks)
        off = int((min(offset + length, end_ql) - start_ql) * ticks)
        velocity = max(1, min(127, int(rng.gauss(85, 12))))
        for pitch in pitches:
            note = min(127, max(0, pitch + shift))
            events += [(on, 1, mido.Message("note_on", note=note, velocity=velocity)),
                       (max(off, on + 1), 0, mido.Message("note_off", note=note, velocity=0))]
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)),
                            mido.Message("program_change", program=program)])
    now = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=ticks))
    midi = mido.MidiFile(ticks_per_beat=ticks)
    midi.tracks.append(track)
    midi.save(str(path))


def _render(midi: Path, soundfont: str, rate: int, timeout_s: float, max_s: float
            ) -> np.ndarray:
    wav = midi.with_suffix(".wav")
    subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5",
                    "-r", str(rate), "-F", str(wav), soundfont, str(midi)],
                   check=True, timeout=timeout_s, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    data, _ = sf.read(str(wav), dtype="float32", frames=int(max_s * rate), always_2d=True)
    return data.mean(axis=1)


def render_piece(job_id: str, seed: int, out: Path, scores: dict[str, list[str]], rate: int,
                 piece_max_s: float, timeout_s: float, lufs: float) -> list[dict[str, Any]]:
    """Every part of one score excerpt as its own stem; one manifest row per stem."""
    rng = random.Random(seed)
    composer = rng.choice(sorted(scores))  # composers equally likely, however many scores
    score = rng.choice(scores[composer])
    parts = _parts(score)
    if not parts:
        return []
    fonts = available_soundfonts()
    font = rng.choices(sorted(fonts), weights=[fonts[f][1] for f in sorted(fonts)])[0]
    bpm = rng.uniform(60, 132)
    span_ql = piece_max_s * bpm / 60
    last = max(o + d for notes in parts for o, d, _ in notes)
    start = rng.uniform(0, max(0.0, last - span_ql)) // 1
    family = rng.choice(["strings", "woodwind", "brass", "keys", None, None])
    stems, rows = [], []
    with tempfile.TemporaryDirectory(prefix="stemloop-midi-") as tmp:
        for index, notes in enumerate(parts):
            name, shift = _fit_instrument(notes, rng, family)
            program, fam = INSTRUMENTS[name][:2]
            midi = Path(tmp) / f"part{index}.mid"
            _midi(notes, program, shift, bpm, start, start + span_ql, rng, midi)
            stems.append(_render(midi, fonts[font][0], rate, timeout_s, piece_max_s + 2))
            rows.append({"subclass": fam, "instrument": name, "program": program,
                         "part": index})
    return _write_stems(job_id, seed, out, stems, rows, rate, lufs,
                        {"piece": job_id, "composer": composer, "score": Path(score).name,
                         "soundfont": font, "tempo": round(bpm, 1)})


def _write_stems(job_id: str, seed: int, out: Path, stems: list[np.ndarray], rows: list[dict],
                 rate: int, lufs: float, common: dict[str, Any]) -> list[dict[str, Any]]:
    """Pad stems to one length, give the piece one gain (mix at ``lufs``), write FLACs."""
    length = max(len(s) for s in stems)
    audio = torch.zeros(len(stems), 1, length)
    for i, stem in enumerate(stems):
        audio[i, 0, : len(stem)] = torch.from_numpy(stem)
    mix_level = loudness(audio.sum(0), rate)
    if not np.isfinite(mix_level):
        return []
    audio *= 10 ** ((lufs - mix_level) / 20)
    peak = float(audio.abs().max())
    audio *= 0.98 / peak if peak > 0.98 else 1.0
    result = []
    for i, row in enumerate(rows):
        level = loudness(audio[i], rate)
        if not np.isfinite(level):
            continue  # a silent part in this excerpt
        path = Path("music") / f"{job_id}-p{i}.flac"
        write_audio(out / path, audio[i], rate, "PCM_16")
        result.append({"id": f"{job_id}-p{i}", "path": str(path), "class": "music",
                       "tool": "fluidsynth", "voice": row["instrument"], "rate": rate,
                       "duration": length / rate, "loudness": level, "seed": seed,
                       **row, **common})
    return result
