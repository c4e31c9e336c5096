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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from stemloop.config import Config, deep_merge
from stemloop.datasets.audio import read_audio, resample, write_audio
from stemloop.datasets.cull import Segment, apply_guidance, coverage, cull_iteration, segments_table
from stemloop.datasets.mixbus import (
    Feed,
    Node,
    Schema,
    Target,
    edit_node,
    find_node,
    map_nodes,
    with_param,
)
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


def _lufs_range(lufs: float) -> tuple[float, float]:
    """A loudness range drawn within ±4 dB of ``lufs`` (never above -1 LUFS)."""
    return (float(lufs - 4), float(min(lufs + 4, -1)))


def _at_level(node: Node, lufs: float) -> Node:
    return replace(node, lufs=_lufs_range(lufs), rel_db=None)  # a level replaces a relative one


def match_balance(schema: Schema, levels: tuple[float, float],
                  background_share: float) -> Schema:
    """``schema`` with the recording's balance in its library examples: the main library
    voice at the recording's dialogue level and library music at its background level (both
    ±4 dB), and library music only in the examples without the recording's own background
    (``1 - background_share`` of them), so the two are not stacked into a background louder
    than the recording's. A schema without these buses (a custom one) keeps what it lacks
    as it is."""
    voices = find_node(schema, "sources/voices")
    if voices is not None and voices.children:
        schema = edit_node(schema, "sources/voices", lambda bus: replace(bus, children=(
            _at_level(bus.children[0], levels[0]), *bus.children[1:])))
    if find_node(schema, "sources/music") is not None:
        schema = edit_node(schema, "sources/music", lambda music: replace(
            music, probability=music.probability * (1.0 - background_share),
            children=tuple(_at_level(c, levels[1]) for c in music.children)))
    return schema


def _bus(schema: Schema, path: str) -> Node:
    found = find_node(schema, path)
    if found is None:
        raise ValueError(f"the base schema has no bus named {path!r}")
    return found


def _scaled(nodes: tuple[Node, ...], factor: float, drop: list[str] = ()) -> tuple[Node, ...]:
    return tuple(replace(n, probability=0.0 if n.name in drop else factor * n.probability)
                 for n in nodes)


def _files(paths: list[Path], resolve: bool = False) -> Feed:
    return Feed(files=tuple(str(Path(p).resolve() if resolve else p) for p in paths))


VOICES = "sources/voices"
ROLES = (("voices", VOICES), ("background", "sources/music"), ("noise", "noise"))


def target_bus(schema: Schema, target_name: str) -> str:
    """The bus of ``schema`` (a dialogue schema: sources/voices, sources/music, noise) that
    holds the target the loop adapts: the one its ``targets`` name so (dialogue: the voices,
    music: the music, noise: the noise); a name it lacks is a voice target. A recipe's music
    or noise step adapts its model on the same kind of examples as the dialogue step: the
    recording's culled stems and the matched library, with the roles turned."""
    return next((t.bus for t in schema.targets if t.name == target_name), VOICES)


def _targets(target_name: str, bus: str) -> tuple[Target, ...]:
    return (Target(target_name, bus),
            *(Target(n, b) for n, b in ROLES if b != bus and n != target_name))


def _host(bus: str) -> str:
    """Where the recording's own background (the culled complement) goes: the noise bus,
    unless the noise is the target; then beside the sources."""
    return "sources" if bus == "noise" else "noise"


def adaptation_schema(targets: list[Path], complements: list[Path], matched: Schema,
                      target_name: str, library_share: float, drop: list[str],
                      levels: tuple[float, float] = (-22.0, -25.0),
                      background_share: float | None = None,
                      balance: bool = False) -> Schema:
    """A mix-bus schema: culled target segments over culled complement segments, plus the
    matched library schema's buses (minus ``drop``): library voices in ``library_share``
    of the examples, the recording's culled background in ``background_share`` of them
    (default ``1 - library_share``).

    ``matched`` is a dialogue schema (sources/voices, sources/music, noise) whose
    degradations were fitted to the recording; its post chain applies to every example.
    ``levels`` are the crude target's and complement's loudness (LUFS): culled segments
    are drawn within ±4 dB of them, so remixes keep the recording's balance; with
    ``balance`` the library examples keep it too (``match_balance``).
    """
    schema = matched
    target = target_bus(matched, target_name)
    share = 1.0 - library_share if background_share is None else background_share
    if balance and target == VOICES:  # with no culled background, library music is the only
        schema = match_balance(schema, levels, share if complements else 0.0)  # one: its level
    _bus(schema, VOICES), _bus(schema, "noise"), _bus(schema, target)  # else one line
    own = Node("recording", feed=_files(targets), lufs=_lufs_range(levels[0]),
               probability=1.0 - library_share)
    background = Node("recording", feed=_files(complements), lufs=_lufs_range(levels[1]),
                      probability=share)
    schema = edit_node(schema, "sources", lambda bus: replace(
        bus, children=_scaled(bus.children, library_share, drop)))
    if target != "noise":
        schema = edit_node(schema, "noise", lambda bus: replace(
            bus, children=_scaled(bus.children, 1.0, drop)))
    schema = edit_node(schema, _host(target), lambda bus: replace(
        bus, children=(*bus.children, *((background,) if complements else ()))))
    schema = edit_node(schema, target, lambda bus: replace(
        bus, probability=1.0, children=(*_scaled(bus.children, library_share), own)))
    return replace(schema, targets=_targets(target_name, target),
                   description="self-adaptation: culled stems remixed, plus matched library")


def restrict_speech(schema: Schema, query: dict[str, Any]) -> Schema:
    """Every library speech feed of ``schema`` also matches ``query`` (manifest columns)."""
    extra = {c: tuple(v) if isinstance(v, list | tuple) else (v,) for c, v in query.items()}

    def restrict(_: str, node: Node) -> Node:
        if node.feed is None or dict(node.feed.query).get("class") != ("speech",):
            return node
        feed_query = node.feed.query
        for column, values in extra.items():
            feed_query = with_param(feed_query, column, values)
        return replace(node, feed=replace(node.feed, query=feed_query))

    return map_nodes(schema, restrict)


def reference_speech(library: str | None, choice: str) -> dict[str, Any] | None:
    """The manifest query the matched reference's voices must match: natural recorded
    speech when ``choice`` is ``natural`` and the library holds at least two such voices;
    else None (every library voice, synthetic ones included)."""
    if choice != "natural" or not library:
        return None
    from stemloop.datasets.library import Library

    natural = {"subclass": "natural"}
    voices = Library(library).query(**{"class": "speech", **natural})["voice"]
    return natural if voices.nunique() >= 2 else None


def reference_schema(matched: Schema, background: list[Path], target_name: str,
                     level: float, speech: dict[str, Any] | None = None,
                     balance: tuple[float, float] | None = None) -> Schema:
    """The matched library schema with the recording's held-out ``background`` segments
    always in its noise bus (drawn within ±4 dB of ``level`` LUFS): library voices (those
    matching ``speech``, if given), a true target, degraded like the recording, over the
    recording's own background. With ``balance`` (the recording's dialogue and background
    levels) the voices are at its dialogue level and no library music is stacked on its
    background (``match_balance``)."""
    schema = matched
    target = target_bus(matched, target_name)
    if balance and target == VOICES:
        schema = match_balance(schema, balance, 1.0 if background else 0.0)
    if speech:
        schema = restrict_speech(schema, speech)
    if target != VOICES:  # the target's library material in every example
        schema = edit_node(schema, target, lambda bus: replace(bus, probability=1.0))
    if background:
        own = Node("recording", feed=_files(background, resolve=True), lufs=_lufs_range(level))
        schema = edit_node(schema, _host(target), lambda bus: replace(
            bus, children=(*bus.children, own)))
    return replace(schema, targets=_targets(target_name, target),
                   description="matched reference: library voices over the recording's "
                               "background")


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
