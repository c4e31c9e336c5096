"""Real recorded music for the library: produced game soundtracks from Debian packages.

The library's other music is rendered from scores with FluidSynth, one stem per part; a
general model trained on that alone has never heard a mastered, reverberant, recorded
mix, and on the development set's recorded backgrounds it did worse than Spleeter as
shipped (issue 19). These tracks add that: each is cut into excerpts of at most
``piece_max_s`` (one library "piece" of a single stem, subclass ``recorded``), shuffled
by seed and interleaved across packages so that a small budget still draws from all.

The development and demo sets' recorded music (``evalsources.RECORDED_MUSIC``) is held
out; ``recorded_excerpts`` refuses any file of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from stemloop.datasets.audio import resample
from stemloop.datasets.evalsources import check_not_evaluation
from stemloop.datasets.music import _write_stems

# package: (folder, file pattern, licence)
LIBRARY_MUSIC = {
    "flare-game": (Path("/usr/share/games/flare/mods/fantasycore/music"), "*.ogg",
                   "CC-BY-SA-3.0+ (Clint Bellanger and others)"),
    "hedgewars-data": (Path("/usr/share/games/hedgewars/Data/Music"), "*.ogg",
                       "GPL-2 (Hedgewars project)"),
}
MIN_EXCERPT_S = 10.0


@dataclass(frozen=True)
class Excerpt:
    path: str
    start_s: float
    seconds: float
    package: str
    licence: str


def recorded_excerpts(seed: int, excerpt_s: float) -> list[Excerpt]:
    """Every installed track cut into excerpts of ``excerpt_s`` (the last one kept when
    at least ``MIN_EXCERPT_S``), shuffled within a package by ``seed`` and interleaved
    across packages."""
    rng = random.Random(seed)
    per_package = []
    for package, (folder, pattern, licence) in LIBRARY_MUSIC.items():
        check_not_evaluation([folder / pattern], "the library's recorded music")
        files = sorted(folder.glob(pattern)) if folder.is_dir() else []
        excerpts = []
        for path in files:
            duration = sf.info(str(path)).duration
            start = 0.0
            while duration - start >= min(MIN_EXCERPT_S, duration):
                excerpts.append(Excerpt(str(path), start, min(excerpt_s, duration - start),
                                        package, licence))
                start += excerpt_s
        rng.shuffle(excerpts)
        per_package.append(excerpts)
    longest = max((len(e) for e in per_package), default=0)
    return [e[i] for i in range(longest) for e in per_package if i < len(e)]


def import_excerpt(job_id: str, seed: int, excerpt: Excerpt, out: Path, rate: int,
                   lufs: float) -> list[dict[str, Any]]:
    """One excerpt, mono at ``rate``, at ``lufs``: one manifest row (class music, subclass
    recorded), or none when the excerpt is silent."""
    with sf.SoundFile(excerpt.path) as f:
        f.seek(int(excerpt.start_s * f.samplerate))
        data = f.read(int(excerpt.seconds * f.samplerate), dtype="float32", always_2d=True)
        file_rate = f.samplerate
    mono = resample(torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))[None],
                    file_rate, rate)[0].numpy()
    row = {"subclass": "recorded", "instrument": "mix", "tool": "recording", "part": 0}
    return _write_stems(job_id, seed, out, [mono], [row], rate, lufs,
                        {"piece": job_id, "source": excerpt.path,
                         "start_s": excerpt.start_s, "package": excerpt.package,
                         "licence": excerpt.licence})
