"""Which shipped checkpoint serves a recording, and what happens when none is shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from stemloop.adapt.separate import GENERAL_MODEL, prepare, shipped_model
from stemloop.errors import UserError


def test_the_rung_at_the_rate_else_the_next_above_else_the_top(tmp_path: Path):
    for rate in (16000, 48000):
        (tmp_path / f"model-{rate}.pt").write_bytes(b"")
    (tmp_path / "MODEL_CARD.md").write_text("not a checkpoint")
    pick = {rate: shipped_model(rate, tmp_path).name for rate in (8000, 16000, 22050, 96000)}
    assert pick == {8000: "model-16000.pt", 16000: "model-16000.pt",
                    22050: "model-48000.pt", 96000: "model-48000.pt"}
    assert shipped_model(16000, tmp_path / "empty") is None


def test_separate_without_a_model_uses_the_shipped_one_or_says_how_to_get_one(write_wav):
    from stemloop.config import load_config
    from tests.signals import sine

    path = write_wav("tone.wav", sine(440, 16000, 1.0))
    config = load_config("smoke")
    if shipped_model(16000) is None:
        with pytest.raises(UserError, match="train-general"):
            prepare(path, config)
    else:
        job = prepare(path, config)
        assert job.model is not None and job.model.parent == GENERAL_MODEL


def test_the_archive_recipe_gives_four_stems_that_sum_to_the_recording(
        prefect_harness, tmp_path: Path, capsys):
    """`stemloop separate FILE --recipe archive` on the bundled example: dialogue, music,
    noise and other at the recording's rate, length and channels, summing to it; the
    dialogue is the two-stem path's own."""
    import json

    import numpy as np
    import soundfile as sf

    from stemloop.flows.cli.main import main

    example = Path(__file__).resolve().parents[1] / "examples" / "archive-dialogue.flac"
    out = tmp_path / "stems"
    assert main(["separate", str(example), "--recipe", "archive", "--out", str(out)]) == 0
    mixture, rate = sf.read(example, always_2d=True)
    files = json.loads((out / "separation.json").read_text())["stems"]
    assert list(files) == ["dialogue", "music", "noise", "other"]
    stems = {name: sf.read(path, always_2d=True) for name, path in files.items()}
    assert all(r == rate and a.shape == mixture.shape for a, r in stems.values())
    total = sum(a for a, _ in stems.values())
    assert np.abs(total - mixture).max() < 1e-4
    energy = {name: float((a ** 2).mean()) for name, (a, _) in stems.items()}
    assert energy["dialogue"] > energy["noise"] and energy["music"] > 0.0
    two = tmp_path / "two"
    assert main(["separate", str(example), "--out", str(two)]) == 0
    dialogue, _ = sf.read(json.loads((two / "separation.json").read_text())["stems"]["dialogue"],
                          always_2d=True)
    assert np.abs(dialogue - stems["dialogue"][0]).max() < 1e-5
    capsys.readouterr()
