"""The self-adaptation dataset of one iteration (patent 2.3, 4.3; RemixIT-style remixing).

From the culled stems of an iteration:
- the confident target segments become the Sources, the confident complement
  segments the Noise, remixed across segments by the mix bus (any target segment
  over any complement segment, each at a drawn level);
- labelled library material, with the recording's degradations matched onto it,
  is always mixed in (``library_share`` of the examples) so the model does not
  drift, minus the classes a restorer says the recording lacks;
- a fraction of the segments is held out and never trained on: remixed at known
  ratios they make the pseudo-reference set (the teacher's own voice over held-out
  background: it measures agreement with the crude stems, not truth);
- the held-out background also goes under library voices degraded like the recording
  (the matched schema): the matched-reference set, whose target is known exactly, so
  it gives a true SI-SDR on the recording's own background every iteration. It steers
  fine-tuning (validation) and the quality estimate.

Guidance from a restorer: time regions to include or exclude, extra clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from stemloop.config import Config, deep_merge
from stemloop.datasets.adaptschema import adaptation_schema, reference_schema
from stemloop.datasets.audio import read_audio, resample, write_audio
from stemloop.datasets.cull import (
    Segment,
    apply_guidance,
    coverage,
    cull_iteration,
    marked,
    segments_table,
    union,
)
from stemloop.datasets.mixbus import Schema
from stemloop.datasets.mixbus_yaml import dump_schema, schema_from_dict, write_schema
from stemloop.files import atomic_path, write_text_atomic


class Holdout(BaseModel, frozen=True):
    """A run's ``holdout.json``: the held-out segments' files per side ("target",
    "complement"), their time regions (never trained on), and the matched-reference schema."""

    files: dict[str, list[str]]
    regions: list[tuple[float, float]]  # seconds
    reference: str | None = None  # absent in holdout files from before the matched reference

    @classmethod
    def read(cls, path: str | Path) -> Holdout:
        return cls.model_validate_json(Path(path).read_text())

    def write(self, path: Path) -> None:
        write_text_atomic(path, self.model_dump_json(indent=1))


class IterationDataset(BaseModel, frozen=True):
    """What ``build_iteration`` made: the training schema, the run's holdout file, and per
    side the culled coverage (fraction of the recording), seconds and segment count."""

    schema_path: str
    holdout: str
    coverage: dict[str, float]
    seconds: dict[str, float]
    segments: dict[str, int]


@dataclass(frozen=True)
class SegmentSplit:
    train: list[Segment]
    holdout: list[Segment]


def split_holdout(segments: list[Segment], fraction: float, seed: int) -> SegmentSplit:
    """Hold out about ``fraction`` of the segments' duration (whole segments, drawn by seed);
    at least one segment stays for training whenever there are two or more."""
    if fraction <= 0 or len(segments) < 2:
        return SegmentSplit(list(segments), [])
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(segments), generator=gen).tolist()
    total = sum(s.stop - s.start for s in segments)
    held, size = [], 0
    for index in order[:-1]:
        if size >= fraction * total:
            break
        held.append(index)
        size += segments[index].stop - segments[index].start
    chosen = set(held)
    return SegmentSplit([s for i, s in enumerate(segments) if i not in chosen],
                        [s for i, s in enumerate(segments) if i in chosen])


def write_segments(audio: torch.Tensor, rate: int, segments: list[Segment], folder: Path,
                   prefix: str) -> list[Path]:
    """Each segment of ``(channels, time)`` audio as a mono WAV at the recording's own rate
    (the loader resamples to whatever rate a model trains at)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, segment in enumerate(segments):
        clip = audio[:, segment.start: segment.stop].mean(dim=0, keepdim=True)
        paths.append(write_audio(folder / f"{prefix}-{k:04d}.wav", clip, rate))
    return paths


def pseudo_reference(targets: list[Path], complements: list[Path], rate: int, seconds: float,
                     count: int, ratios_db: tuple[float, ...], seed: int
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out segments remixed at known ratios: batches ``(mixture (1, 1, T), sources
    (1, 2, 1, T))`` whose first source is the held-out target segment."""
    if not targets or not complements:
        return []
    gen = torch.Generator().manual_seed(seed)
    clips_t = [_clip(p, rate) for p in targets]
    clips_c = [_clip(p, rate) for p in complements]
    length = int(seconds * rate)
    pairs = []
    for k in range(count):
        target = _crop(clips_t[k % len(clips_t)], length, gen)
        rest = _crop(clips_c[int(torch.randint(len(clips_c), (1,), generator=gen))], length, gen)
        ratio = ratios_db[k % len(ratios_db)]
        gain = (target.pow(2).mean() / rest.pow(2).mean().clamp(min=1e-12)).sqrt()
        rest = rest * gain * 10 ** (-ratio / 20)
        sources = torch.stack([target, rest])[None]
        pairs.append((sources.sum(dim=1), sources))
    return pairs


def _clip(path: Path, rate: int) -> torch.Tensor:
    audio, file_rate = read_audio(path)
    return resample(audio, file_rate, rate)


def _crop(clip: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """``(1, length)``: a random crop, or the clip looped to length when shorter."""
    if clip.shape[-1] < length:
        clip = clip.repeat(1, length // clip.shape[-1] + 1)
    start = int(torch.randint(clip.shape[-1] - length + 1, (1,), generator=gen))
    return clip[:, start: start + length]


# ---------------------------------------------------------------- one iteration's dataset

def build_iteration(stems: dict[str, Path], target: str, iteration: int, config: Config,
                    folder: Path, base_schema: Schema, holdout_file: Path,
                    reference_voices: dict[str, Any] | None = None) -> IterationDataset:
    """Cull an iteration's stems and write its dataset into ``folder``.

    Iteration 0 also chooses the held-out segments and records them in
    ``holdout_file`` (their files and time regions); later iterations never train on
    those regions. The matched reference's voices match ``reference_voices``
    (see ``reference_speech``).
    """

    import pandas as pd
    audio = {name: read_audio(path) for name, path in stems.items()}
    rate = audio[target][1]
    mine = audio[target][0]
    rest = sum(a for name, (a, _) in audio.items() if name != target)
    guide, loop = config.loop.guidance, config.loop
    # Background material: the crude complement where the crude target is quiet (crude), the
    # recording itself where nobody speaks (speech_free, datasets/vad.py), or both: the
    # signal the background segments are cut from is the recording in its speech-free
    # stretches and the crude complement elsewhere.
    background, free = rest, None
    if config.cull.background != "crude":
        from stemloop.datasets.vad import speech_free

        free = speech_free(mine + rest, rate, config.cull.vad_threshold,
                           config.cull.vad_margin_s, config.cull.min_duration_s, also=mine)
    if guide.complement:  # a restorer's "no target here": speech-free by their ear
        free = union(free or [], marked(rest, rate, list(guide.complement)))
    if free is not None:
        background = rest.clone()
        for s in free:  # the recording itself there
            background[:, s.start:s.stop] += mine[:, s.start:s.stop]
    segments = cull_iteration(mine, rest, rate, config, iteration, free)
    from stemloop.datasets.audio import loudness

    levels = (loudness(mine, rate), loudness(rest, rate))
    if free and sum(s.stop - s.start for s in free) >= rate:
        # The background's level is that of the recording where nobody speaks: the crude
        # complement's is low exactly where the model keeps the background in the dialogue
        # (drama-nl-22k: -41 LUFS against -33 in its speech-free stretches), and examples
        # built at that level never show the model the background as loud as it is.
        quiet = torch.cat([background[:, s.start:s.stop] for s in free], dim=-1)
        levels = (levels[0], loudness(quiet, rate))
    levels = tuple(v if v == v and v > -70 else -30.0 for v in levels)
    if iteration == 0 or not holdout_file.exists():
        held = {name: split_holdout(segs, loop.holdout_fraction, config.train.seed + i)
                for i, (name, segs) in enumerate(segments.items())}
        holdout = {name: [str(p) for p in write_segments(
                       mine if name == "target" else background, rate, split.holdout,
                       holdout_file.parent / "holdout", name)]
                   for name, split in held.items()}
        regions = sorted((s.start / rate, s.stop / rate) for split in held.values()
                         for s in split.holdout)
        reference = holdout_file.with_name("reference.yaml")
        write_schema(reference, reference_schema(
            base_schema, [Path(p) for p in holdout["complement"]], target, levels[1],
            reference_voices, levels if loop.match_balance else None))
        Holdout(files=holdout, regions=regions, reference=str(reference)).write(holdout_file)
        train = {name: split.train for name, split in held.items()}
    else:
        regions = Holdout.read(holdout_file).regions
        train = {name: apply_guidance(segs, rate, [], regions) for name, segs in
                 segments.items()}
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: write_segments(mine if name == "target" else background, rate, segs,
                                  folder / name, name) for name, segs in train.items()}
    files["target"] += [Path(p) for p in guide.extra_clips]
    tables = [segments_table(name, segs, rate) for name, segs in train.items()]
    with atomic_path(folder / "cull.parquet") as tmp:
        pd.concat(tables).to_parquet(tmp)
    schema = adaptation_schema(files["target"], files["complement"], base_schema, target,
                               loop.library_share if files["target"] else 1.0,
                               list(guide.drop_library), levels, loop.background_share,
                               loop.match_balance)
    schema_path = folder / "schema.yaml"
    if guide.schema_overrides:  # a restorer's edits, by YAML key: validated as a whole again
        schema = schema_from_dict(deep_merge(dump_schema(schema), dict(guide.schema_overrides)),
                                  f"{schema_path} (loop.guidance.schema_overrides)", folder)
    write_schema(schema_path, schema)
    length = mine.shape[-1]
    return IterationDataset(
        schema_path=str(schema_path), holdout=str(holdout_file),
        coverage={name: coverage(train[name], length) for name in ("target", "complement")},
        seconds={name: sum(s.stop - s.start for s in segs) / rate for name, segs in train.items()},
        segments={name: len(segs) for name, segs in train.items()})


def reference_pairs(holdout_file: Path, library: str | None, rate: int, config: Config
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The matched-reference set at ``rate``: ``loop.reference_examples`` examples of the
    run's ``reference.yaml``, rendered once per rate and kept beside ``holdout.json``.
    Without held-out background (a recording whose dialogue never pauses) its noise is
    the matched library's alone."""

    from stemloop.datasets.batches import TrainingData

    record = Holdout.read(holdout_file)
    if not record.reference:
        return []
    loop = config.loop
    data = TrainingData(record.reference, library, [loop.target],
                        Path(holdout_file).parent / "reference", 1, loop.reference_examples,
                        loop.pseudo_seconds, loop.pseudo_seconds, 8, config.train.seed + 1)
    return data(rate)[1]


def holdout_pairs(holdout_file: Path, rate: int, config: Config
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pseudo-reference set at ``rate`` from a run's ``holdout.json``."""

    files = Holdout.read(holdout_file).files
    loop = config.loop
    return pseudo_reference([Path(p) for p in files["target"]],
                            [Path(p) for p in files["complement"]], rate, loop.pseudo_seconds,
                            loop.pseudo_pairs, tuple(loop.pseudo_ratios_db), config.train.seed)
