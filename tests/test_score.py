"""Reference-free detectors on synthetic signals with artefacts of known size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemloop.adapt.metrics import sdr, si_sdr, si_sdr_improvement
from stemloop.adapt.quality import artefact_penalty
from stemloop.adapt.score import (
    banding_db,
    click_rate,
    consistency_db,
    detect_clicks,
    dnsmos,
    ghosting,
    noise_floor_db,
    score_stems,
    seam_jump_db,
    unmatched,
)
from tests.signals import speechlike

RATE = 16000
EXAMPLE = Path(__file__).resolve().parent.parent / "examples"


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def with_clicks(seed: int, count: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio, a little hiss, and ``count`` clicks 1-5 samples long whose peaks
    lie 0 to 15 dB below the signal's peak (clicks at least 25 ms apart)."""
    rng = np.random.default_rng(100 + seed)
    x = speechlike(RATE, 10.0, seed) + 0.002 * rng.standard_normal(10 * RATE)
    positions = np.sort(rng.choice(np.arange(400, len(x) - 400, 400), count, replace=False))
    for p in positions:
        amplitude = 0.3 * 10 ** (-rng.uniform(0, 15) / 20) * rng.choice([-1, 1])
        length = rng.integers(1, 6)
        x[p: p + length] += amplitude * np.exp(-np.arange(length) / 1.5)
    return x, positions


def test_click_detection_f1_at_least_0_9():
    hits = false_alarms = misses = 0
    tolerance = int(0.002 * RATE)
    for seed in range(6):
        x, truth = with_clicks(seed)
        found = detect_clicks(t(x), RATE)
        matched = sum(np.any(np.abs(found - p) <= tolerance) for p in truth)
        hits += matched
        misses += len(truth) - matched
        false_alarms += sum(not np.any(np.abs(truth - f) <= tolerance) for f in found)
    precision, recall = hits / (hits + false_alarms), hits / (hits + misses)
    f1 = 2 * precision * recall / (precision + recall)
    assert f1 >= 0.9, (precision, recall)


def test_clean_speech_and_hiss_have_no_clicks():
    rng = np.random.default_rng(0)
    x = speechlike(RATE, 10.0, 3) + 0.01 * rng.standard_normal(10 * RATE)
    assert click_rate(t(x), RATE) <= 1.0  # at most one false event per minute
    x, _ = with_clicks(1)
    assert click_rate(t(x), RATE) == pytest.approx(20 * 6, rel=0.15)  # 20 in 10 s


def test_added_clicks_leave_out_the_recordings_own_crackle():
    """A stem passing 10 of the recording's clicks through and making 8 of its own: all 18
    count as clicks, only the 8 as added (what the loop's artefact part penalises)."""
    rng = np.random.default_rng(7)
    speech = speechlike(RATE, 10.0, 3) + 0.002 * rng.standard_normal(10 * RATE)
    crackle, made = np.zeros_like(speech), np.zeros_like(speech)
    slots = rng.permutation(np.arange(800, len(speech) - 800, 800))
    for p in slots[:20]:
        crackle[p] = 0.2 * rng.choice([-1, 1])
    for p in slots[20:28]:
        made[p] = 0.2 * rng.choice([-1, 1])
    passed = crackle * np.isin(np.arange(len(speech)), slots[:10])
    mixture = speech + crackle
    stem = speech + passed + made
    scores = score_stems({"dialogue": t(stem[None]), "rest": t((mixture - stem)[None])}, RATE,
                         t(mixture[None]), use_dnsmos=False)["dialogue"]
    assert scores["clicks_per_min"] == pytest.approx(18 * 6, abs=6)
    assert scores["clicks_added_per_min"] == pytest.approx(8 * 6, abs=6)
    assert artefact_penalty(scores) == pytest.approx(scores["clicks_added_per_min"] / 10
                                                     + 10 * max(0.0, scores["ghosting"]))
    assert "clicks_added_per_min" not in score_stems({"dialogue": t(stem[None])}, RATE,
                                                     use_dnsmos=False)["dialogue"]


def test_unmatched_events():
    events = np.array([10, 100, 200])
    assert unmatched(events, np.array([12, 150]), reach=5) == 2
    assert unmatched(events, np.array([95, 205]), reach=5) == 1
    assert unmatched(events, np.array([], dtype=int), reach=5) == 3
    assert unmatched(np.array([], dtype=int), np.array([12]), reach=5) == 0


@pytest.mark.parametrize("level_db", [-65.0, -50.0, -35.0])
def test_noise_floor_within_2_db(level_db):
    rng = np.random.default_rng(1)
    x = speechlike(RATE, 8.0, 2, peak=0.5) + 10 ** (level_db / 20) * rng.standard_normal(8 * RATE)
    assert noise_floor_db(t(x), RATE) == pytest.approx(level_db, abs=2.0)


def test_ghosting_rises_monotonically_with_leakage():
    rng = np.random.default_rng(2)
    target = t(speechlike(RATE, 10.0, 4))
    pitch = 2 * np.pi * np.cumsum(220 + 60 * np.sin(np.arange(10 * RATE) / RATE)) / RATE
    complement = t(0.1 * np.sin(pitch) + 0.03 * rng.standard_normal(10 * RATE))
    scores = [ghosting(target, complement + leak * target, RATE)
              for leak in (0.0, 0.03, 0.1, 0.2, 0.4, 0.8)]
    assert all(b > a for a, b in zip(scores, scores[1:], strict=False)), scores
    assert abs(scores[0]) < 0.05 and scores[-1] > 0.4


@pytest.mark.parametrize("period", [64, 192])
def test_banding_fires_on_a_comb_at_the_hop_and_not_on_clean_speech(period):
    speech = speechlike(RATE, 10.0, 5)
    comb = np.zeros_like(speech)
    comb[::period] = 1.0
    # A comb 40 dB below the speech in energy.
    comb *= np.sqrt(np.mean(speech**2) / np.mean(comb**2)) * 10 ** (-40 / 20)
    clean = banding_db(t(speech), RATE, period)
    banded = banding_db(t(speech + comb), RATE, period)
    assert clean < 1.5 and banded > clean + 3.0, (clean, banded)


def test_seam_jump_shows_hard_chunk_edges_only():
    x = speechlike(RATE, 6.0, 6) + 0.01 * np.random.default_rng(5).standard_normal(6 * RATE)
    period = RATE // 2
    smooth = seam_jump_db(t(x), RATE, period)
    stepped = x.copy()
    for start in range(period, len(x), period):
        stepped[start:] += 0.05 * (-1) ** (start // period)  # a DC step at every seam
    assert abs(smooth) < 3.0 and seam_jump_db(t(stepped), RATE, period) > 10.0


def test_consistency_is_minus_inf_when_exact_and_measures_a_known_error():
    rng = np.random.default_rng(3)
    a, b = t(rng.standard_normal((1, 1000))), t(rng.standard_normal((1, 1000)))
    assert consistency_db([a, b], a + b) == float("-inf")
    assert consistency_db([a, b * 0.9], a + b) == pytest.approx(
        10 * np.log10(float((0.1 * b).pow(2).sum() / (a + b).pow(2).sum())), abs=1e-9)


def test_dnsmos_prefers_the_true_dialogue_over_the_noisy_mixture():
    dialogue, rate = sf.read(EXAMPLE / "truth" / "dialogue.flac", dtype="float32")
    mixture, _ = sf.read(EXAMPLE / "archive-dialogue.flac", dtype="float32")
    clean, noisy = dnsmos(t(dialogue), rate), dnsmos(t(mixture), rate)
    assert set(clean) == {"sig", "bak", "ovrl"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["bak"] > noisy["bak"] + 1.0 and clean["ovrl"] > noisy["ovrl"] + 0.5


def test_metrics_on_known_signals():
    rng = np.random.default_rng(4)
    ref = t(rng.standard_normal((2, 4000)))
    noise = t(rng.standard_normal((2, 4000)))
    noise = noise / noise.norm(dim=-1, keepdim=True) * ref.norm(dim=-1, keepdim=True) * 0.1
    assert torch.allclose(sdr(ref + noise, ref), torch.full((2,), 20.0, dtype=ref.dtype),
                          atol=1e-6)
    assert float(si_sdr(3.0 * ref, ref).min()) > 80  # scale does not matter
    mixture = ref + t(rng.standard_normal((2, 4000)))
    assert torch.allclose(si_sdr_improvement(mixture, ref, mixture), torch.zeros(2,
                                                                                 dtype=ref.dtype))


def test_score_command_writes_json_and_rejects_mismatched_input(tmp_path, capsys):
    import json
    import shutil

    from stemloop.flows.cli.main import main

    stems = tmp_path / "stems"
    shutil.copytree(EXAMPLE / "truth", stems)
    mixture = str(EXAMPLE / "archive-dialogue.flac")
    assert main(["score", str(stems), "--mixture", mixture, "--set", "score.dnsmos=false"]) == 0
    written = json.loads((stems / "scores.json").read_text())["scores"]
    assert written["noise"]["clicks_per_min"] == pytest.approx(42.0, abs=3)  # 14 clicks in 20 s
    assert written["dialogue"]["clicks_per_min"] == 0.0
    assert written["noise"]["clicks_added_per_min"] == 0.0  # the recording's own clicks
    assert written["mixture"]["consistency_db"] is None  # exact: -inf is written as null
    capsys.readouterr()
    sf.write(stems / "short.wav", np.zeros(100, np.float32), 22050)
    assert main(["score", str(stems), "--out", str(tmp_path / "x.json")]) == 2
    assert "differs from the other stems" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert main(["score", str(tmp_path / "nowhere")]) == 2
