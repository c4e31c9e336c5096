"""The labelled source library: speech, music stems, noise and rooms, built offline.

``build_library`` renders jobs on a process pool (speech clips and music pieces
until each reaches its hour budget, plus a fixed share of noise files and
simulated room impulse responses) and writes ``manifest.parquet``: one row per
file with class, subclass, tool, voice/instrument, rate, duration, loudness and
what produced it. ``Library`` opens a built library and answers queries.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from stemloop.config import LibraryConfig
from stemloop.datasets import augment
from stemloop.datasets.audio import check_output_dir, loudness, write_audio
from stemloop.errors import UserError
from stemloop.files import atomic_path, write_text_atomic
from stemloop.names import MANIFEST

# What a library holds, bumped when a rebuild would add material: recipe 1 held synthetic
# and acted voices; ``ADDED`` names what each later recipe added (2: the Asterisk prompts,
# the matched reference's voices; 3: game soundtracks, ``datasets/recorded_music.py``).
RECIPE = 3
ADDED = {2: "natural recorded voices", 3: "recorded music"}
NOISE_KINDS = ("hiss", "hum", "crackle", "tape", "roomtone")
Progress = Callable[[str, float], None]  # (class, seconds or files just added)


@dataclass(frozen=True)
class Job:
    kind: str          # speech | recorded | music | track | noise | room
    job_id: str
    seed: int
    estimate_s: float  # audio seconds the job is expected to add
    args: tuple = field(default=())


def render_noise(job_id: str, seed: int, out: Path, kind: str, rate: int, clip_s: float,
                 lufs: float) -> list[dict[str, Any]]:
    """One synthetic noise file of ``kind`` with drawn colour, hum frequency or density."""
    gen = torch.Generator().manual_seed(seed)
    n = int(clip_s * rate)
    draw = float(torch.rand(1, generator=gen))
    meta: dict[str, Any] = {}
    if kind == "hiss":
        meta["slope_db_oct"] = round(-6.0 + 9.0 * draw, 2)
        audio = augment.coloured_noise(n, rate, meta["slope_db_oct"], gen)
    elif kind == "hum":
        meta["f0"] = 50.0 if draw < 0.5 else 60.0
        meta["harmonics"] = int(torch.randint(3, 16, (1,), generator=gen))
        audio = augment.hum(n, rate, meta["f0"], meta["harmonics"], 3.0 + 6.0 * draw, gen)
    elif kind == "crackle":
        meta["density"] = round(5.0 * 40.0 ** draw, 1)  # 5 … 200 events a second
        audio = augment.crackle(n, rate, meta["density"], gen)
    elif kind == "tape":
        audio = augment.tape_noise(n, rate, gen)
    else:
        audio = augment.room_tone(n, rate, gen)
    audio = audio[None]
    audio = audio * 10 ** ((lufs - loudness(audio, rate)) / 20)
    audio = audio * min(1.0, 0.98 / float(audio.abs().max()))
    path = Path("noise") / f"{job_id}.flac"
    write_audio(out / path, audio, rate, "PCM_24")
    return [{"id": job_id, "path": str(path), "class": "noise", "subclass": kind,
             "tool": "synthetic", "rate": rate, "duration": clip_s,
             "loudness": loudness(audio, rate), "seed": seed, **meta}]


def render_room(job_id: str, seed: int, out: Path, rate: int) -> list[dict[str, Any]]:
    """A shoebox room impulse response (pyroomacoustics image sources), direct path at 0."""
    import pyroomacoustics as pra

    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(6, generator=gen).tolist()
    dims = [3 + 17 * u[0] ** 2, 3 + 22 * u[1] ** 2, 2.5 + 6 * u[2]]
    rt60 = 0.15 + 2.0 * u[3] ** 1.5
    while True:  # Sabine cannot make a big room this dry: ask for more reverberation
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
            break
        except ValueError:
            rt60 *= 1.25
    room = pra.ShoeBox(dims, fs=rate, materials=pra.Material(absorption),
                       max_order=min(max_order, 30), use_rand_ism=True, max_rand_disp=0.05)
    source = [0.2 * dims[0] + 0.1, 0.3 * dims[1], 1.5]
    distance = 0.5 + u[4] * (0.6 * min(dims[0], dims[1]))
    angle = 2 * math.pi * u[5]
    mic = [min(dims[0] - 0.2, max(0.2, source[0] + distance * math.cos(angle))),
           min(dims[1] - 0.2, max(0.2, source[1] + distance * math.sin(angle))), 1.2]
    room.add_source(source)
    room.add_microphone(mic)
    # pyroomacoustics draws its randomised image sources from its own global generators
    # (numpy's and C++'s): seed them from the job, so a library rebuilds bit-identically
    pra.random.seed(seed % 2**32)
    room.compute_rir()
    ir = torch.tensor(room.rir[0][0], dtype=torch.float32)
    ir = ir[max(0, int(ir.abs().argmax()) - 8):]
    ir = ir / ir.abs().max()
    path = Path("rooms") / f"{job_id}.flac"
    write_audio(out / path, ir[None], rate, "PCM_24")
    return [{"id": job_id, "path": str(path), "class": "room", "subclass": _size(dims),
             "tool": "pyroomacoustics", "rate": rate, "duration": len(ir) / rate,
             "rt60": augment.rt60_of(ir, rate), "distance": round(distance, 2),
             "volume": round(dims[0] * dims[1] * dims[2], 1), "seed": seed}]


def _size(dims: list[float]) -> str:
    volume = dims[0] * dims[1] * dims[2]
    return "small" if volume < 80 else "medium" if volume < 600 else "large"


def _run_job(job: Job, out: str, cfg: LibraryConfig) -> tuple[list[dict[str, Any]], float]:
    from stemloop.datasets.music import render_piece
    from stemloop.datasets.speech import import_recorded, render_speech

    start = time.perf_counter()
    out_dir = Path(out)
    if job.kind == "speech":
        rows = render_speech(job.job_id, job.seed, out_dir, cfg.speech_clip_s, cfg.lufs,
                             cfg.render_timeout_s)
    elif job.kind == "recorded":
        rows = import_recorded(job.job_id, job.args[0], out_dir, cfg.lufs)
    elif job.kind == "track":
        from stemloop.datasets.recorded_music import import_excerpt

        rows = import_excerpt(job.job_id, job.seed, job.args[0], out_dir, cfg.music_rate,
                              cfg.lufs)
    elif job.kind == "music":
        rows = render_piece(job.job_id, job.seed, out_dir, job.args[0], cfg.music_rate,
                            cfg.piece_max_s, cfg.render_timeout_s, cfg.lufs)
    elif job.kind == "noise":
        rows = render_noise(job.job_id, job.seed, out_dir, job.args[0], cfg.synth_rate,
                            cfg.noise_clip_s, cfg.lufs)
    else:
        rows = render_room(job.job_id, job.seed, out_dir, cfg.synth_rate)
    return rows, time.perf_counter() - start


_KIND_SALT = {"speech": 1, "recorded": 2, "music": 3, "noise": 4, "room": 5, "track": 6}


def _job(kind: str, seed: int, index: int, estimate: float, args: tuple = ()) -> Job:
    return Job(kind, f"{kind[:2]}{seed}-{index:05d}",
               (seed * 10 + _KIND_SALT[kind]) * 1_000_003 + index, estimate, args)


def _speech_jobs(seed: int, cfg: LibraryConfig) -> Iterator[Job]:
    """TTS clips, with recorded voices (if installed) as every third job until used up."""
    from stemloop.datasets.speech import NATURAL_CLIP_S, recorded_clips

    recorded = recorded_clips(seed, cfg.full_band_speech) if cfg.recorded_speech else []
    index = 0
    while True:
        if recorded and index % 3 == 2:
            source = recorded.pop(0)
            estimate = 2.0 if source.subclass == "acted" else NATURAL_CLIP_S
            yield _job("recorded", seed, index, estimate, (source,))
        else:
            yield _job("speech", seed, index, cfg.speech_clip_s * 1.2)
        index += 1


def _music_jobs(seed: int, scores: dict[str, list[str]], cfg: LibraryConfig) -> Iterator[Job]:
    """Rendered score excerpts, with recorded tracks' excerpts (if installed) as every
    other job until used up."""
    from stemloop.datasets.recorded_music import recorded_excerpts

    tracks = recorded_excerpts(seed, cfg.piece_max_s) if cfg.recorded_music else []
    index = 0
    while True:
        if tracks and index % 2 == 1:
            excerpt = tracks.pop(0)
            yield _job("track", seed, index, excerpt.seconds, (excerpt,))
        else:
            yield _job("music", seed, index, cfg.piece_max_s, (scores,))
        index += 1


def _streams(hours: float, seed: int, cfg: LibraryConfig) -> dict[str, tuple[float, Iterator]]:
    """Per class: its budget (seconds of audio, or files) and its stream of jobs."""
    from stemloop.datasets.music import score_paths

    scores = score_paths(cfg.composers)
    if not scores:
        raise UserError(f"no scores found in music21's corpus for mixbus.library.composers "
                        f"{cfg.composers}; name composers music21 ships (e.g. bach)")
    n_noise = max(len(NOISE_KINDS), round(cfg.noise_files_per_hour * hours))
    n_rooms = max(4, round(cfg.rooms_per_hour * hours))
    noise = (_job("noise", seed, i, 1.0, (NOISE_KINDS[i % len(NOISE_KINDS)],))
             for i in range(n_noise))
    music = _music_jobs(seed, scores, cfg)
    rooms = (_job("room", seed, i, 1.0) for i in range(n_rooms))
    return {"speech": (hours * 3600, _speech_jobs(seed, cfg)),
            "music": (hours * 3600, music), "noise": (float(n_noise), noise),
            "room": (float(n_rooms), rooms)}


def _worker_init() -> None:
    torch.set_num_threads(1)


REQUIRED_TOOLS = {"text2wave": "festival", "flite": "flite", "espeak-ng": "espeak-ng",
                  "fluidsynth": "fluidsynth"}


def check_tools() -> None:
    import shutil

    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in REQUIRED_TOOLS.items()
               if shutil.which(tool) is None]
    if missing:
        raise UserError(f"library build needs {', '.join(missing)}; run `make sysdeps`")


def _next_job(streams: dict[str, tuple[float, Iterator]], added: dict[str, float]
              ) -> tuple[str, Job] | None:
    """A job from the class furthest from its budget (so both cores mix classes)."""
    open_classes = [c for c, (budget, _) in streams.items() if added[c] < budget]
    for cls in sorted(open_classes, key=lambda c: added[c] / streams[c][0]):
        job = next(streams[cls][1], None)
        if job is not None:
            return cls, job
        streams[cls] = (0.0, iter(()))  # exhausted
    return None


def build_library(out: str | Path, hours: float, seed: int, cfg: LibraryConfig,
                  progress: Progress | None = None) -> pd.DataFrame:
    """Render ``hours`` of speech and ``hours`` of music (piece time) plus noise and rooms.

    Returns the manifest, also written to ``out/manifest.parquet`` with a
    ``library.json`` summary (wall time, worker seconds and failures per class).
    """
    check_tools()
    out = check_output_dir(out)
    streams = _streams(hours, seed, cfg)
    added = dict.fromkeys(streams, 0.0)     # done + in flight, in budget units
    stats = {c: {"files": 0, "seconds": 0.0, "worker_s": 0.0, "failures": 0} for c in streams}
    rows: list[dict[str, Any]] = []
    workers = cfg.workers or os.cpu_count() or 1
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_worker_init) as pool:
        running: dict[Future, tuple[str, Job]] = {}
        while True:
            while len(running) < 2 * workers and (picked := _next_job(streams, added)):
                cls, job = picked
                running[pool.submit(_run_job, job, str(out), cfg)] = picked
                added[cls] += job.estimate_s
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cls, job = running.pop(future)
                _collect(future, cls, job, stats[cls], rows, added, progress)
    manifest = _write_manifest(out, rows)
    _write_summary(out, hours, seed, time.perf_counter() - start, workers, stats)
    return manifest


def _collect(future: Future, cls: str, job: Job, stat: dict[str, Any],
             rows: list[dict[str, Any]], added: dict[str, float],
             progress: Progress | None) -> None:
    """Account a finished job: its rows, its true size in place of its estimate."""
    try:
        new_rows, worker_s = future.result()
    except Exception:  # a voice or score that fails to render: skip it, count it
        new_rows, worker_s = [], 0.0
        stat["failures"] += 1
        if stat["failures"] > 50 and stat["files"] == 0:
            raise
    amount = (max((r["duration"] for r in new_rows), default=0.0)
              if cls in ("speech", "music") else float(len(new_rows)))
    added[cls] += amount - job.estimate_s
    stat["files"] += len(new_rows)
    stat["seconds"] += sum(r["duration"] for r in new_rows)
    stat["worker_s"] += worker_s
    for row in new_rows:
        row["render_s"] = worker_s / len(new_rows)
    rows.extend(new_rows)
    if progress:
        progress(cls, amount)


def _write_manifest(out: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    manifest = pd.DataFrame(rows).sort_values("id", kind="stable").reset_index(drop=True)
    with atomic_path(out / MANIFEST) as tmp:
        manifest.to_parquet(tmp, index=False)
    return manifest


def _write_summary(out: Path, hours: float, seed: int, wall_s: float, workers: int,
                   stats: dict[str, dict[str, Any]]) -> None:
    import json

    summary = {"recipe": RECIPE, "hours": hours, "seed": seed, "workers": workers,
               "wall_s": round(wall_s, 2), "classes": stats}
    write_text_atomic(out / "library.json", json.dumps(summary, indent=2))


def library_recipe(root: str | Path) -> int:
    """The recipe a built library was made with (1 when its summary does not say)."""
    import json

    summary = Path(root) / "library.json"
    try:
        return int(json.loads(summary.read_text()).get("recipe", 1))
    except (OSError, ValueError, AttributeError):
        return 1


class Library:
    """A built library: its root folder and manifest; answers queries by column."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise UserError(f"{self.root}: not a stemloop library (no {MANIFEST}); build one "
                            "with `stemloop library build --out DIR`")
        self.manifest = pd.read_parquet(path)

    def query(self, **where: Any) -> pd.DataFrame:
        """Rows whose columns equal the given values (a list means any of them)."""
        rows = self.manifest
        for column, value in where.items():
            if column not in rows.columns:
                return rows.iloc[0:0]
            values = value if isinstance(value, list | tuple) else [value]
            rows = rows[rows[column].isin(values)]
        return rows

    def path(self, row: pd.Series) -> Path:
        return self.root / row["path"]
