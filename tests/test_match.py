"""Matching recovers known degradations from a synthetic recording, and writes a schema."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from stemloop.config import CONFIG_DIR
from stemloop.datasets import augment
from stemloop.datasets.audio import write_audio
from stemloop.datasets.loader import synthetic_ir
from stemloop.datasets.match import analyse, match_recording
from stemloop.datasets.mixbus_yaml import load_schema

CASES = [  # rate, lowcut, highcut, hum, rt60, floor dBFS
    (16000, 300.0, 3000.0, 59.9, 0.6, -62.0),
    (22050, 90.0, 5000.0, 50.1, 1.0, -55.0),
]


def degraded(tmp_path, rate, lowcut, highcut, hum_hz, rt60, floor_db, seconds=24.0, wet=0.4,
             seed=1):
    """Pink-noise bursts (0.3 s on, 0.9 s off) in a room, band-limited, with hum and hiss.

    The room is mixed ``wet`` against the direct sound: one impulse response colours the
    spectrum by several dB, which moves the band edges the estimator sees."""
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * rate)
    gate = torch.zeros(n)
    for start in np.arange(0.2, seconds - 1, 1.2):
        gate[int(start * rate): int((start + 0.3) * rate)] = 1.0
    x = augment.convolve(augment.coloured_noise(n, rate, -3.0, gen) * gate,
                         synthetic_ir(rt60, gen, rate), wet)
    x = augment.highpass(augment.lowpass(x, rate, highcut, 6.0), rate, lowcut, 4.0)
    x = 0.5 * x / x.abs().max()
    x = x + 10 ** (-50 / 20) * augment.hum(n, rate, hum_hz, 6, 4.0, gen)
    x = x + 10 ** (floor_db / 20) * augment.coloured_noise(n, rate, 0.0, gen)
    return write_audio(tmp_path / "recording.wav", x[None], rate)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("rate, lowcut, highcut, hum_hz, rt60, floor_db", CASES)
def test_analysis_recovers_degradations(tmp_path, rate, lowcut, highcut, hum_hz, rt60,
                                        floor_db, seed):
    """Tolerances: upper band edge ±10 %, lower ±15 % (one room's colouration moves the
    low edge most: over seeds 1–8 the upper edges fell within -7…+4 %, the lower within
    -13…+14 %), hum ±0.2 Hz, RT60 ±20 %."""
    m = analyse(degraded(tmp_path, rate, lowcut, highcut, hum_hz, rt60, floor_db, seed=seed))
    assert m.highcut_hz == pytest.approx(highcut, rel=0.10)
    assert m.lowcut_hz == pytest.approx(lowcut, rel=0.15)
    assert m.hum_hz == pytest.approx(hum_hz, abs=0.2)
    assert m.rt60_s == pytest.approx(rt60, rel=0.20)
    # the quiet frames hold hiss and hum (-50 dBFS sine sum), so the floor sits at or above both
    assert floor_db - 1 <= m.noise_floor_dbfs <= -45


def test_full_band_clean_recording_has_no_edges_and_no_hum(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x = 0.1 * augment.coloured_noise(16000 * 10, 16000, -3.0, gen)
    m = analyse(write_audio(tmp_path / "clean.wav", x[None], 16000))
    assert m.lowcut_hz is None and m.highcut_hz is None and m.hum_hz is None


def test_match_writes_a_valid_schema_with_fitted_ranges(tmp_path):
    recording = degraded(tmp_path, *CASES[0])
    out = tmp_path / "matched.yaml"
    report = match_recording(recording, CONFIG_DIR / "mixbus" / "dialogue.yaml", out)
    schema = load_schema(out)
    post = {e.kind: dict(e.params) for e in schema.post}
    low, high = post["lowpass"]["cutoff_hz"][0]
    assert low <= report["highcut_hz"] <= high and 0.85 * 3000 < low < high < 1.15 * 3000
    data = yaml.safe_load(out.read_text())
    noise = {n["name"]: n for n in data["buses"][1]["children"]}
    assert noise["hum"]["probability"] == 1.0
    f0_low, f0_high = noise["hum"]["feed"]["params"]["f0_hz"]
    assert f0_low < 59.9 < f0_high
    rooms = [e for e in data["buses"][0]["children"][0]["children"][0]["effects"]
             if e["type"] == "room"]
    assert rooms[0]["rt60"][0] < 0.6 * 1.2 and rooms[0]["rt60"][1] > 0.6 * 0.8


def test_match_cli_with_a_stem_sets_its_level(tmp_path):
    from stemloop.flows.cli.main import main

    recording = degraded(tmp_path, *CASES[1])
    stem = write_audio(tmp_path / "dialogue.wav", 0.05 * augment.coloured_noise(
        22050 * 3, 22050, -3.0, torch.Generator().manual_seed(0))[None], 22050)
    out = tmp_path / "matched.yaml"
    assert main(["dataset", "match", str(recording), "--stem", f"dialogue={stem}",
                 "--out", str(out)]) == 0
    voices = yaml.safe_load(out.read_text())["buses"][0]["children"][0]
    low, high = voices["lufs"]
    assert high - low == pytest.approx(4.0) and -40 < low < -15
    assert main(["dataset", "match", str(recording), "--stem", "nonsense",
                 "--out", str(out)]) == 2


def test_a_clip_shorter_than_the_analysis_window_is_analysed(tmp_path, tiny_library):
    """A 0.2 s clip (the smoke preset allows 0.1 s) made the recording's spectrum shorter
    than the library reference's: `fp and xp are not of the same length` in `adapt`."""
    rng = np.random.default_rng(1)
    clip = tmp_path / "clip.wav"
    write_audio(clip, torch.from_numpy(rng.normal(0, 0.1, (1, 3200)).astype(np.float32)), 16000)
    found = analyse(clip, tiny_library)
    assert np.isfinite(found.lufs) or found.lufs == float("-inf")
