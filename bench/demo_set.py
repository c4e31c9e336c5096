"""Build the demo set (issue 6) or the development set (issue 19): "unseen" recordings.

Each mixture is mono archival-style dialogue over music and noise, made only
from material held out of the general model's labelled library (other voices,
recorded speech, other scores, another soundfont and synth timbres; see
``datasets/evalsources.py``), degraded by a seeded chain (``datasets/archival_mix.py``).
Layout, per mixture::

    <out>/<name>/mixture.flac              24-bit, the exact sum of the truth stems
    <out>/<name>/truth/{dialogue,music,noise}.flac
    <out>/<name>/meta.json                 voices, lines, score, degradation settings

    python bench/demo_set.py [--set demo|dev] [--out FOLDER] [--only NAME ...]

The demo set (six mixtures, 16/22.05 kHz, scores rendered by csound or a synth) needs
Debian asterisk-core-sounds-en-wav asterisk-prompt-fr-armelle pocketsphinx-testdata
festival-czech festvox-czech-machac festvox-italp16k csound-soundfont fluidsynth sox.

The development set (issue 19; ``--set dev``, to ``bench/out/dev-set``) is harder and
closer to a film archive: twelve mixtures of 22-60 s at 16, 22.05, 44.1 and 48 kHz whose
music is **real recorded music** (the Warzone 2100 soundtracks by Martin Severn and others,
``warzone2100-music``, GPL-2+; Frozen Bubble's music, ``frozen-bubble-data``, GPL-2) and
whose voices are recorded: Czech and Dutch voice acting (two actors each,
``fillets-ng-data-cs``/``-nl``, GPL-2), Armelle Desjardins' French prompts
(``asterisk-prompt-fr-armelle``, BSD-style) and a LibriVox reading (``pocketsphinx-testdata``,
public domain). None of it is in the general library (``datasets.evalsources.is_held_out``,
checked when the library is built). It is split, before any tuning, into a tuning half and a
report half (``DEV_SPLIT``, fixed here): decisions are made on the tuning half, every figure
is reported on both. Allison's English prompts are left out of it: another encoding of the
same recordings is reserved for an external check. All packages are in the Makefile's DEBS.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stemloop.config import load_config
from stemloop.datasets.archival_mix import STEMS, MixSpec, build_mixture, write_mixture
from stemloop.datasets.evalsources import ALLISON, ARMELLE, CSOUND_SF2, LIBRIVOX, RECORDED_MUSIC
from stemloop.files import write_json

ROOT = Path(__file__).resolve().parents[1]
SPECS = (
    MixSpec("radio-talk-en", 601, ("allison",), "joplin", "maple_leaf_rag.mxl", "sf_GMbank",
            30.0, 16000),
    MixSpec("cafe-fr", 602, ("armelle",), "chopin", "mazurka06-2.krn", "pluck", 28.0, 16000),
    MixSpec("reading-en", 603, ("librivox",), "handel", "Lascia_chio_pianga.mxl", "sf_GMbank",
            26.0, 22050),
    MixSpec("newsreel-cz", 604, ("czech",), "josquin", "milleRegrets.abc", "reed", 36.0, 16000),
    MixSpec("film-it", 605, ("italian", "armelle"), "essenFolksong", "ballad10.abc",
            "sf_GMbank", 32.0, 22050),
    MixSpec("interview-en", 606, ("allison", "librivox"), "ryansMammoth", "AcaciaReel.abc",
            "pluck", 40.0, 16000),
)
# The development set (issue 19): real recorded music and recorded voices, 16 to 48 kHz.
WZ_OST, WZ_LEGACY, WZ_AFTER = ("original_soundtrack", "legacy_soundtrack",
                               "aftermath_soundtrack")
DEV_SPECS = (
    MixSpec("drama-cs-16k", 701, ("fillets-cs-m", "fillets-cs-v"), "warzone2100",
            f"{WZ_OST}/track1.opus", "", 30.0, 16000),
    MixSpec("drama-nl-16k", 702, ("fillets-nl-v", "fillets-nl-m"), "frozen-bubble",
            "introzik.ogg", "", 34.0, 16000),
    MixSpec("notice-fr-16k", 703, ("armelle",), "warzone2100", f"{WZ_AFTER}/track17.opus", "",
            24.0, 16000),
    MixSpec("reading-en-22k", 704, ("librivox",), "frozen-bubble", "frozen-mainzik-1p.ogg", "",
            28.0, 22050),
    MixSpec("drama-cs-22k", 705, ("fillets-cs-v", "fillets-cs-m"), "warzone2100",
            f"{WZ_LEGACY}/track5.opus", "", 40.0, 22050),
    MixSpec("drama-nl-22k", 706, ("fillets-nl-m", "fillets-nl-v"), "warzone2100",
            f"{WZ_OST}/track2.opus", "", 45.0, 22050),
    MixSpec("talk-fr-cs-44k", 707, ("armelle", "fillets-cs-v"), "warzone2100",
            f"{WZ_AFTER}/track21.opus", "", 36.0, 44100),
    MixSpec("drama-nl-44k", 708, ("fillets-nl-v", "fillets-nl-m"), "frozen-bubble",
            "frozen-mainzik-2p.ogg", "", 50.0, 44100),
    MixSpec("reading-en-nl-44k", 709, ("librivox", "fillets-nl-m"), "warzone2100",
            f"{WZ_LEGACY}/track9.opus", "", 26.0, 44100),
    MixSpec("drama-cs-48k", 710, ("fillets-cs-m", "fillets-cs-v"), "warzone2100",
            f"{WZ_OST}/track3.opus", "", 60.0, 48000),
    MixSpec("talk-fr-nl-48k", 711, ("armelle", "fillets-nl-v"), "warzone2100",
            f"{WZ_AFTER}/track25.opus", "", 32.0, 48000),
    MixSpec("drama-cs-nl-48k", 712, ("fillets-cs-v", "fillets-nl-m"), "warzone2100",
            f"{WZ_LEGACY}/track13.opus", "", 22.0, 48000),
)
# Full band (issue 21): six 48 kHz film-like mixtures (the modern chain: no band limit,
# light hiss and hum) of voices read at 44.1 kHz with real energy above 11 kHz (tuxpaint's
# Bulgarian and Danish, held out of the library) over real recorded music.
FULLBAND_SPECS = tuple(
    MixSpec(name, seed, voices, "warzone2100", track, "", seconds, 48000, "modern")
    for name, seed, voices, track, seconds in (
        ("read-bg-48k", 801, ("tuxpaint-bg",), f"{WZ_LEGACY}/track4.opus", 30.0),
        ("read-da-48k", 802, ("tuxpaint-da",), f"{WZ_AFTER}/track18.opus", 30.0),
        ("talk-bg-da-48k", 803, ("tuxpaint-bg", "tuxpaint-da"), f"{WZ_LEGACY}/track7.opus",
         36.0),
        ("talk-da-bg-48k", 804, ("tuxpaint-da", "tuxpaint-bg"), f"{WZ_AFTER}/track19.opus",
         36.0),
        ("scene-bg-48k", 805, ("tuxpaint-bg",), f"{WZ_LEGACY}/track11.opus", 40.0),
        ("scene-da-48k", 806, ("tuxpaint-da",), f"{WZ_AFTER}/track23.opus", 40.0)))
SOURCES = {  # what the development set is made of, and under which licences
    "music": {"warzone2100-music": "GPL-2+ (Warzone 2100 soundtracks)",
              "frozen-bubble-data": "GPL-2 (Frozen Bubble music)"},
    "voices": {"fillets-ng-data-cs": "GPL-2 (Czech voice acting)",
               "fillets-ng-data-nl": "GPL-2 (Dutch voice acting)",
               "asterisk-prompt-fr-armelle": "BSD-style (Armelle Desjardins)",
               "pocketsphinx-testdata": "public domain (LibriVox)"},
    "noise": "synthesised by datasets/archival_mix.py (hiss, hum, crackle, clicks, dropouts)",
}
FULLBAND_SOURCES = {
    "music": {"warzone2100-music": "GPL-2+ (Warzone 2100 soundtracks)"},
    "voices": {"tuxpaint-stamps-default": "GPL-2 (Bulgarian and Danish stamp descriptions, "
                                          "44.1 kHz; held out of the library)"},
    "noise": "synthesised by datasets/archival_mix.py (light hiss and hum)",
}
# Fixed before any tuning: both halves hold every rate, language and music source.
DEV_SPLIT = {
    "tune": ("drama-nl-16k", "notice-fr-16k", "drama-nl-22k", "talk-fr-cs-44k",
             "reading-en-nl-44k", "drama-cs-nl-48k"),
    "report": ("drama-cs-16k", "reading-en-22k", "drama-cs-22k", "drama-nl-44k",
               "drama-cs-48k", "talk-fr-nl-48k"),
}
SETS = {"demo": (SPECS, ROOT / "bench" / "out" / "demo-set"),
        "dev": (DEV_SPECS, ROOT / "bench" / "out" / "dev-set"),
        "fullband": (FULLBAND_SPECS, ROOT / "bench" / "out" / "fullband-set")}

# The festival voices used here; a library manifest that names them is not held out.
HELD_OUT_VOICES = ("czech_machac", "lp_diphone")
DEFAULT_MANIFEST = ROOT / ".stemloop" / "library" / "manifest.parquet"


def check_held_out(specs: tuple[MixSpec, ...], manifest: Path | None = None) -> None:
    """Refuse a spec whose composer the library is configured with or, given a built
    library's manifest, whose composer, soundfont or festival voice it contains."""
    composers = set(load_config().mixbus.library.composers)
    used: dict[str, set] = {"composer": set(), "soundfont": set(), "voice": set()}
    if manifest is not None and manifest.is_file():
        import pandas as pd

        rows = pd.read_parquet(manifest)
        used = {k: set(rows[k].dropna()) if k in rows else set() for k in used}
    composers |= used["composer"]
    clash = used["voice"] & set(HELD_OUT_VOICES) or used["soundfont"] & {"sf_GMbank"}
    if clash:
        raise SystemExit(f"{manifest} already holds {sorted(clash)}: not held out")
    for spec in specs:
        if spec.composer in RECORDED_MUSIC:
            continue  # recorded: the library's own recordings are other packages (guarded)
        if spec.composer in composers:
            raise SystemExit(f"{spec.name}: composer {spec.composer} is in the general "
                             f"library (mixbus.library.composers); pick another")
    needed = [ALLISON, ARMELLE, LIBRIVOX, Path(CSOUND_SF2), *(
        RECORDED_MUSIC[s.composer][0] / s.score for s in specs if s.composer in RECORDED_MUSIC)]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"missing held-out material {missing}: run `make sysdeps` "
                         "(Debian packages in the Makefile's DEBS)")


def verify(folder: Path) -> float:
    """The largest |mixture − Σ truth| read back from the files (0.0 when exact)."""
    mixture, _ = sf.read(str(folder / "mixture.flac"), dtype="float64")
    total = sum(sf.read(str(folder / "truth" / f"{s}.flac"), dtype="float64")[0] for s in STEMS)
    return float(np.max(np.abs(mixture - total)))


def build(out: Path, specs: tuple[MixSpec, ...], manifest: Path | None = None) -> None:
    check_held_out(specs, manifest)
    for spec in specs:
        start = time.perf_counter()
        stems, meta = build_mixture(spec)
        folder = out / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        write_mixture(stems, meta, folder / "mixture.flac", folder / "truth",
                      folder / "meta.json")
        error = verify(folder)
        assert error == 0.0, f"{spec.name}: stems do not sum to the mixture ({error:g})"
        print(f"{spec.name}: {spec.seconds:g} s at {spec.rate} Hz, {len(meta['lines'])} lines, "
              f"{meta['music'].get('composer') or meta['music']['track']}"
              f"{' on ' + spec.font if spec.font else ''}, stems sum exactly "
              f"({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=sorted(SETS), default="demo", dest="which",
                        help="the demo set (default), the development set or the full-band set")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/out/<set>-set")
    parser.add_argument("--only", nargs="*", default=None, help="mixture names to build")
    parser.add_argument("--library-manifest", type=Path, default=DEFAULT_MANIFEST,
                        help="a built library's manifest.parquet to check against, if present")
    args = parser.parse_args()
    every, default_out = SETS[args.which]
    out = args.out or default_out
    specs = tuple(s for s in every if args.only is None or s.name in args.only)
    if not specs:
        raise SystemExit(f"--only matches none of {[s.name for s in every]}")
    build(out, specs, args.library_manifest)
    if args.which == "dev":
        write_json(out / "split.json", {**DEV_SPLIT, "sources": SOURCES})
    if args.which == "fullband":
        write_json(out / "sources.json", FULLBAND_SOURCES)
    print(f"wrote {len(specs)} mixtures to {out}")


if __name__ == "__main__":
    main()
