"""Which shipped checkpoint serves a recording, and what happens when none is shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from stemloop.adapt.separate import FULL_BAND_MODEL, GENERAL_MODEL, prepare, shipped_model
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
    wide = write_wav("tone-48k.wav", sine(440, 48000, 1.0), 48000)  # a band up to 24 kHz
    assert prepare(wide, config).model.parent == FULL_BAND_MODEL


@pytest.mark.skipif(not (FULL_BAND_MODEL.is_dir() and Path("/usr/share/tuxpaint/stamps").is_dir()
                         and Path("/usr/share/games/warzone2100/music").is_dir()),
                    reason="no full-band model, or the full-band set's packages: make sysdeps")
def test_the_full_band_model_keeps_the_air_and_changes_nothing_below_it():
    """On a held-out full-band voice over recorded music, the band head gives the dialogue
    what lies above 11 kHz; on a band-limited copy, the general model's stems."""
    import torch

    from bench.demo_set import FULLBAND_SPECS
    from stemloop.adapt.apply import AtRate
    from stemloop.adapt.checkpoint import load_checkpoint
    from stemloop.datasets.archival_mix import MixSpec, build_mixture
    from stemloop.datasets.audio import resample

    general = AtRate(load_checkpoint(GENERAL_MODEL / "model-44100.pt").model, 48000)
    full = AtRate(load_checkpoint(FULL_BAND_MODEL / "model-44100.pt").model, 48000)
    stems, _ = build_mixture(MixSpec(**{**FULLBAND_SPECS[0].__dict__, "seconds": 12.0}))
    mixture = torch.from_numpy(sum(stems.values())).float()[None, None]
    truth = torch.from_numpy(stems["dialogue"])

    def air(x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(x.double())
        spec[..., : int(11500 / 48000 * x.shape[-1])] = 0
        return torch.fft.irfft(spec, x.shape[-1])

    with torch.no_grad():
        kept = {name: float((air(m(mixture)[0, 0, 0]) * air(truth)).sum()
                            / air(truth).pow(2).sum())
                for name, m in (("general", general), ("full", full))}
        dull = resample(resample(mixture, 48000, 16000), 16000, 48000)
        same = (full(dull) - general(dull)).abs().max()
    assert kept["general"] < 0.05 < 0.5 < kept["full"], kept
    assert same < 1e-3


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
