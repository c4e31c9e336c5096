"""The separator: shapes at every rate, sum to mixture, strength, core windowing, checkpoints."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from stemloop.adapt.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights_into,
    save_checkpoint,
)
from stemloop.adapt.model import (
    RATE_AGNOSTIC,
    RATE_SPECIFIC,
    SampleRateError,
    build_model,
    frame_stride,
)
from stemloop.config import SUPPORTED_RATES, ModelConfig, load_config
from stemloop.errors import UserError


def tiny(**changes) -> ModelConfig:
    base = load_config("smoke").model
    return base.model_copy(update=changes)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_every_rate_round_trips_shapes(rate: int):
    model = build_model(tiny(), rate).eval()
    time = int(0.37 * rate) + 3  # not a multiple of anything
    mixture = torch.randn(2, 3, time)
    with torch.inference_mode():
        stems = model(mixture)
    assert stems.shape == (2, 2, 3, time)
    assert torch.allclose(stems.sum(dim=1), mixture, atol=1e-6)
    realised = rate / model.stride
    assert abs(realised / 250 - 1) < 0.003  # 250.57 frames/s at 22.05 and 44.1 kHz


def test_core_and_head_are_the_same_at_every_rate():
    low, high = build_model(tiny(), 16000), build_model(tiny(), 48000)
    shapes = {k: v.shape for k, v in low.state_dict().items() if k.startswith(RATE_AGNOSTIC)}
    assert shapes == {k: v.shape for k, v in high.state_dict().items()
                      if k.startswith(RATE_AGNOSTIC)}
    inner = {k: v for k, v in low.state_dict().items() if k.startswith(RATE_AGNOSTIC)}
    result = high.load_state_dict(inner, strict=False)  # transplant: every shape fits
    assert sorted(result.missing_keys) == ["decoder.conv.weight", "encoder.conv.weight"]
    names = [n for n, _ in high.named_parameters()]
    assert all(n.startswith(RATE_SPECIFIC + RATE_AGNOSTIC) for n in names)
    assert high.encoder.conv.weight.shape[-1] == 3 * low.encoder.conv.weight.shape[-1]


def test_wrong_rate_raises():
    model = build_model(tiny(), 16000)
    with pytest.raises(SampleRateError, match="built for 16000"):
        model.check_rate(44100)
    with pytest.raises(SampleRateError, match="not supported"):
        frame_stride(12345, 250)
    with pytest.raises(SampleRateError, match="off"):
        frame_stride(8000, 3000)  # stride 3 → 2667 frames/s, 11 % off


@pytest.mark.parametrize("head", ["mask", "maskless"])
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_heads_and_rnns_sum_to_mixture(head: str, rnn: str):
    model = build_model(tiny(head=head, rnn=rnn, targets=["a", "b"]), 8000).eval()
    mixture = torch.randn(1, 2, 4000)
    with torch.inference_mode():
        stems = model(mixture)
    assert stems.shape == (1, 3, 2, 4000)
    assert model.sources == ["a", "b", "background"]
    assert float((stems.sum(1) - mixture).abs().max()) < 1e-6


def test_strength_moves_target_energy_monotonically():
    model = build_model(tiny(), 16000).eval()
    mixture = torch.randn(1, 1, 16000)
    energies = []
    with torch.inference_mode():
        for strength in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
            energies.append(float(model(mixture, strength)[0, 0].pow(2).sum()))
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)), energies
    assert energies[-1] < 0.2 * energies[0]


def test_core_joins_chunks_with_a_normalised_window():
    """Patent 1.3c: chunks re-join without steps, so nothing repeats at the chunk period."""
    core = build_model(tiny(chunk_frames=32), 16000).core
    n, length = 9, 16 * 10
    ones = core._overlap_add(torch.ones(1, n, 32, 4), length)
    assert float((ones - 1).abs().max()) < 1e-6  # normalisation is exact
    alternating = (torch.arange(n) % 2).float()[None, :, None, None].expand(1, n, 32, 4)
    joined = core._overlap_add(alternating, length)[0, 16:-16, 0]
    jumps = joined.diff().abs()
    # A plain (rectangular) overlap-add would step by 0.5 at every chunk edge.
    assert float(jumps.max()) < 0.11 and float(joined.max() - joined.min()) > 0.9


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path):
    model = build_model(tiny(head="maskless", targets=["voice", "music"]), 22050).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {"step": 7, "loss": 0.5})
    loaded = load_checkpoint(path)
    assert loaded.train_state == {"step": 7, "loss": 0.5}
    assert loaded.model.sample_rate == 22050 and loaded.model.config == model.config
    assert "torch" in loaded.versions
    mixture = torch.randn(1, 2, 5000)
    with torch.inference_mode():
        assert torch.equal(model(mixture), loaded.model(mixture))


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/stemloop-pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"model_class": "x", "payload": Boom()}, buffer)
    path.write_bytes(buffer.getvalue())
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(Boom()))
    for bad in (path, plain):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not Path("/tmp/stemloop-pwned").exists()


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path: Path):
    model = build_model(tiny(), 16000)
    good = save_checkpoint(tmp_path / "good.pt", model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    junk = tmp_path / "junk.pt"
    junk.write_text("junk\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model_class": "demucs.HTDemucs", "state_dict": {}}, foreign)
    wrong_shapes = tmp_path / "shapes.pt"
    payload = torch.load(good, weights_only=True)
    payload["model_config"]["channels"] = 16
    torch.save(payload, wrong_shapes)
    cases = {truncated: "corrupt", junk: "corrupt", foreign: "demucs.HTDemucs",
             wrong_shapes: "usable model", tmp_path / "missing.pt": "no such"}
    for path, words in cases.items():
        with pytest.raises(CheckpointError, match=words) as info:
            load_checkpoint(path)
        assert isinstance(info.value, UserError) and str(path) in str(info.value)


def test_weights_load_only_into_the_same_architecture_and_rate(tmp_path: Path):
    config = tiny(sample_rate=8000)
    source = save_checkpoint(tmp_path / "a.pt", build_model(config))
    target = load_weights_into(build_model(config), source)
    loaded = load_checkpoint(source).model.state_dict().values()
    assert all(torch.equal(a, b)
               for a, b in zip(target.state_dict().values(), loaded, strict=True))
    for other in (config.model_copy(update={"channels": 2 * config.channels}),
                  config.model_copy(update={"sample_rate": 16000})):
        with pytest.raises(CheckpointError, match="a.pt.*another shape"):
            load_weights_into(build_model(other), source)
