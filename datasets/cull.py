"""Cull crude stems with moving-RMS windows (patent 2.3): keep what is confidently there.

A stem's level is measured as RMS over equal overlapping windows. A window is
*active* when its level is within ``threshold_db`` of the stem's loudest window
(relative, so the cull does not depend on the recording's gain). Dips shorter
than ``bridge_s`` inside an active stretch are bridged first — syllable gaps
would otherwise break speech into runs too short to keep — then runs shorter
than ``min_duration_s`` are dropped. The threshold rises each iteration
("a further RMS level greater than the prior"), so later iterations train on
ever more confident material.

The whole rule of one iteration is ``cull_iteration``: the target's confident segments;
the complement's, where the target is absent; both within a restorer's guidance
(regions to include or exclude) and cut into pieces of at most ``loop.segment_max_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stemloop.config import Config, CullConfig

Region = tuple[float, float]  # seconds


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of a stem and their RMS level in dB re the stem's loudest."""

    start: int
    stop: int
    level_db: float


def threshold_for(config: CullConfig, iteration: int) -> float:
    """The cull threshold (dB re the loudest window) at ``iteration``; never above 0 dB."""
    return min(0.0, config.threshold_db + iteration * config.threshold_step_db)


def moving_rms_db(audio: torch.Tensor, rate: int, window_s: float, hop_s: float) -> np.ndarray:
    """RMS of ``(channels, time)`` audio over windows ``[k·hop, k·hop + window)``, in dB re
    the loudest window (channels pooled). Digital silence is -inf."""
    x = audio.detach().double().reshape(-1, audio.shape[-1]).pow(2).mean(dim=0).numpy()
    window, hop = max(1, int(round(window_s * rate))), max(1, int(round(hop_s * rate)))
    if len(x) < window:
        window = len(x)
    cumulative = np.concatenate([[0.0], np.cumsum(x)])
    starts = np.arange(0, len(x) - window + 1, hop)
    power = (cumulative[starts + window] - cumulative[starts]) / window
    peak = power.max() if len(power) else 0.0
    with np.errstate(divide="ignore"):
        return 10 * np.log10(power / peak) if peak > 0 else np.full(len(power), -np.inf)


def active_runs(active: np.ndarray, bridge: int, minimum: int) -> list[tuple[int, int]]:
    """Runs ``[first, last]`` of True frames after bridging False gaps shorter than ``bridge``
    frames between them; runs spanning fewer than ``minimum`` frames are dropped."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    runs: list[list[int]] = []
    for start, stop in zip(starts, stops, strict=True):
        if runs and start - runs[-1][1] - 1 < bridge:
            runs[-1][1] = stop
        else:
            runs.append([start, stop])
    return [(a, b) for a, b in runs if b - a + 1 >= minimum]


def cull(audio: torch.Tensor, rate: int, config: CullConfig, iteration: int = 0) -> list[Segment]:
    """Confident segments of a stem at ``iteration``'s threshold."""
    level = moving_rms_db(audio, rate, config.window_s, config.hop_s)
    hop = max(1, int(round(config.hop_s * rate)))
    window = min(max(1, int(round(config.window_s * rate))), audio.shape[-1])
    # A run of n frames spans (n - 1)·hop + window samples.
    minimum = int(np.ceil(max(0.0, config.min_duration_s * rate - window) / hop)) + 1
    bridge = int(np.ceil(config.bridge_s * rate / hop))
    runs = active_runs(level >= threshold_for(config, iteration), bridge, minimum)
    return [Segment(first * hop, min(audio.shape[-1], last * hop + window),
                    _mean_db(level[first: last + 1])) for first, last in runs]


def _mean_db(levels: np.ndarray) -> float:
    finite = levels[np.isfinite(levels)]
    return float(10 * np.log10(np.mean(10 ** (finite / 10)))) if len(finite) else float("-inf")


def coverage(segments: list[Segment], length: int) -> float:
    """Fraction of ``length`` samples the segments cover (they never overlap)."""
    return sum(s.stop - s.start for s in segments) / length if length else 0.0


def segments_table(stem: str, segments: list[Segment], rate: int) -> pd.DataFrame:
    """The rows ``cull.parquet`` holds for one stem."""
    return pd.DataFrame({"stem": stem, "start": [s.start for s in segments],
                         "stop": [s.stop for s in segments],
                         "start_s": [s.start / rate for s in segments],
                         "stop_s": [s.stop / rate for s in segments],
                         "level_db": [s.level_db for s in segments]},
                        columns=["stem", "start", "stop", "start_s", "stop_s", "level_db"])


def cull_iteration(target: torch.Tensor, complement: torch.Tensor, rate: int, config: Config,
                   iteration: int, speech_free: list[Segment] | None = None
                   ) -> dict[str, list[Segment]]:
    """The confident ``target`` and ``complement`` segments of an iteration's stems. With
    ``speech_free`` stretches (datasets/vad.py) the complement's segments are those
    (``cull.background: speech_free``) or those and the crude rule's (``both``)."""
    guide, piece = config.loop.guidance, int(config.loop.segment_max_s * rate)
    segments = {}
    only_free = speech_free is not None and config.cull.background == "speech_free"
    # a restorer's marks: the target is clean here; no target here (the caller passes those
    # among ``speech_free``); neither stem takes what the other's marks claim
    marks = {"target": list(guide.target), "complement": list(guide.complement)}
    for name, stem in (("target", target), ("complement", complement)):
        other = marks["complement" if name == "target" else "target"]
        found = [] if name == "complement" and only_free else apply_guidance(
            cull(stem, rate, config.cull, iteration), rate, list(guide.include),
            list(guide.exclude) + other)
        if name == "complement" and not only_free:
            found = continuous_or_absent(found, target, rate, config, iteration)
        if name == "complement" and speech_free is not None:
            found = union(found, apply_guidance(speech_free, rate, list(guide.include),
                                                list(guide.exclude) + other))
        if name == "target" and marks["target"]:
            found = union(found, apply_guidance(marked(stem, rate, marks["target"]), rate, [],
                                                list(guide.exclude)))
        segments[name] = chop(found, piece)
    return segments


def marked(stem: torch.Tensor, rate: int, regions: list[Region]) -> list[Segment]:
    """Regions (seconds) of ``stem`` as segments, each at its RMS level in dB re the
    stem's loudest second (within the stem's length; empty regions dropped)."""
    length = stem.shape[-1]
    power = stem.detach().double().reshape(-1, length).pow(2).mean(dim=0)
    second = max(1, min(rate, length))
    peak = float(power.unfold(0, second, max(1, second // 2)).mean(dim=1).max())
    found = []
    for lo, hi in sorted(regions):
        a, b = max(0, int(lo * rate)), min(length, int(hi * rate))
        if b > a:
            level = float(power[a:b].mean())
            found.append(Segment(a, b, 10 * np.log10(level / peak) if level > 0 and peak > 0
                                 else -np.inf))
    return found


def union(a: list[Segment], b: list[Segment]) -> list[Segment]:
    """Segments covering what ``a`` or ``b`` covers, overlapping ones merged (the level of a
    merged one is the louder of its parts')."""
    merged: list[Segment] = []
    for s in sorted([*a, *b], key=lambda s: s.start):
        if merged and s.start <= merged[-1].stop:
            last = merged[-1]
            merged[-1] = Segment(last.start, max(last.stop, s.stop), max(last.level_db,
                                                                           s.level_db))
        else:
            merged.append(s)
    return merged


def apply_guidance(segments: list[Segment], rate: int, include: list[Region],
                   exclude: list[Region]) -> list[Segment]:
    """Segments clipped to the ``include`` regions (if any) with ``exclude`` regions cut out."""
    spans = [(s.start, s.stop, s.level_db) for s in segments]
    if include:
        spans = [(max(a, int(lo * rate)), min(b, int(hi * rate)), db) for a, b, db in spans
                 for lo, hi in include if min(b, int(hi * rate)) > max(a, int(lo * rate))]
    for lo, hi in exclude:
        cut_lo, cut_hi = int(lo * rate), int(hi * rate)
        kept = []
        for a, b, db in spans:
            kept += [(a, min(b, cut_lo), db)] if a < cut_lo else []
            kept += [(max(a, cut_hi), b, db)] if b > cut_hi else []
        spans = [(a, b, db) for a, b, db in kept if b > a]
    return [Segment(a, b, db) for a, b, db in spans]


def chop(segments: list[Segment], length: int) -> list[Segment]:
    """Segments longer than ``length`` samples cut into pieces of at most ``length``
    (the last piece of each takes the remainder if it is at least half as long)."""
    pieces = []
    for s in segments:
        cuts = list(range(s.start, s.stop, length)) + [s.stop]
        if len(cuts) > 2 and cuts[-1] - cuts[-2] < length // 2:
            cuts.pop(-2)
        pieces += [Segment(a, b, s.level_db) for a, b in zip(cuts, cuts[1:], strict=False)]
    return pieces


def continuous_or_absent(found: list[Segment], target: torch.Tensor, rate: int,
                         config: Config, iteration: int) -> list[Segment]:
    """Complement segments where the target is absent (``where_target_absent``); for a
    target that may never pause (``cull.continuous_targets``: a music bed, steady noise),
    when that leaves under ``cull.continuous_min_s``, the complement's own confident
    segments instead (RemixIT: the teacher's estimate of the rest, remixed under other
    stretches of the target). Without them the step trains with library material as its
    only complement and learns to take the recording's own noise into its target."""
    absent = where_target_absent(found, target, rate, config, iteration)
    seconds = sum(s.stop - s.start for s in absent) / rate
    if config.loop.target in config.cull.continuous_targets and \
            seconds < config.cull.continuous_min_s:
        return found
    return absent


def where_target_absent(found: list[Segment], target: torch.Tensor, rate: int,
                         config: Config, iteration: int) -> list[Segment]:
    """Complement segments with the target's active stretches cut out: background material
    without dialogue in it. The target counts as active down to ``cull.absent_margin_db``
    below its own cull threshold, so faint leaked dialogue is cut out too. Nothing is put
    back when little remains: a complement taken during speech carries the teacher's
    leaked dialogue (5 to 14 dB below the background on the demo mixtures), and training
    on it teaches the model that the recording's voice is background."""
    lenient = config.cull.model_copy(update={
        "threshold_db": max(-120.0, config.cull.threshold_db - config.cull.absent_margin_db),
        "min_duration_s": 0.0})
    present = [(s.start / rate, s.stop / rate) for s in cull(target, rate, lenient, iteration)]
    shortest = config.cull.min_duration_s * rate
    return [s for s in apply_guidance(found, rate, [], present) if s.stop - s.start >= shortest]
