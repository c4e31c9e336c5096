"""Chunked inference and recipes: identity, one-pass equality, seams, streaming, sums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemloop.adapt.apply import ModelStep, chunk_grid, overlap_add, separate_file, separate_tensor
from stemloop.adapt.checkpoint import save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.adapt.recipe import load_recipe, read_recipe
from stemloop.config import load_config
from stemloop.errors import ConfigError
from tests.conftest import sine

RATE = 16000


def tiny_model(rate: int = RATE, **changes):
    torch.manual_seed(0)
    return build_model(load_config("smoke").model.model_copy(update=changes), rate).eval()


def db(error: torch.Tensor, reference: torch.Tensor) -> float:
    return float(10 * torch.log10(error.pow(2).sum() / reference.pow(2).sum()))


@pytest.mark.parametrize(("chunk", "hop", "time"), [(1000, 750, 7777), (1024, 512, 5000),
                                                    (800, 800, 4000), (4096, 1024, 3000)])
def test_identity_through_overlap_add_returns_the_input(chunk: int, hop: int, time: int):
    audio = torch.randn(2, time)
    out = separate_tensor(lambda x: x[None], audio, chunk, hop)
    assert out.shape == (1, 2, time)
    assert float((out[0] - audio).abs().max()) < 1e-6


def test_reads_are_bounded_by_the_chunk():
    reads: list[int] = []
    emitted: list[int] = []

    def read(lo: int, hi: int) -> torch.Tensor:
        reads.append(hi - lo)
        return torch.ones(1, hi - lo)

    overlap_add(lambda x: x[None], read, 100_000, 4000, 3000,
                lambda stems, mix: emitted.append(stems.shape[-1]))
    assert max(reads) == 4000 and sum(emitted) == 100_000 and max(emitted) <= 3000


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_chunked_equals_one_pass(overlap: float):
    model = tiny_model()
    audio = 0.1 * torch.randn(2, 4 * RATE + 123)
    with torch.inference_mode():
        one_pass = model(audio[None])[0]
    chunk, hop = chunk_grid(1.0, overlap, RATE, model.alignment)
    chunked = separate_tensor(ModelStep(model, RATE), audio, chunk, hop)
    assert db(chunked - one_pass, one_pass) < -60.0


def test_no_click_at_chunk_seams():
    model = tiny_model()
    audio = torch.from_numpy(sine(220, RATE, 6.0, 0.5).T.copy())
    chunk, hop = chunk_grid(1.0, 0.25, RATE, model.alignment)
    stems = separate_tensor(ModelStep(model, RATE), audio, chunk, hop)
    seams = [s for start in range(hop - chunk, audio.shape[-1], hop)
             for s in (start, start + chunk) if 0 < s < audio.shape[-1] - 1]
    for stem in stems[:, 0]:
        jumps = stem.diff().abs()
        near = torch.zeros_like(jumps, dtype=torch.bool)
        for seam in seams:
            near[max(seam - 8, 0):seam + 8] = True
        assert float(jumps[near].max()) <= float(jumps[~near].max()) * 1.001


def test_separate_file_streams_keeps_length_channels_and_sums(tmp_path: Path, write_wav):
    data = np.random.default_rng(1).normal(0, 0.1, (3 * RATE + 17, 2)).astype(np.float32)
    source = write_wav("mix.wav", data, RATE)
    model = tiny_model(targets=["voice", "music"])
    chunk_s = 0.5
    paths = separate_file(ModelStep(model, RATE), model.sources, source, tmp_path / "out",
                          chunk_s, 0.25, model.alignment)
    assert [p.name for p in paths.values()] == ["voice.wav", "music.wav", "background.wav"]
    stems = [sf.read(p, dtype="float32") for p in paths.values()]
    assert all(rate == RATE and audio.shape == data.shape for audio, rate in stems)
    assert np.abs(sum(audio for audio, _ in stems) - data).max() < 1e-6
    assert not list((tmp_path / "out").glob(".*part"))


def test_other_input_rate_is_resampled_in_and_out(write_wav, tmp_path: Path):
    data = sine(440, 44100, 2.0, 0.3, channels=1) + sine(15000, 44100, 2.0, 0.1)
    source = write_wav("mix44.wav", data, 44100)
    model = tiny_model()
    paths = separate_file(ModelStep(model, 44100), model.sources, source, tmp_path, 0.5, 0.25)
    target, rate = sf.read(paths["dialogue"], dtype="float32")
    rest, _ = sf.read(paths["background"], dtype="float32")
    assert rate == 44100 and target.shape == (data.shape[0],)
    assert np.abs(target + rest - data[:, 0]).max() < 1e-6
    # 15 kHz is above the 16 kHz model's Nyquist: it can only be in the complement.
    spectrum = np.abs(np.fft.rfft(target))
    assert spectrum[15000 * 2] < 1e-3 * np.abs(np.fft.rfft(rest))[15000 * 2]


def write_recipe(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "voice.pt", tiny_model(targets=["voice", "noise"]))
    save_checkpoint(tmp_path / "drums-a.pt", tiny_model(targets=["drums"], head="maskless"))
    save_checkpoint(tmp_path / "drums-b.pt", tiny_model(targets=["drums"], rnn="gru"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""
name: voice-drums-other
steps:
  - name: voice
    models: [voice.pt]
    steps:
      - {name: lead, models: [voice.pt], strength: 2.0}
  - {name: drums, models: [drums-a.pt, drums-b.pt]}   # FIG. 13E: two models, one class
  - {name: noise, models: [voice.pt], target: noise}
rest: other
""")
    return recipe


def test_recipe_tree_names_stems_by_path_and_sums_to_mixture(tmp_path: Path):
    recipe = load_recipe(write_recipe(tmp_path), RATE, strength=1.0)
    assert recipe.names == ["voice/lead", "voice/other", "drums", "noise", "other"]
    assert len(recipe.model_paths) == 3
    audio = 0.1 * torch.randn(2, 2 * RATE)
    chunk, hop = chunk_grid(0.5, 0.25, RATE, recipe.alignment)
    stems = separate_tensor(recipe, audio, chunk, hop)
    assert stems.shape == (5, 2, 2 * RATE)
    assert float((stems.sum(0) - audio).abs().max()) < 1e-6
    assert all(float(s.pow(2).sum()) > 0 for s in stems)


def test_combined_models_sum_their_extractions(tmp_path: Path):
    recipe = load_recipe(write_recipe(tmp_path), RATE)
    a, b = (ModelStep(tiny_model(targets=["drums"], head="maskless"), RATE),
            ModelStep(tiny_model(targets=["drums"], rnn="gru"), RATE))
    a.model.load_state_dict(recipe._models[(tmp_path / "drums-a.pt").resolve()].model.state_dict())
    b.model.load_state_dict(recipe._models[(tmp_path / "drums-b.pt").resolve()].model.state_dict())
    audio = 0.1 * torch.randn(1, RATE)
    with torch.inference_mode():
        stems = dict(zip(recipe.names, recipe(audio), strict=True))
        after_voice = audio - stems["voice/lead"] - stems["voice/other"]
        first = a(after_voice)[0]
        expected = first + b(after_voice - first)[0]
    assert torch.allclose(stems["drums"], expected, atol=1e-6)


def test_bad_recipes_are_one_line_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [{name: 'a b', models: [m.pt]}]\n")
    with pytest.raises(ConfigError, match="steps.0.name"):
        read_recipe(bad)
    write_recipe(tmp_path)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\nsteps: [{name: a, models: [voice.pt], target: drums}]\n")
    with pytest.raises(ConfigError, match="no target 'drums'"):
        load_recipe(wrong, RATE)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\nsteps: [{name: music, models: [nosuch.pt]}]\n")
    with pytest.raises(ConfigError, match=r"missing.yaml: recipe step 'music': .*nosuch.pt"):
        load_recipe(missing, RATE)
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\nsteps: [{name: a, models: [voice.pt]},\n"
                     "        {name: a, models: [voice.pt]}]\n")
    with pytest.raises(ConfigError, match="share a name"):
        load_recipe(twice, RATE)
    cycle = tmp_path / "cycle.yaml"  # a YAML alias can make a step contain itself
    cycle.write_text("name: x\nsteps:\n  - &s {name: a, models: [voice.pt], steps: [*s]}\n")
    with pytest.raises(ConfigError, match="cycle.yaml: recipe key 'steps.0.steps.0'.*cyclic"):
        read_recipe(cycle)


def test_adapt_takes_a_chain_of_one_model_steps_and_says_why_not_in_one_line(tmp_path: Path):
    from stemloop.adapt.recipe import loop_recipe

    recipe = write_recipe(tmp_path)
    with pytest.raises(ConfigError, match="recipe.yaml: recipe step 'voice': .*splits its stem"):
        loop_recipe(recipe)
    two = tmp_path / "two.yaml"
    two.write_text("name: x\nsteps: [{name: drums, models: [drums-a.pt, drums-b.pt]}]\n")
    with pytest.raises(ConfigError, match="step 'drums': .*several models"):
        loop_recipe(two)
    chain = tmp_path / "chain.yaml"
    chain.write_text("name: c\nsteps: [{name: voice, models: [voice.pt]},\n"
                     "        {name: hiss, models: [voice.pt], target: noise}]\nrest: left\n")
    found = loop_recipe(chain)
    assert [(s.name, s.target) for s in found.steps] == [("voice", "voice"), ("hiss", "noise")]
    assert found.rest == "left" and found.steps[0].model == str(tmp_path / "voice.pt")
    chain.write_text("name: c\nsteps: [{name: voice, models: [gone.pt]}]\n")
    with pytest.raises(ConfigError, match="step 'voice': .*gone.pt"):
        loop_recipe(chain)


def test_a_recipe_is_named_or_given_as_a_file(tmp_path: Path):
    from stemloop.adapt.recipe import recipe_file
    from stemloop.errors import UserError

    assert recipe_file("archive").name == "archive.yaml"
    mine = tmp_path / "mine.yaml"
    assert recipe_file(mine) == mine  # a path stays a path, present or not
    with pytest.raises(UserError, match="no recipe of that name.*archive"):
        recipe_file("nosuch")


@pytest.mark.parametrize("path", sorted(Path("configs/recipes").rglob("*.yaml")))
def test_shipped_recipes_are_valid(path: Path):
    spec = read_recipe(path)
    assert spec.steps
    from stemloop.adapt.recipe import model_files

    if path.parent.name == "recipes":  # offered by name: every model it names is shipped
        assert all(f.is_file() for f in model_files(path)), path
