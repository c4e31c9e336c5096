"""Upscaling: transplanted core is identical, ends are warm-started, the ladder runs end to end."""

from __future__ import annotations

import pytest
import torch

from stemloop.adapt.apply import AtRate
from stemloop.adapt.metrics import si_sdr
from stemloop.adapt.model import RATE_SPECIFIC, build_model
from stemloop.adapt.train import Run, train, validate
from stemloop.adapt.upscale import climb_ladder, transplant
from stemloop.config import load_config
from stemloop.datasets.audio import resample
from tests.signals import toy_batch


def data(rate: int):
    return (lambda step: toy_batch(step, 2, rate, 0.5)), [toy_batch(10_000, 2, rate, 0.5)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = load_config("smoke", ["train.val_every=10", "train.lr=0.005",
                                   "upscale.new_layers_steps=10", "upscale.all_steps=10"])
    torch.manual_seed(0)
    model = build_model(config.model, 8000)
    batches, val = data(8000)
    train(model, batches, val, config.train, Run(tmp_path_factory.mktemp("base")), steps=40)
    return config, model


def test_transplant_copies_the_core_bit_for_bit(trained):
    _, model = trained
    high = transplant(model, 16000)
    assert high.sample_rate == 16000 and high.stride == 2 * model.stride
    low_state, high_state = model.state_dict(), high.state_dict()
    inherited = [n for n in low_state if not n.startswith(RATE_SPECIFIC)]
    assert inherited and all(torch.equal(low_state[n], high_state[n]) for n in inherited)
    assert high_state["encoder.conv.weight"].shape[-1] == 2 * low_state["encoder.conv.weight"
                                                                        ].shape[-1]


def test_resampled_ends_start_close_to_the_low_rate_model(trained):
    _, model = trained
    high = transplant(model, 16000)
    mixture = toy_batch(5, 1, 8000, 0.5)[0]
    with torch.no_grad():
        low_out = model(mixture)[:, 0]
        high_out = resample(high(resample(mixture, 8000, 16000))[:, 0], 16000, 8000)
    assert float(si_sdr(high_out, low_out).min()) > 10.0  # same separation, before any training


def test_ladder_runs_end_to_end_and_reports_each_rung(trained, tmp_path):
    config, model = trained
    final, reports = climb_ladder(model, [8000, 16000, 32000], data, config.upscale,
                                  config.train, tmp_path)
    assert final.sample_rate == 32000 and [r["to_rate"] for r in reports] == [16000, 32000]
    for report in reports:
        assert report["new_layers_steps"] <= 10 and report["all_steps"] <= 10
        assert report["final_si_sdr"] >= report["new_layers_si_sdr"] - 1e-6
    assert validate(final, data(32000)[1])["val/si_sdr"] == pytest.approx(
        reports[-1]["final_si_sdr"], abs=1e-4)
    # the baseline a caller compares with: the rung below, resampled in and out
    assert reports[0]["resampled_si_sdr"] == pytest.approx(
        validate(AtRate(model, 16000), data(16000)[1])["val/si_sdr"], abs=1e-4)
    assert (tmp_path / "32000-all" / "last.pt").exists()


def test_a_lower_rate_model_runs_at_a_higher_rate_like_the_engine_runs_it(trained):
    _, model = trained
    mixture = toy_batch(7, 2, 16000, 0.5)[0]  # (batch, 1, time) at 16 kHz
    with torch.no_grad():
        out = AtRate(model, 16000)(mixture)
        low = model(resample(mixture, 16000, 8000))[:, 0]
    assert out.shape == (2, len(model.sources), 1, mixture.shape[-1])
    torch.testing.assert_close(out.sum(dim=1), mixture, atol=1e-5, rtol=0)
    assert float(si_sdr(resample(out[:, 0], 16000, 8000), low).min()) > 20.0
