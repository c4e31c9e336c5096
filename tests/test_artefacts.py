"""The artefact model (patent 4.2): its dataset, its score, its recipe post-step, its CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stemloop.adapt.apply import ModelStep, separate_tensor
from stemloop.adapt.artefacts import (
    artefact_energy_db,
    identity_start,
    load_artefact_model,
    stem_estimator,
)
from stemloop.adapt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stemloop.adapt.metrics import si_sdr
from stemloop.adapt.model import build_model
from stemloop.adapt.recipe import load_recipe, model_files
from stemloop.config import CONFIG_DIR, load_config
from stemloop.datasets.artefactset import ArtefactData, render_artefact_pool
from stemloop.datasets.audio import resample
from stemloop.datasets.batches import render_pool
from stemloop.errors import UserError

GENERAL = Path(__file__).resolve().parent.parent / "models/general-dialogue-v2/model-16000.pt"
SCHEMA = CONFIG_DIR / "mixbus/dialogue.yaml"
TINY = ("model: {targets: [clean], complement: artefacts, channels: 8, hidden: 8, layers: 1,"
        " chunk_frames: 16}\n"
        "train: {steps: 4, batch_size: 2, segment_s: 0.5, warmup_steps: 0, val_every: 2,"
        " val_examples: 2, checkpoint_every: 2, pool_size: 3, pool_seconds: 1.0, workers: 1}\n"
        "score: {dnsmos: false}\n")


def tiny_model(targets: list[str], complement: str, seed: int):
    torch.manual_seed(seed)
    config = load_config("smoke", [f"model.targets={targets}".replace("'", ""),
                                   f"model.complement={complement}"]).model
    return build_model(config, 16000).eval()


# ---------------------------------------------------------------- the dataset

def test_artefact_pool_is_truth_plus_artefacts_summing_to_the_estimate(tiny_library, tmp_path):
    general = load_checkpoint(GENERAL).model
    estimate = stem_estimator(general, "dialogue")
    pool = render_artefact_pool(estimate, 16000, SCHEMA, tiny_library, 3, 1.0, 5, "dialogue")
    sources = render_pool(SCHEMA, tiny_library, 3, 16000, 1.0, 5, ["dialogue"]).float()
    assert pool.shape == (3, 2, 1, 16000)
    assert torch.equal(pool[:, 0], sources[:, 0])  # the clean part is the mix bus's truth
    with torch.inference_mode():
        direct = torch.stack([general(m[None])[0, 0] for m in sources.sum(dim=1)])
    scale = direct.abs().max()
    assert (pool.sum(dim=1) - direct).abs().max() <= 1e-6 * scale  # clean + artefacts = estimate
    ratio = pool[:, 1].pow(2).sum() / pool[:, 0].pow(2).sum()
    assert 1e-4 < ratio < 1.0  # a real model leaves real, but smaller, artefacts

    data = ArtefactData(estimate, 16000, SCHEMA, tiny_library, "dialogue", tmp_path, 3, 2,
                        1.0, 0.5, 2, 0)
    batches, val = data(16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefacts-16000-train.pt",
                                                          "artefacts-16000-val.pt"]
    assert torch.equal(data.pool(16000, "train"), data.pool(16000, "train"))  # from disk
    mixture, parts = batches(7)
    assert parts.shape == (2, 2, 1, 8000) and torch.allclose(parts.sum(dim=1), mixture)
    assert torch.equal(batches(7)[0], mixture)  # a pure function of the step
    assert len(val) == 1 and val[0][1].shape == (2, 2, 1, 8000)


# ---------------------------------------------------------------- the score

def band_split_model(cutoff_hz: float):
    """An artefact model by hand, no training: everything below ``cutoff_hz`` is clean,
    everything above is artefact. The Fourier-frame encoder makes decoder ∘ encoder the
    identity; a constant head (weights 0, bias ±30) passes or blocks each filter."""
    torch.manual_seed(0)
    config = load_config("artefacts").model.model_copy(update={"layers": 1, "hidden": 8})
    model = build_model(config, 16000).eval()
    kernel, count = 2 * model.stride, model.config.channels // 4
    index = torch.arange(model.config.channels) % (2 * count) % count
    frequency = (index + 0.5) * 16000 / kernel
    with torch.no_grad():
        model.head.proj.weight.zero_()
        model.head.proj.bias.copy_(torch.where(frequency < cutoff_hz, 30.0, -30.0))
    return model


def test_artefact_energy_rises_with_injected_artefact_and_matches_its_size():
    model = band_split_model(2000.0)
    rate, seconds = 16000, 5.0
    t = torch.arange(int(rate * seconds)) / rate
    clean = 0.1 * torch.sin(2 * math.pi * 500 * t)[None]
    spectrum = torch.fft.rfft(torch.randn(1, t.numel(), generator=torch.Generator().manual_seed(1)))
    spectrum[..., : int(4000 * seconds)] = 0  # the artefact lives above 4 kHz
    noise = torch.fft.irfft(spectrum, n=t.numel())
    noise = noise / noise.pow(2).mean().sqrt() * clean.pow(2).mean().sqrt()
    scores, expected = [], []
    for level_db in (-30.0, -20.0, -10.0, 0.0):
        artefact = noise * 10 ** (level_db / 20)
        stem = clean + artefact
        scores.append(artefact_energy_db(model, stem, rate, chunk_seconds=1.0))
        expected.append(10 * math.log10(artefact.pow(2).sum() / stem.pow(2).sum()))
    assert scores == sorted(scores) and len(set(scores)) == 4
    assert all(abs(s - e) < 1.0 for s, e in zip(scores, expected, strict=True)), (scores, expected)
    stem = clean + noise * 0.1
    one_pass = artefact_energy_db(model, stem, rate, chunk_seconds=10.0)
    assert abs(artefact_energy_db(model, stem, rate, chunk_seconds=1.0) - one_pass) < 0.05
    # at another rate the stem is resampled in and out; the ratio stays the same
    stem_32k = resample(stem, rate, 32000)
    assert abs(artefact_energy_db(model, stem_32k, 32000, chunk_seconds=1.0) - one_pass) < 1.0
    assert artefact_energy_db(model, torch.zeros(1, rate), rate) == -100.0


def test_identity_start_leaves_the_stem_alone_up_to_scale():
    torch.manual_seed(0)
    model = identity_start(build_model(load_config("artefacts").model))
    stem = torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(4)) * 0.1
    with torch.inference_mode():
        clean = model(stem)[0, 0]
        random_start = build_model(load_config("artefacts").model).eval()(stem)[0, 0]
    assert float(si_sdr(clean, stem[0])) > 25.0  # a scaled copy: nothing called artefact
    assert float(si_sdr(random_start, stem[0])) < 20.0  # what the random head does instead


def test_artefact_energy_refuses_a_model_that_is_not_an_artefact_model(tmp_path):
    with pytest.raises(CheckpointError, match="artefact model"):
        artefact_energy_db(tiny_model(["dialogue"], "rest", 0), torch.zeros(1, 1600), 16000)
    path = save_checkpoint(tmp_path / "general.pt", tiny_model(["dialogue"], "rest", 0))
    with pytest.raises(CheckpointError, match="general.pt: not an artefact model"):
        load_artefact_model(path)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        load_artefact_model(tmp_path / "missing.pt")


# ---------------------------------------------------------------- the recipe post-step

def test_recipe_post_step_moves_what_it_removes_to_the_complement(tmp_path):
    general = tiny_model(["dialogue"], "rest", 1)
    cleaner = tiny_model(["clean"], "artefacts", 2)
    save_checkpoint(tmp_path / "general.pt", general)
    save_checkpoint(tmp_path / "clean.pt", cleaner)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\nsteps:\n  - name: dialogue\n    models: [general.pt]\n"
                      "    post: [clean.pt]\nrest: background\n")
    tree = load_recipe(recipe, 16000)
    assert tree.names == ["dialogue", "background"]
    assert model_files(recipe) == [(tmp_path / "general.pt").resolve(),
                                   (tmp_path / "clean.pt").resolve()]
    audio = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3)) * 0.1
    with torch.inference_mode():
        stems = tree(audio)
        extracted = ModelStep(general, 16000)(audio)[0]
        removed = ModelStep(cleaner, 16000)(extracted)[1]
    assert removed.pow(2).sum() > 1e-3 * extracted.pow(2).sum()  # the post-step did something
    assert torch.allclose(stems[0], extracted - removed, atol=1e-6)
    assert torch.allclose(stems[1], audio - extracted + removed, atol=1e-6)
    assert (stems.sum(0) - audio).abs().max() < 1e-6
    chunked = separate_tensor(tree, audio, 4000, 3000)  # the streaming path sums exactly too
    assert (chunked.double().sum(0) - audio.double()).abs().max() < 1e-6

    recipe.write_text("name: t\nsteps:\n  - name: dialogue\n    models: [general.pt]\n"
                      "    post: [general.pt]\n")
    with pytest.raises(UserError, match="general.pt.*not an artefact model"):
        load_recipe(recipe, 16000)


def test_example_recipe_names_the_general_model_then_the_artefact_model():
    files = model_files(CONFIG_DIR / "recipes/shapes/dialogue-clean.yaml")
    assert [f.parent.name for f in files] == ["general-dialogue-v2", "artefacts-v1"]


# ---------------------------------------------------------------- the command

@pytest.mark.slow
def test_train_artefacts_trains_ships_registers_and_reuses_its_cache(
        prefect_harness, tiny_library, tmp_path, capsys):
    from mlflow import MlflowClient

    from stemloop.flows.cli.main import main
    from stemloop.tasks.state import state_dir, tracking_uri

    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY)
    out = tmp_path / "models"
    argv = ["train-artefacts", "--out", str(out), "--library", str(tiny_library),
            "--general", str(GENERAL), "--config", str(preset)]
    assert main(argv) == 0
    model = load_artefact_model(out / "model-16000.pt")
    assert model.sources == ["clean", "artefacts"] and model.config.channels == 8
    client = MlflowClient(tracking_uri(state_dir()))
    version = client.get_model_version_by_alias("artefact-model", "candidate")
    run = client.get_run(version.run_id)
    assert run.data.params["target"] == "dialogue" and "val/best_si_sdri" in run.data.metrics
    assert len(client.get_metric_history(version.run_id, "train/total")) == 4
    capsys.readouterr()
    assert main(argv) == 0  # the rerun takes the trained model from Prefect's cache
    again = client.get_model_version_by_alias("artefact-model", "candidate")
    assert int(again.version) == 2
    assert len(client.get_metric_history(again.run_id, "train/total")) == 0


def test_train_artefacts_rejects_bad_requests_in_one_line(tiny_library, tmp_path, capsys):
    from stemloop.flows.cli.main import main

    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY)
    artefact = save_checkpoint(tmp_path / "artefact.pt", tiny_model(["clean"], "artefacts", 0))
    out = tmp_path / "m"
    common = ["--out", str(out), "--library", str(tiny_library)]
    cases = [
        (["--general", str(tmp_path / "missing.pt"), "--config", str(preset)],
         "missing.pt: no such checkpoint"),
        (["--general", str(artefact), "--config", str(preset)], "is an artefact model"),
        (["--general", str(GENERAL), "--config", "smoke"], "needs model.targets 'clean'"),
        (["--general", str(GENERAL), "--config", str(preset), "--target", "music"],
         "--target music"),
        (["--general", str(GENERAL), "--config", str(preset), "--set",
          "model.sample_rate=8000"], "runs at 16000 Hz"),
    ]
    for extra, message in cases:
        assert main(["train-artefacts", *common, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
