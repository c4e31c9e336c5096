"""Seeded training examples from a mix-bus schema and a library.

``MixDataset(schema, library, size, rate, seconds, seed)[i]`` is
``(mixture (channels, time), targets (sources, channels, time))``, rendered
from a generator seeded by ``(seed, i)`` alone: any worker, any order, same
bytes. ``LibraryProvider`` is where fed nodes get their audio: library rows by
query, listed files (globs allowed, e.g. culled stems), or noise synthesised
on the fly; rooms come from the library's simulated impulse responses nearest
the drawn RT60, or an exponential-decay IR when none is near.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from stemloop.datasets import augment
from stemloop.datasets.audio import probe, read_range, resample, write_audio
from stemloop.datasets.library import Library
from stemloop.datasets.mixbus import Example, Feed, Schema, render
from stemloop.datasets.mixbus_yaml import load_schema
from stemloop.errors import UserError


def _randint(high: int, gen: torch.Generator) -> int:
    return int(torch.randint(max(1, high), (1,), generator=gen))


def synth_noise(kind: str, drawn: dict[str, Any], gen: torch.Generator, rate: int,
                length: int) -> torch.Tensor:
    """Unit-RMS noise ``(1, time)`` of ``kind`` with drawn parameters (defaults if absent)."""
    if kind == "hiss":
        audio = augment.coloured_noise(length, rate, drawn.get("slope_db_oct", 0.0), gen)
    elif kind == "hum":
        audio = augment.hum(length, rate, drawn.get("f0_hz", 50.0),
                            int(drawn.get("harmonics", 8)), drawn.get("tilt_db", 6.0), gen)
    elif kind == "crackle":
        audio = augment.crackle(length, rate, drawn.get("density", 30.0), gen)
    elif kind == "tape":
        audio = augment.tape_noise(length, rate, gen)
    else:
        audio = augment.room_tone(length, rate, gen)
    return audio[None]


def synthetic_ir(rt60: float, gen: torch.Generator, rate: int) -> torch.Tensor:
    """Exponentially decaying Gaussian tail after a unit direct path (0 dB DRR at 0.5 s)."""
    n = max(2, int(1.2 * rt60 * rate))
    t = torch.arange(n, dtype=torch.float64) / rate
    tail = torch.randn(n, generator=gen, dtype=torch.float64) * torch.exp(-6.9078 * t / rt60)
    ir = tail * math.sqrt(13.8 / (0.5 * rate))
    ir[0] = 1.0
    return ir.float()


class LibraryProvider:
    """Audio for fed nodes and impulse responses for rooms (see ``mixbus.Provider``)."""

    def __init__(self, library: Library | None):
        self.library = library

    def layers(self, feed: Feed, count: int, drawn: dict[str, Any], gen: torch.Generator,
               rate: int, length: int) -> tuple[list[torch.Tensor], list[str]]:
        if feed.synth:
            return ([synth_noise(feed.synth, drawn, gen, rate, length) for _ in range(count)],
                    [f"synth:{feed.synth}"] * count)
        if feed.files:
            paths = sorted(p for pattern in feed.files for p in glob.glob(pattern))
            if not paths:
                raise UserError(f"no files match {list(feed.files)}; check the schema's files")
            chosen = [paths[_randint(len(paths), gen)] for _ in range(count)]
            return [self._segment(Path(p), gen, rate, length) for p in chosen], chosen
        rows = self._rows(feed)
        if feed.group == "piece":
            pieces = sorted(rows["piece"].dropna().unique())
            piece = pieces[_randint(len(pieces), gen)]
            rows = rows[rows["piece"] == piece]
            where = float(torch.rand(1, generator=gen))  # one offset for every stem of the piece
            return ([self._segment(self.library.path(r), gen, rate, length, where)
                     for _, r in rows.iterrows()], rows["id"].tolist())
        picks = [rows.iloc[_randint(len(rows), gen)] for _ in range(count)]
        return ([self._segment(self.library.path(r), gen, rate, length) for r in picks],
                [r["id"] for r in picks])

    def _rows(self, feed: Feed):
        if self.library is None:
            raise UserError("this schema queries a library; give one with --library or "
                            "mixbus.library_dir (build it with `stemloop library build`)")
        rows = self.library.query(**{c: list(v) for c, v in feed.query})
        if rows.empty:
            raise UserError(f"{self.library.root}: no library rows match "
                            f"{dict(feed.query)}; rebuild the library or fix the query")
        return rows

    def _segment(self, path: Path, gen: torch.Generator, rate: int, length: int,
                 where: float | None = None) -> torch.Tensor:
        """``length`` samples at ``rate`` from a random place; short files land at a random
        offset in silence."""
        info = probe(path)
        need = math.ceil(length * info.sample_rate / rate) + 16
        pos = where if where is not None else float(torch.rand(1, generator=gen))
        if info.frames >= need:
            start = int(pos * (info.frames - need))
            audio = resample(read_range(info, start, start + need), info.sample_rate, rate,
                             fast=True)
            return audio[:1, :length]
        whole = read_range(info, 0, info.frames)
        audio = resample(whole, info.sample_rate, rate, fast=True)[:1, :length]
        out = torch.zeros(1, length)
        offset = int(pos * (length - audio.shape[-1]))
        out[:, offset: offset + audio.shape[-1]] = audio
        return out

    def impulse(self, rt60: float, gen: torch.Generator, rate: int) -> tuple[torch.Tensor, str]:
        rows = self.library.query(**{"class": "room"}) if self.library is not None else None
        if rows is not None and not rows.empty:
            near = rows[(rows["rt60"] / rt60).apply(lambda r: abs(math.log(max(r, 1e-6)))) < 0.15]
            if not near.empty:
                row = near.iloc[_randint(len(near), gen)]
                ir, ir_rate = sf.read(str(self.library.path(row)), dtype="float32")
                return resample(torch.from_numpy(ir), ir_rate, rate, fast=True), str(row["id"])
        return synthetic_ir(rt60, gen, rate), f"synthetic rt60={rt60:.2f}"


def example_seed(seed: int, index: int) -> int:
    """A 32-bit seed for example ``index`` of dataset ``seed`` (torch's CPU generator keeps
    only 32 bits, so ``seed * 2**32 + index`` would collide)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class MixDataset(torch.utils.data.Dataset):
    """``size`` examples of ``seconds`` at ``rate``; item i depends only on (seed, i)."""

    def __init__(self, schema: Schema | str | Path, library: Library | str | Path | None,
                 size: int, rate: int, seconds: float, seed: int = 0):
        self.schema = schema if isinstance(schema, Schema) else load_schema(schema)
        if library is not None and not isinstance(library, Library):
            library = Library(library)
        self.provider = LibraryProvider(library)
        self.size, self.rate, self.seed = size, rate, seed
        self.length = int(round(seconds * rate))
        self.names = tuple(t.name for t in self.schema.targets)

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> Example:
        gen = torch.Generator().manual_seed(example_seed(self.seed, index))
        return render(self.schema, self.provider, gen, self.rate, self.length)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        example = self.example(index)
        return example.mixture, example.targets


def preview(schema: str | Path, library: str | Path | None, out: str | Path, n: int,
            seed: int, rate: int, seconds: float) -> list[Path]:
    """Write ``n`` examples: ``example-000/mixture.wav``, one WAV per target, params.json."""
    lib = Library(library) if library is not None and Path(library).exists() else None
    dataset = MixDataset(schema, lib, n, rate, seconds, seed)
    written = []
    for i in range(n):
        example = dataset.example(i)
        folder = Path(out) / f"example-{i:03d}"
        write_audio(folder / "mixture.wav", example.mixture, rate)
        for name, stem in zip(example.names, example.targets, strict=True):
            write_audio(folder / f"{name}.wav", stem, rate)
        (folder / "params.json").write_text(json.dumps(example.params, indent=1, default=str))
        written.append(folder)
    return written
