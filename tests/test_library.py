"""Library build on a tiny budget: a valid manifest with every class, queries, a loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stemloop.config import CONFIG_DIR
from stemloop.datasets.library import REQUIRED_TOOLS, Library
from stemloop.datasets.loader import MixDataset

missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"Debian tools missing: {missing} "
                                                      "(run `make sysdeps`)")


def test_manifest_has_every_class_and_valid_rows(tiny_library):
    manifest = pd.read_parquet(tiny_library / "manifest.parquet")
    assert set(manifest["class"]) == {"speech", "music", "noise", "room"}
    for column in ("id", "path", "class", "subclass", "tool", "voice", "rate", "duration",
                   "loudness"):
        assert column in manifest.columns
    assert manifest["id"].is_unique
    assert (manifest["duration"] > 0).all()
    audio = manifest[manifest["class"] != "room"]
    assert np.isfinite(audio["loudness"]).all()
    assert all((tiny_library / p).is_file() for p in manifest["path"])
    assert set(manifest["subclass"][manifest["class"] == "noise"]) >= {"hiss", "hum", "crackle"}
    music = manifest[manifest["class"] == "music"]
    rendered = music[music["subclass"] != "recorded"]
    assert (rendered.groupby("piece")["part"].count() >= 2).all()  # stems, not mixes
    assert (manifest["rt60"][manifest["class"] == "room"] > 0).all()
    summary = json.loads((tiny_library / "library.json").read_text())
    assert summary["classes"]["speech"]["files"] >= 1


def test_an_older_recipe_is_rebuilt_when_ours_and_kept_when_named(tiny_library, tmp_path,
                                                                   prefect_harness):
    from prefect import flow

    from stemloop.config import load_config
    from stemloop.datasets.library import RECIPE, library_recipe
    from stemloop.tasks.library import ensure_library

    old = tmp_path / "old"
    shutil.copytree(tiny_library, old)
    summary = json.loads((old / "library.json").read_text())
    assert summary.pop("recipe") == RECIPE == library_recipe(tiny_library)
    (old / "library.json").write_text(json.dumps(summary))
    assert library_recipe(old) == 1
    config = load_config(None, ["mixbus.library.composers=[bach]",
                                "mixbus.library.piece_max_s=6",
                                "mixbus.library.speech_clip_s=4"]).mixbus.library

    @flow
    def ensure(given: str | None, own: str) -> str:
        return ensure_library(given, own, 0.002, 3, config)

    def stamp() -> int:
        return (old / "manifest.parquet").stat().st_mtime_ns

    before = stamp()
    assert ensure(str(old), str(tmp_path / "own")) == str(old)  # named: used as it is
    assert library_recipe(old) == 1 and stamp() == before
    assert not (tmp_path / "own").exists()
    assert ensure(None, str(old)) == str(old)  # stemloop's own: rebuilt
    assert library_recipe(old) == RECIPE
    assert len(Library(old).manifest) > 0
    rebuilt = stamp()
    assert ensure(None, str(old)) == str(old) and stamp() == rebuilt  # current: reused


def test_speech_stored_at_library_loudness(tiny_library):
    speech = Library(tiny_library).query(**{"class": "speech"})
    assert np.allclose(speech["loudness"], -23.0, atol=0.5)


def test_query_and_missing_library_error(tiny_library, tmp_path):
    from stemloop.errors import UserError

    library = Library(tiny_library)
    assert set(library.query(**{"class": ["noise", "room"]})["class"]) == {"noise", "room"}
    assert library.query(nonexistent="x").empty
    with pytest.raises(UserError, match="not a stemloop library"):
        Library(tmp_path)


def test_dialogue_schema_renders_from_the_library(tiny_library):
    schema = CONFIG_DIR / "mixbus" / "dialogue.yaml"
    data = MixDataset(schema, tiny_library, 4, 16000, 2.0, seed=5)
    for i in range(4):
        example = data.example(i)
        mixture, targets = example.mixture, example.targets
        assert mixture.shape == (1, 32000) and targets.shape == (3, 1, 32000)
        assert torch.isfinite(mixture).all()
        if example.params["linear"]:
            assert torch.allclose(targets.sum(0), mixture, atol=1e-5)
    again = MixDataset(schema, tiny_library, 4, 16000, 2.0, seed=5)
    assert torch.equal(again[2][0], data[2][0])


@pytest.mark.parametrize("engine", ["festival", "flite", "espeak-ng"])
def test_each_speech_engine_speaks(engine, tmp_path):
    import random

    import soundfile as sf

    from stemloop.datasets.speech import ENGINES

    wav = tmp_path / "out.wav"
    meta = ENGINES[engine]("The bridge over the river was finally open.", wav,
                           random.Random(0), 60.0)
    data, rate = sf.read(str(wav))
    assert meta["gender"] in ("female", "male")
    assert len(data) / rate > 1.0 and np.abs(data).max() > 0.01


def test_each_soundfont_renders_a_part(tmp_path):
    import random

    from stemloop.datasets.music import _midi, _render, available_soundfonts

    notes = [(0.0, 1.0, [60]), (1.0, 1.0, [64, 67]), (2.0, 0.0, [72])]  # last: a grace note
    midi = tmp_path / "part.mid"
    _midi(notes, 40, 0, 120.0, 0.0, 4.0, random.Random(0), midi)
    fonts = available_soundfonts()
    assert "FluidR3_GM" in fonts
    for path, _ in fonts.values():
        audio = _render(midi, path, 16000, 60.0, 5.0)
        assert 1.0 < len(audio) / 16000 <= 5.0 and np.abs(audio).max() > 0.001


def test_room_and_noise_jobs_rebuild_bit_identically(tmp_path):
    import soundfile as sf

    from stemloop.datasets.library import render_noise, render_room

    rows = []
    for folder in ("a", "b"):
        rows.append(render_room("r", 11, tmp_path / folder, 16000)[0])
        render_noise("n", 11, tmp_path / folder, "crackle", 16000, 2.0, -23.0)
    for name in ("rooms/r.flac", "noise/n.flac"):
        assert np.array_equal(sf.read(tmp_path / "a" / name)[0], sf.read(tmp_path / "b" / name)[0])
    # The files are bit-identical; the RT60 measured from them may differ in the last
    # digits (threaded FFT sums round differently from run to run).
    assert rows[0]["rt60"] == pytest.approx(rows[1]["rt60"], rel=1e-9) and rows[0]["rt60"] > 0


def test_recorded_voices_are_joined_into_clips_and_interleaved(tmp_path, monkeypatch):
    """Natural prompts of one voice join into clips of ≥ NATURAL_CLIP_S with pauses between
    them; every source appears early in the order, so a small budget still draws each."""
    import soundfile as sf

    import stemloop.datasets.speech as speech

    rate = 8000
    for voice, count in (("anna", 7), ("boris", 3)):
        folder = tmp_path / "asterisk" / voice
        folder.mkdir(parents=True)
        for i in range(count):
            tone = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * np.arange(3 * rate) / rate)
            sf.write(folder / f"p{i}.wav", np.pad(tone, rate // 4), rate)   # 3.5 s each
    acted = tmp_path / "fillets" / "fish" / "en"
    acted.mkdir(parents=True)
    sf.write(acted / "fish-hello.ogg", 0.2 * np.sin(np.arange(2 * rate) * 0.2), rate)
    monkeypatch.setattr(speech, "ASTERISK_DIR", tmp_path / "asterisk")
    monkeypatch.setattr(speech, "FILLETS_DIR", tmp_path / "fillets")
    monkeypatch.setattr(speech, "NATURAL_VOICES", {"anna": ("pkg-a", "xx", "female"),
                                                   "boris": ("pkg-b", "yy", "male")})
    clips = speech.recorded_clips(seed=3)
    assert [len(c.sources) for c in clips if c.voice == "anna"] == [3, 3]   # 7th left over
    assert {c.voice for c in clips[:3]} == {"fish", "anna", "boris"}
    assert {c.subclass for c in clips} == {"acted", "natural"}

    clip = next(c for c in clips if c.voice == "anna")
    rows = speech.import_recorded("re0-00001", clip, tmp_path / "lib", -23.0)
    audio, got = sf.read(tmp_path / "lib" / rows[0]["path"])
    assert got == rate and rows[0]["subclass"] == "natural" and rows[0]["language"] == "xx"
    assert 3 * 3.5 + 2 * speech.NATURAL_GAP_S - 0.5 < len(audio) / rate <= 3 * 3.5 + 0.6
    assert abs(rows[0]["loudness"] + 23.0) < 0.5


def test_recorded_music_is_cut_into_excerpts_and_held_out_music_refused(tmp_path, monkeypatch):
    """Each track becomes excerpts (a short tail kept as its own), packages interleave, an
    excerpt lands in the library at its loudness as a one-stem piece with its licence; a
    package folder inside the evaluation material is refused."""
    import soundfile as sf

    import stemloop.datasets.recorded_music as recorded
    from stemloop.datasets.evalsources import RECORDED_MUSIC

    rate = 22050
    for package, seconds in (("a", (25.0, 5.0)), ("b", (12.0,))):
        folder = tmp_path / package
        folder.mkdir()
        for i, length in enumerate(seconds):
            t = np.arange(int(length * rate)) / rate
            stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.1 * np.sin(t * 900)], 1)
            sf.write(folder / f"track{i}.ogg", stereo, rate)
    monkeypatch.setattr(recorded, "LIBRARY_MUSIC", {
        "pkg-a": (tmp_path / "a", "*.ogg", "licence A"),
        "pkg-b": (tmp_path / "b", "*.ogg", "licence B")})
    excerpts = recorded.recorded_excerpts(seed=1, excerpt_s=10.0)
    # a/track0 (25 s): 10 + 10 s, its 5 s tail (under MIN_EXCERPT_S) dropped; a/track1
    # (5 s): shorter than the minimum, kept whole; b/track0 (12 s): 10 s, 2 s dropped
    spans = sorted((Path(e.path).parent.name, Path(e.path).name, e.start_s, round(e.seconds, 2))
                   for e in excerpts)
    assert spans == [("a", "track0.ogg", 0.0, 10.0), ("a", "track0.ogg", 10.0, 10.0),
                     ("a", "track1.ogg", 0.0, 5.0), ("b", "track0.ogg", 0.0, 10.0)]
    assert {excerpts[0].package, excerpts[1].package} == {"pkg-a", "pkg-b"}

    rows = recorded.import_excerpt("tr0-00001", 7, excerpts[0], tmp_path / "lib", 16000, -23.0)
    assert len(rows) == 1 and rows[0]["subclass"] == "recorded" and rows[0]["class"] == "music"
    assert rows[0]["licence"].startswith("licence") and rows[0]["piece"] == "tr0-00001"
    audio, got = sf.read(tmp_path / "lib" / rows[0]["path"])
    assert got == 16000 and audio.ndim == 1 and abs(len(audio) / got - excerpts[0].seconds) < 0.01
    assert abs(rows[0]["loudness"] + 23.0) < 0.5

    held_out = next(iter(RECORDED_MUSIC.values()))[0]
    monkeypatch.setattr(recorded, "LIBRARY_MUSIC", {"x": (held_out, "*", "?")})
    with pytest.raises(ValueError, match="evaluation material"):
        recorded.recorded_excerpts(seed=0, excerpt_s=10.0)
