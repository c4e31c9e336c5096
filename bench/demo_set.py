"""Build the demo set for the adaptation-loop benchmark (issue 6): "unseen" recordings.

Each mixture is mono archival-style dialogue over music and noise, made only
from material held out of the general model's labelled library (other voices,
recorded speech, other scores, another soundfont and synth timbres; see
``datasets/evalsources.py``), degraded by a seeded chain (``datasets/archival_mix.py``).
Layout, per mixture::

    <out>/<name>/mixture.flac              24-bit, the exact sum of the truth stems
    <out>/<name>/truth/{dialogue,music,noise}.flac
    <out>/<name>/meta.json                 voices, lines, score, degradation settings

    python bench/demo_set.py [--out bench/out/demo-set] [--only NAME ...]

Needs Debian: asterisk-core-sounds-en-wav asterisk-prompt-fr-armelle
pocketsphinx-testdata festival-czech festvox-czech-machac festvox-italp16k
csound-soundfont fluidsynth sox (all in the Makefile's DEBS).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stemloop.config import load_config
from stemloop.datasets.archival_mix import STEMS, MixSpec, build_mixture, write_mixture
from stemloop.datasets.evalsources import ALLISON, ARMELLE, CSOUND_SF2, LIBRIVOX

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out" / "demo-set"
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
        if spec.composer in composers:
            raise SystemExit(f"{spec.name}: composer {spec.composer} is in the general "
                             f"library (mixbus.library.composers); pick another")
    missing = [str(p) for p in (ALLISON, ARMELLE, LIBRIVOX, Path(CSOUND_SF2)) if not p.exists()]
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
              f"{meta['music']['composer']} on {spec.font}, stems sum exactly "
              f"({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", default=None, help="mixture names to build")
    parser.add_argument("--library-manifest", type=Path, default=DEFAULT_MANIFEST,
                        help="a built library's manifest.parquet to check against, if present")
    args = parser.parse_args()
    specs = tuple(s for s in SPECS if args.only is None or s.name in args.only)
    if not specs:
        raise SystemExit(f"--only matches none of {[s.name for s in SPECS]}")
    build(args.out, specs, args.library_manifest)
    print(f"wrote {len(specs)} mixtures to {args.out}")


if __name__ == "__main__":
    main()
