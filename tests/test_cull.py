"""Moving-RMS cull: exact segments on known bursts, bridging, minimum duration, rising threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemloop.config import load_config
from stemloop.datasets.cull import (
    active_runs,
    coverage,
    cull,
    moving_rms_db,
    segments_table,
    threshold_for,
)

RATE = 8000


def bursts(spans: list[tuple[float, float, float]], seconds: float = 6.0,
           floor: float = 1e-4) -> torch.Tensor:
    """(1, time) noise floor with tone bursts (start s, stop s, amplitude)."""
    rng = np.random.default_rng(0)
    x = floor * rng.standard_normal(int(seconds * RATE))
    t = np.arange(len(x)) / RATE
    for start, stop, amplitude in spans:
        inside = (t >= start) & (t < stop)
        x[inside] += amplitude * np.sin(2 * np.pi * 220 * t[inside])
    return torch.from_numpy(x)[None]


def config(**overrides):
    sets = [f"cull.{k}={v}" for k, v in overrides.items()]
    return load_config(overrides=sets).cull


def test_moving_rms_is_0_db_at_the_loudest_window_and_tracks_level():
    level = moving_rms_db(bursts([(1.0, 2.0, 0.5), (3.0, 4.0, 0.05)]), RATE, 0.05, 0.025)
    assert level.max() == 0.0
    assert np.median(level[45:75]) == pytest.approx(0.0, abs=0.1)
    assert np.median(level[125:155]) == pytest.approx(-20.0, abs=0.2)


def test_cull_finds_bursts_to_within_a_window():
    segments = cull(bursts([(1.0, 2.0, 0.5), (3.0, 3.8, 0.3)]), RATE,
                    config(threshold_db=-20, min_duration_s=0.3, bridge_s=0.0))
    assert len(segments) == 2
    for segment, (start, stop) in zip(segments, [(1.0, 2.0), (3.0, 3.8)], strict=True):
        assert segment.start / RATE == pytest.approx(start, abs=0.05)
        assert segment.stop / RATE == pytest.approx(stop, abs=0.05)


def test_short_runs_are_dropped_and_short_dips_bridged():
    # Syllables: 200 ms on, 100 ms off — each too short alone, one phrase once bridged.
    syllables = [(1.0 + 0.3 * k, 1.2 + 0.3 * k, 0.5) for k in range(5)]
    audio = bursts(syllables)
    assert cull(audio, RATE, config(threshold_db=-20, min_duration_s=0.3, bridge_s=0.0)) == []
    bridged = cull(audio, RATE, config(threshold_db=-20, min_duration_s=0.3, bridge_s=0.25))
    assert len(bridged) == 1
    assert bridged[0].start / RATE == pytest.approx(1.0, abs=0.05)
    assert bridged[0].stop / RATE == pytest.approx(2.4, abs=0.05)


def test_the_threshold_rises_each_iteration_and_coverage_falls():
    cfg = config(threshold_db=-30, threshold_step_db=6, min_duration_s=0.2, bridge_s=0.0)
    assert [threshold_for(cfg, k) for k in range(3)] == [-30, -24, -18]
    assert threshold_for(cfg, 100) == 0.0
    audio = bursts([(0.5, 1.5, 0.5), (2.0, 3.0, 0.05), (3.5, 4.5, 0.02)])  # 0, -20, -28 dB
    covered = [coverage(cull(audio, RATE, cfg, k), audio.shape[-1]) for k in range(3)]
    assert covered[0] == pytest.approx(3 / 6, abs=0.03)
    assert covered[1] == pytest.approx(2 / 6, abs=0.03)
    assert covered[2] == pytest.approx(1 / 6, abs=0.03)


def test_runs_helper_on_frames():
    active = np.array([1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    assert active_runs(active, bridge=2, minimum=1) == [(0, 4), (8, 12)]
    assert active_runs(active, bridge=0, minimum=3) == [(10, 12)]
    assert active_runs(np.zeros(5, dtype=bool), 2, 1) == []


def test_silence_and_stereo():
    assert cull(torch.zeros(1, RATE), RATE, config()) == []
    stereo = torch.cat([bursts([(1.0, 2.0, 0.5)]), bursts([(3.0, 4.0, 0.5)])])
    segments = cull(stereo, RATE, config(threshold_db=-12, bridge_s=0.0))
    assert len(segments) == 2  # channels pooled: either channel active counts
    table = segments_table("dialogue", segments, RATE)
    assert list(table.columns) == ["stem", "start", "stop", "start_s", "stop_s", "level_db"]
    assert (table["stop"] > table["start"]).all()


def test_a_restorers_marks_become_material_and_are_kept_apart():
    """`target` marks (the target is clean here) become target segments even where the cull
    would not take them; `complement` marks never count as target; `exclude` wins over both."""
    from stemloop.datasets.cull import cull_iteration, marked

    target = bursts([(0.5, 2.5, 0.5), (4.0, 4.6, 0.02)])  # loud speech, then a faint voice
    complement = bursts([(0.0, 6.0, 0.05)])
    plain = load_config()
    guided = load_config(overrides=["loop.guidance.target=[[4.0, 4.6]]",
                                    "loop.guidance.complement=[[1.0, 1.5]]",
                                    "loop.guidance.exclude=[[4.4, 4.6]]"])

    def seconds(segments, lo, hi):
        return sum(max(0, min(s.stop, hi * RATE) - max(s.start, lo * RATE))
                   for s in segments) / RATE

    before = cull_iteration(target, complement, RATE, plain, 0)
    after = cull_iteration(target, complement, RATE, guided, 0,
                           marked(complement, RATE, [(1.0, 1.5)]))
    assert seconds(before["target"], 4.0, 4.6) < 0.1  # too faint for the cull alone
    assert seconds(after["target"], 4.0, 4.4) == pytest.approx(0.4)  # marked clean: taken
    assert seconds(after["target"], 4.4, 4.6) == 0  # but a leak mark wins
    assert seconds(before["target"], 1.0, 1.5) == pytest.approx(0.5)
    assert seconds(after["target"], 1.0, 1.5) == 0  # "no target here": never target...
    assert seconds(after["complement"], 1.0, 1.5) == pytest.approx(0.5)  # ...but background
    assert seconds(after["complement"], 4.0, 4.6) == 0  # a clean-target mark is no background
    levels = [s.level_db for s in marked(target, RATE, [(4.0, 4.6), (9.0, 9.5)])]
    assert len(levels) == 1 and -40 < levels[0] < -20  # 0.02 against 0.5: about -28 dB


def test_a_target_that_never_pauses_takes_the_complements_own_stretches():
    """A music bed under the whole recording: where the target is absent there is no
    complement at all; for a continuous target (`cull.continuous_targets`) the complement
    stem's own confident stretches become the background, for dialogue they do not (its
    complement during speech carries leaked dialogue)."""
    from stemloop.datasets.cull import cull_iteration

    target = bursts([(0.0, 6.0, 0.3)])  # never pauses
    complement = bursts([(0.5, 2.0, 0.05), (3.0, 5.5, 0.05)])

    def complement_seconds(cfg):
        return sum(s.stop - s.start for s in cull_iteration(target, complement, RATE, cfg,
                                                              0)["complement"]) / RATE

    assert complement_seconds(load_config()) == 0.0  # dialogue: none, as before
    music = load_config(overrides=["loop.target=music"])
    assert complement_seconds(music) == pytest.approx(4.0, abs=0.15)
    off = load_config(overrides=["loop.target=music", "cull.continuous_targets=[]"])
    assert complement_seconds(off) == 0.0
    # a music bed that pauses long enough keeps the rule: background only where it is absent
    pausing = bursts([(0.0, 3.0, 0.3)])
    found = cull_iteration(pausing, complement, RATE, music, 0)["complement"]
    assert all(s.start >= 3.0 * RATE for s in found) and found
