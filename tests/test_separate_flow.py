"""End to end: the real ``separate`` Prefect flow and ``stemloop separate``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from adapt.checkpoint import save_checkpoint
from adapt.config import load_config
from adapt.model import build_model
from flows.cli import main

RATE = 16000


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = load_config("smoke").model.model_copy(update={"targets": ["voice", "music"]})
    return save_checkpoint(tmp_path / "tiny.pt", build_model(config, RATE))


@pytest.fixture
def stereo_mix(write_wav) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(3).normal(0, 0.1, (int(2.5 * RATE), 2)).astype(np.float32)
    return write_wav("mix.wav", data, RATE), data


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_flow_writes_stems_record_and_reuses_its_cache(prefect_harness, tiny_checkpoint,
                                                       stereo_mix, tmp_path: Path):
    from flows.separate import separate

    source, data = stereo_mix
    before = digest(source)
    out = tmp_path / "stems"
    record = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert list(record["stems"]) == ["voice", "music", "rest"]
    stems = [sf.read(record["stems"][n], dtype="float32")[0] for n in record["stems"]]
    assert all(s.shape == data.shape for s in stems)
    assert np.abs(sum(stems) - data).max() < 1e-6
    assert json.loads((out / "separation.json").read_text()) == record
    assert record["frames"] == data.shape[0] and record["model_rate"] == [RATE]
    assert digest(source) == before
    again = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert again["seconds"] == record["seconds"]  # the persisted result, not a rerun
    (out / "voice.wav").unlink()
    redone = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert (out / "voice.wav").is_file() and redone["stems"] == record["stems"]


@pytest.mark.slow
def test_cli_separates_and_prints_stems(prefect_harness, tiny_checkpoint, stereo_mix,
                                        tmp_path: Path, capsys):
    source, data = stereo_mix
    out = tmp_path / "cli-out"
    code = main(["separate", str(source), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--strength", "2", "--config", "smoke", "--set", "separate.chunk_seconds=0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["music.wav", "rest.wav",
                                                     "separation.json", "voice.wav"]
    record = json.loads((out / "separation.json").read_text())
    assert record["strength"] == 2.0 and record["chunk_seconds"] == 0.5
    assert "voice.wav" in printed and "separation.json" in printed
    total = sum(sf.read(out / f"{n}.wav", dtype="float32")[0] for n in ("voice", "music", "rest"))
    assert np.abs(total - data).max() < 1e-6


def test_strength_on_a_maskless_model_is_refused(stereo_mix, tmp_path: Path):
    from adapt.errors import UserError
    from adapt.separate import prepare

    config = load_config("smoke")
    maskless = save_checkpoint(tmp_path / "direct.pt",
                               build_model(config.model.model_copy(update={"head": "maskless"})))
    assert prepare(stereo_mix[0], config, maskless).strength == 1.0
    with pytest.raises(UserError, match="maskless"):
        prepare(stereo_mix[0], config, maskless, strength=2.0)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_cli_mistakes_are_one_line_exit_2_and_write_nothing(tiny_checkpoint, stereo_mix,
                                                           tmp_path: Path, capsys):
    source, _ = stereo_mix
    before = digest(source)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04junk")
    out = tmp_path / "never"
    cases = [
        (["separate", str(tmp_path / "missing.wav"), "--model", str(tiny_checkpoint)],
         "no such file"),
        (["separate", str(source), "--model", str(junk)], "not a readable checkpoint"),
        (["separate", str(source), "--model", str(tmp_path / "none.pt")], "no such checkpoint"),
        (["separate", str(source), "--model", str(tiny_checkpoint), "--strength", "-1"],
         "strength"),
        (["separate", str(source), "--recipe", str(tmp_path / "none.yaml")], "cannot read"),
    ]
    for argv, words in cases:
        code = main([*argv, "--out", str(out)])
        message = capsys.readouterr().err.strip()
        assert code == 2, argv
        assert words in message and len(message.splitlines()) == 1, message
    assert not out.exists()
    assert digest(source) == before
