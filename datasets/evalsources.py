"""Held-out sources for the demo set: voices, scores and timbres the general model never saw.

The general model's library (``datasets/library.py``) speaks with espeak-ng
``en-*``, flite, festival kal/ked/slt, fillets-ng voice acting and four other people's
Asterisk prompts (``datasets/speech.py``: June, Menardi, Carlo, IvrvoiceRU; never
Allison's Spanish set, her voice being held out here), and plays
bach … mozart through FluidR3_GM, TimGM6mb and MuseScore_General_Lite. Here:

- speech: real recorded voices — Allison Smith's Asterisk prompts (English,
  ``asterisk-core-sounds-en-wav``, CC-BY-SA 3.0), Armelle Desjardins' Asterisk
  prompts (French, ``asterisk-prompt-fr-armelle``, BSD-style), LibriVox readings
  from ``pocketsphinx-testdata`` (public domain) — and festival voices in other
  languages (Czech ``festvox-czech-machac``, GPL-3; Italian ``festvox-italp16k``, GPL-2+);
- music: other music21 composers rendered with csound's ``sf_GMbank.sf2``
  (``csound-soundfont``, LGPL-2.1+) or with a small additive / plucked-string synth below.

Every function returns mono float64 at the requested rate.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from stemloop.datasets.music import INSTRUMENTS, MAX_PARTS, _fit_instrument, _midi, _render

ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ARMELLE = Path("/usr/share/asterisk/sounds/fr")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CSOUND_SF2 = "/usr/share/sounds/sf2/sf_GMbank.sf2"
CZECH = ["Dobrý den, vítejte u dnešního vysílání.",
         "Ten film jsme našli ve staré plechové krabici na půdě kina.",
         "Zvuk je slabý, ale slova jsou pořád srozumitelná.",
         "Hudba začíná hned po úvodním slově a hraje až do konce.",
         "Páska byla vlhká a několik metrů se muselo slepit.",
         "Prosím, mluvte pomalu a zřetelně, nahráváme.",
         "Zítra pojedeme vlakem do Brna a vrátíme se večer.",
         "Na náměstí hrála dechovka a lidé tančili do noci."]
ITALIAN = ["Buona sera, signore e signori, e benvenuti al nostro programma.",
           "Abbiamo trovato la pellicola in una vecchia scatola di latta.",
           "La voce si sente ancora, anche se il nastro era umido.",
           "Domani partiremo presto per Milano con il treno delle sette.",
           "La musica comincia subito dopo le prime parole.",
           "Parla piano, per favore, stiamo registrando.",
           "In piazza suonava la banda e tutti ballavano.",
           "Il vecchio proiettore si era fermato a metà del film."]
# Czech and Dutch voice acting (fillets-ng-data-cs/-nl, GPL-2): the small fish ("m") and the
# big fish ("v") are two actors per language; the library speaks only the English acting.
FILLETS = Path("/usr/share/games/fillets-ng/sound")
ACTED = {f"fillets-{lang}-{who}": (lang, who) for lang in ("cs", "nl") for who in ("m", "v")}
TUXPAINT = Path("/usr/share/tuxpaint/stamps")
FULL_BAND_HELD_OUT = ("bg", "da")  # tuxpaint's Bulgarian and Danish voices: full-band evaluation
# Full-band read voices (tuxpaint-stamps-default, GPL-2; 44.1 kHz, one volunteer per
# language): Bulgarian and Danish, the languages the library never reads (FULL_BAND_HELD_OUT).
READ = {"tuxpaint-bg": "bg", "tuxpaint-da": "da"}
VOICES = ("allison", "armelle", "librivox", "czech", "italian", *ACTED, *READ)
# Real recorded music (game soundtracks); the library renders scores only.
RECORDED_MUSIC = {  # source: (folder, Debian package, licence)
    "warzone2100": (Path("/usr/share/games/warzone2100/music/albums"), "warzone2100-music",
                    "GPL-2+"),
    "frozen-bubble": (Path("/usr/share/games/frozen-bubble/snd"), "frozen-bubble-data",
                      "GPL-2"),
}
# Every folder of held-out material (glob patterns): a library that reads from one is not
# held out (``is_held_out``).
HELD_OUT_FOLDERS = (str(ALLISON), str(ARMELLE), str(LIBRIVOX),
                    *(str(FILLETS / "*" / lang) for lang in ("cs", "nl")),
                    *(str(folder) for folder, _, _ in RECORDED_MUSIC.values()))


HELD_OUT_FILES = tuple(str(TUXPAINT / f"*_desc_{lang}.ogg") for lang in FULL_BAND_HELD_OUT)


def check_not_evaluation(paths: list[str | Path], what: str) -> None:
    """Refuse (ValueError) ``what`` if any of ``paths`` is held-out evaluation material."""
    bad = [str(p) for p in paths if is_held_out(p)]
    if bad:
        raise ValueError(f"{what} would use evaluation material: {bad[:3]} "
                         f"({len(bad)} files; see datasets/evalsources.py)")



def is_held_out(path: str | Path) -> bool:
    """Whether ``path`` is evaluation material (the demo, development and full-band sets'
    sources)."""
    from fnmatch import fnmatch

    text = str(path)
    return (any(fnmatch(text, f"{folder}/*") for folder in HELD_OUT_FOLDERS)
            or any(fnmatch(text, pattern) for pattern in HELD_OUT_FILES))


def _resample(x: np.ndarray, rate_in: int, rate: int) -> np.ndarray:
    from math import gcd

    g = gcd(rate_in, rate)
    return resample_poly(x, rate // g, rate_in // g) if rate_in != rate else x


def _trim(x: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading and trailing silence (below -45 dB of the peak), keep 50 ms."""
    loud = np.flatnonzero(np.abs(x) > np.abs(x).max() * 10 ** (-45 / 20))
    pad = int(0.05 * rate)
    return x[max(0, loud[0] - pad): loud[-1] + pad] if len(loud) else x[:0]


def _read_any(path: Path) -> tuple[np.ndarray, int]:
    """WAV through libsndfile; GSM through sox (libsndfile cannot read raw .gsm)."""
    if path.suffix != ".gsm":
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
        return data.mean(axis=1), rate
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        subprocess.run(["sox", str(path), str(wav)], check=True, capture_output=True)
        data, rate = sf.read(str(wav), dtype="float64")
    return data, rate


def _prompt_line(files: list[Path], rng: random.Random, seconds: float, rate: int
                 ) -> tuple[np.ndarray, list[str]]:
    """Join random prompts with short pauses until about ``seconds`` long."""
    pieces, names, total = [], [], 0.0
    while total < seconds:
        path = rng.choice(files)
        data, rate_in = _read_any(path)
        clip = _trim(_resample(data, rate_in, rate), rate)
        if not 0.3 * rate <= len(clip) <= 6.0 * rate:
            continue
        pause = np.zeros(int(rng.uniform(0.08, 0.3) * rate))
        pieces += [clip / (np.sqrt(np.mean(clip**2)) + 1e-9), pause]
        names.append(path.name)
        total += (len(clip) + len(pause)) / rate
    return np.concatenate(pieces[:-1]), names


def _festival(voice: str, text: str, encoding: str, rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = Path(tmp) / "line.txt", Path(tmp) / "line.wav"
        txt.write_bytes(text.encode(encoding))
        subprocess.run(["text2wave", "-eval", f"(voice_{voice})", "-o", str(wav), str(txt)],
                       check=True, capture_output=True, timeout=120)
        data, rate_in = sf.read(str(wav), dtype="float64")
    return _trim(_resample(data, rate_in, rate), rate)


def speech_line(voice: str, rng: random.Random, rate: int) -> tuple[np.ndarray, dict]:
    """One spoken line (about 2–7 s) by a held-out ``voice``; RMS about 1."""
    if voice == "allison":
        files = sorted(p for p in ALLISON.glob("*.wav") if not p.name[:1].isdigit())
        line, names = _prompt_line(files, rng, rng.uniform(2.5, 6.0), rate)
        meta = {"package": "asterisk-core-sounds-en-wav", "files": names}
    elif voice == "armelle":
        line, names = _prompt_line(sorted(ARMELLE.glob("*.gsm")), rng, rng.uniform(2.5, 6.0),
                                   rate)
        meta = {"package": "asterisk-prompt-fr-armelle", "files": names}
    elif voice == "librivox":
        path = rng.choice(sorted(LIBRIVOX.glob("*.wav")))
        data, rate_in = _read_any(path)
        line = _trim(_resample(data, rate_in, rate), rate)
        meta = {"package": "pocketsphinx-testdata", "files": [path.name]}
    elif voice == "czech":
        text = rng.choice(CZECH)
        line = _festival("czech_machac", text, "iso-8859-2", rate)
        meta = {"package": "festvox-czech-machac", "text": text}
    elif voice == "italian":
        text = rng.choice(ITALIAN)
        line = _festival("lp_diphone", text, "latin-1", rate)
        meta = {"package": "festvox-italp16k", "text": text}
    elif voice in ACTED:
        lang, who = ACTED[voice]
        files = sorted(FILLETS.glob(f"*/{lang}/*-{who}-*.ogg"))
        line, names = _prompt_line(files, rng, rng.uniform(2.5, 6.0), rate)
        meta = {"package": f"fillets-ng-data-{lang}", "files": names}
    elif voice in READ:
        files = sorted(TUXPAINT.rglob(f"*_desc_{READ[voice]}.ogg"))
        line, names = _prompt_line(files, rng, rng.uniform(2.5, 6.0), rate)
        meta = {"package": "tuxpaint-stamps-default", "files": names}
    else:
        raise ValueError(f"unknown voice {voice!r}; choose from {VOICES}")
    return line / (np.sqrt(np.mean(line**2)) + 1e-9), {"voice": voice, **meta}


# ---------------------------------------------------------------- music

def score_path(composer: str, name: str) -> str:
    from music21 import corpus

    for path in corpus.getComposer(composer):
        if Path(path).name == name:
            return str(path)
    raise FileNotFoundError(f"music21 corpus has no {composer}/{name}")


def score_parts(path: str) -> list[list[tuple[float, float, list[int]]]]:
    """Notes per part as (offset, length, midi pitches) in quarter notes; an ABC
    collection (a music21 ``Opus``) plays its tunes one after another."""
    from music21 import converter, stream

    parsed = converter.parse(path)
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    parts: list[list] = []
    shift = 0.0
    for score in scores:
        for index, part in enumerate((list(score.parts) or [score])[:MAX_PARTS]):
            notes = [(shift + float(n.offset), float(n.quarterLength), [p.midi for p in n.pitches])
                     for n in part.flatten().notes if float(n.quarterLength) > 0]
            while len(parts) <= index:
                parts.append([])
            parts[index] += notes
        shift += float(score.highestTime)
    return [notes for notes in parts if notes]


def _note_events(parts: list, bpm: float, start_ql: float, seconds: float
                 ) -> list[list[tuple[float, float, int]]]:
    """Per part: (onset s, length s, midi pitch) inside the excerpt."""
    span_ql = seconds * bpm / 60
    out = []
    for notes in parts:
        events = []
        for offset, length, pitches in notes:
            if start_ql <= offset < start_ql + span_ql:
                for pitch in pitches:
                    events.append(((offset - start_ql) * 60 / bpm, length * 60 / bpm, pitch))
        out.append(events)
    return out


def _synth_note(timbre: str, f0: float, length_s: float, rate: int, velocity: float,
                rng: np.random.Generator) -> np.ndarray:
    """One note: ``pluck`` (Karplus-Strong) or ``reed`` (additive, odd-heavy, vibrato)."""
    n = int((length_s + 0.25) * rate)
    if timbre == "pluck":
        period = max(2, int(round(rate / f0)))
        buf = rng.uniform(-1, 1, period)
        out = np.empty(n)
        for i in range(n):  # the classic averaging loop, one period at a time is exact
            out[i] = buf[i % period]
            buf[i % period] = 0.996 * 0.5 * (buf[i % period] + buf[(i + 1) % period])
        return velocity * out
    t = np.arange(n) / rate
    vib = 1 + 0.004 * np.sin(2 * np.pi * 5.2 * t)
    tone = sum((0.9 if k % 2 else 0.35) / k * np.sin(2 * np.pi * k * f0 * np.cumsum(vib) / rate)
               for k in range(1, 9) if k * f0 < rate / 2 - 500)
    env = np.minimum(1, t / 0.04) * np.clip((length_s + 0.2 - t) / 0.2, 0, 1)
    return velocity * tone * env


def render_music(composer: str, score: str, font: str, rate: int, seconds: float,
                 rng: random.Random) -> tuple[np.ndarray, dict]:
    """An excerpt of a music21 score: csound's GM soundfont (``sf_GMbank``) or a synth."""
    parts = score_parts(score_path(composer, score))
    bpm = rng.uniform(66, 120)
    last = max(o + d for notes in parts for o, d, _ in notes)
    span_ql = (seconds + 1) * bpm / 60
    start = rng.uniform(0, max(0.0, last - span_ql)) // 1
    meta = {"composer": composer, "score": score, "font": font, "tempo": round(bpm, 1),
            "start_ql": start, "parts": len(parts)}
    frames = int(seconds * rate)
    mix = np.zeros(frames + rate)
    if font == "sf_GMbank":
        instruments = []
        with tempfile.TemporaryDirectory(prefix="stemloop-demo-") as tmp:
            for index, notes in enumerate(parts):
                name, shift = _fit_instrument(notes, rng, None)
                midi = Path(tmp) / f"part{index}.mid"
                _midi(notes, INSTRUMENTS[name][0], shift, bpm, start, start + span_ql, rng, midi)
                audio = _resample(_render(midi, CSOUND_SF2, 32000, 120.0, seconds + 3)
                                  .astype(np.float64), 32000, rate)[: len(mix)]
                mix[: len(audio)] += audio
                instruments.append(name)
        meta["instruments"] = instruments
    else:
        np_rng = np.random.default_rng(rng.randrange(2**31))
        for events in _note_events(parts, bpm, start, seconds + 1):
            for onset, length, pitch in events:
                f0 = 440.0 * 2 ** ((pitch - 69) / 12)
                note = _synth_note(font, f0, min(length, 3.0), rate,
                                   rng.uniform(0.5, 1.0), np_rng)
                at = int(onset * rate)
                mix[at: at + len(note)] += note[: len(mix) - at]
    mix = mix[:frames]
    return mix / (np.sqrt(np.mean(mix**2)) + 1e-9), meta


def recorded_music(source: str, track: str, rate: int, seconds: float, rng: random.Random
                   ) -> tuple[np.ndarray, dict]:
    """An excerpt of a recorded track (``RECORDED_MUSIC[source]``'s folder / ``track``), mono
    at ``rate``, RMS 1, ``seconds`` long from a drawn start at least 5 s in."""
    folder, package, licence = RECORDED_MUSIC[source]
    path = folder / track
    info = sf.info(str(path))
    start = rng.uniform(5.0, max(5.0, info.duration - seconds - 5.0))
    first = int(start * info.samplerate)
    data, file_rate = sf.read(str(path), start=first, frames=int((seconds + 1) * info.samplerate),
                              dtype="float64", always_2d=True)
    music = _resample(data.mean(axis=1), file_rate, rate)[: int(seconds * rate)]
    meta = {"source": source, "track": track, "start_s": round(start, 2), "package": package,
            "licence": licence}
    return music / (np.sqrt(np.mean(music**2)) + 1e-9), meta
