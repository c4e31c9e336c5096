"""The Fourier-frame start of the rate-specific ends, and the core bottleneck."""

from __future__ import annotations

import pytest
import torch

from stemloop.adapt.metrics import si_sdr
from stemloop.adapt.model import build_model
from stemloop.adapt.upscale import transplant
from stemloop.config import load_config


def model(rate: int, *sets: str):
    torch.manual_seed(0)
    return build_model(load_config("smoke", ["model.latent_rate=250", *sets]).model, rate)


@pytest.mark.parametrize("rate,channels", [(8000, 128), (16000, 256)])
def test_fourier_ends_reconstruct_exactly_before_training(rate, channels):
    separator = model(rate, f"model.channels={channels}", "model.encoder_init=fourier")
    audio = torch.randn(2, 1, rate) * 0.1
    with torch.no_grad():
        rebuilt = separator.decoder(separator.encoder(audio), audio.shape[-1])
    assert float((rebuilt - audio).abs().max()) < 1e-5


def test_random_ends_do_not_reconstruct_and_fewer_filters_give_a_lowpass_start():
    t = torch.arange(16000) / 16000
    low = (0.3 * torch.sin(2 * torch.pi * 440 * t))[None, None]  # inside the lowest quarter
    noise = torch.randn(1, 1, 16000) * 0.1
    with torch.no_grad():
        random = model(16000, "model.channels=256")
        partial = model(16000, "model.channels=64", "model.encoder_init=fourier")
        assert float(si_sdr(random.decoder(random.encoder(low), 16000), low)) < 0.0
        assert float(si_sdr(partial.decoder(partial.encoder(low), 16000), low)) > 30.0
        # White noise keeps only the quarter of its energy below 2 kHz: about -4.8 dB.
        kept = float(si_sdr(partial.decoder(partial.encoder(noise), 16000), noise))
        assert kept == pytest.approx(-4.8, abs=1.0)


def test_bottleneck_narrows_the_core_and_survives_transplant():
    narrow = model(8000, "model.channels=32", "model.bottleneck=8", "model.hidden=8")
    wide = model(8000, "model.channels=32", "model.hidden=8")
    assert narrow.core.blocks[0].intra.rnn.input_size == 8
    assert sum(p.numel() for p in narrow.core.parameters()) < sum(
        p.numel() for p in wide.core.parameters())
    moved = transplant(narrow, 16000)
    assert torch.equal(moved.core.squeeze.weight, narrow.core.squeeze.weight)
    assert moved(torch.randn(1, 1, 16000)).shape == (1, 2, 1, 16000)
