"""Speech-free stretches (datasets/vad.py): the loop's background taken from the recording
itself where a voice activity detector hears nobody, on real speech and real music."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stemloop.config import load_config
from stemloop.datasets.audio import read_audio
from stemloop.datasets.cull import cull_iteration
from stemloop.datasets.vad import speech_free

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "truth"


def recording() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """8 s of the example's voice over its music, then 6 s of the music alone; the crude
    dialogue of a model that keeps all the music (the failure this exists for)."""
    voice, rate = read_audio(EXAMPLE / "dialogue.flac")
    music, _ = read_audio(EXAMPLE / "music.flac")
    talk, alone = 8 * rate, 14 * rate
    truth = torch.cat([voice[:, :talk], torch.zeros(1, alone - talk)], dim=1)
    bed = 0.3 * music[:, :alone]
    return truth + bed, truth, truth + bed, rate


def test_speech_free_stretches_are_the_music_alone_not_the_voice():
    mixture, truth, crude, rate = recording()
    found = speech_free(mixture, rate, 0.1, 0.2, 0.3, also=crude)
    inside = torch.zeros(mixture.shape[-1], dtype=torch.bool)
    for s in found:
        inside[s.start:s.stop] = True
    assert float(inside[8 * rate:].float().mean()) > 0.7  # most of the music-only tail
    voice = float(truth[:, inside].pow(2).sum() / mixture[:, inside].pow(2).sum())
    assert voice < 10 ** (-20 / 10)  # the voice at least 20 dB below the recording there
    assert all(s.level_db <= 0.0 for s in found)


def test_the_loop_takes_its_background_from_those_stretches():
    mixture, _, crude, rate = recording()
    config = load_config(overrides=["cull.background=speech_free"])
    free = speech_free(mixture, rate, 0.1, 0.2, 0.3, also=crude)
    segments = cull_iteration(crude, mixture - crude, rate, config, 0, free)
    assert segments["complement"]
    assert all(s.start >= min(f.start for f in free) for s in segments["complement"])
    longest = int(config.loop.segment_max_s * rate)  # chop's last piece may take a short rest
    assert all(s.stop - s.start < 1.5 * longest for s in segments["complement"])
    covered = sum(s.stop - s.start for s in segments["complement"])
    assert covered == sum(f.stop - f.start for f in free)
    # the crude rule finds no background at all here: the crude dialogue is never quiet
    crude_rule = cull_iteration(crude, mixture - crude, rate, load_config(), 0)
    assert sum(s.stop - s.start for s in crude_rule["complement"]) < covered / 4


def test_both_rules_together_cover_what_either_covers():
    from stemloop.datasets.cull import Segment, union

    assert union([Segment(0, 10, -3.0), Segment(30, 40, -9.0)],
                 [Segment(5, 20, -6.0), Segment(40, 45, -1.0)]) == [
        Segment(0, 20, -3.0), Segment(30, 45, -1.0)]
    mixture, _, crude, rate = recording()
    # a crude dialogue that is quiet in the last second: the crude rule finds that second
    quiet_end = crude.clone()
    quiet_end[:, -rate:] *= 1e-4
    free = speech_free(mixture, rate, 0.1, 0.2, 0.3, also=crude)
    both = cull_iteration(quiet_end, mixture - quiet_end, rate,
                          load_config(overrides=["cull.background=both"]), 0, free)
    covered = sum(s.stop - s.start for s in both["complement"])
    assert covered >= sum(f.stop - f.start for f in free)
    assert max(s.stop for s in both["complement"]) > mixture.shape[-1] - 0.05 * rate


def test_the_iterations_background_files_are_cut_from_the_recording(tmp_path, write_wav):
    """The crude complement here is silent (the model kept everything as dialogue), so
    background that sounds can only have come from the recording."""
    from stemloop.datasets.adaptset import build_iteration
    from stemloop.datasets.mixbus_yaml import load_schema

    mixture, _, crude, rate = recording()
    files = {"dialogue": write_wav("dialogue.wav", crude[0].numpy(), rate),
             "background": write_wav("background.wav", (mixture - crude)[0].numpy(), rate)}
    schema = load_schema(EXAMPLE.parents[1] / "configs" / "mixbus" / "dialogue.yaml")
    config = load_config(overrides=["cull.background=speech_free"])
    record = build_iteration(files, "dialogue", 0, config, tmp_path / "iter-000", schema,
                             tmp_path / "holdout.json")
    held = json.loads((tmp_path / "holdout.json").read_text())["files"]["complement"]
    written = [*(tmp_path / "iter-000" / "complement").glob("*.wav"), *map(Path, held)]
    music = float(mixture[:, 8 * rate:].pow(2).mean())
    assert written and all(float(read_audio(p)[0].pow(2).mean()) > 0.1 * music for p in written)
    seconds = sum(read_audio(p)[0].shape[-1] for p in written) / rate
    assert seconds > 3.0 and record.seconds["complement"] > 0.0
    crude_rule = build_iteration(files, "dialogue", 0, load_config(), tmp_path / "crude",
                                 schema, tmp_path / "holdout-crude.json")
    assert crude_rule.seconds["complement"] < record.seconds["complement"] / 4
