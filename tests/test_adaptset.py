"""An iteration's dataset: background material is taken only where the dialogue pauses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stemloop.config import load_config
from stemloop.datasets.adaptset import build_iteration
from stemloop.datasets.audio import read_audio
from stemloop.datasets.mixbus_yaml import dump_schema, load_schema, schema_from_dict

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
SPEECH = [(1.0, 3.0), (4.0, 7.0), (9.5, 11.0)]  # seconds; pauses 0-1, 3-4, 7-9.5, 11-12


def stems(write_wav, leak_db: float, pauses: bool = True) -> dict[str, Path]:
    """Crude stems of a 12 s recording: dialogue bursts (with a faint floor of leaked
    music in the pauses 30 dB under the speech), and a background of steady music that
    carries the dialogue leaked at ``leak_db`` while it speaks."""
    rng = np.random.default_rng(1)
    t = np.arange(12 * RATE) / RATE
    talking = np.zeros_like(t, dtype=bool)
    for start, stop in (SPEECH if pauses else [(0.0, 12.0)]):
        talking |= (t >= start) & (t < stop)
    voice = np.where(talking, 0.3 * np.sin(2 * np.pi * 300 * t), 0.0)
    dialogue = voice + np.where(talking, 0.0, 0.007 * rng.standard_normal(len(t)))
    music = 0.1 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(len(t))
    background = music + 10 ** (leak_db / 20) * voice
    return {"dialogue": write_wav("dialogue.wav", dialogue, RATE),
            "background": write_wav("background.wav", background, RATE)}


def node(tree: dict, *path: str) -> dict:
    """The node at ``path`` (names from the top) of a dumped schema."""
    nodes = tree["buses"]
    for name in path:
        found = next(n for n in nodes if n["name"] == name)
        nodes = found.get("children", [])
    return found


def build(tmp_path: Path, files: dict[str, Path]) -> dict:
    schema = load_schema(ROOT / "configs" / "mixbus" / "dialogue.yaml")
    return build_iteration(files, "dialogue", 0, load_config(), tmp_path / "iter-000", schema,
                           tmp_path / "holdout.json")


def test_background_is_taken_only_in_the_dialogue_pauses(tmp_path, write_wav):
    record = build(tmp_path, stems(write_wav, leak_db=-6.0))
    table = pd.read_parquet(tmp_path / "iter-000" / "cull.parquet")
    background = table[table["stem"] == "complement"]
    assert record.seconds["complement"] > 1.0
    for start, stop in zip(background["start_s"], background["stop_s"], strict=True):
        for talk_start, talk_stop in SPEECH:  # no overlap with speech, to within a window
            assert stop <= talk_start + 0.05 or start >= talk_stop - 0.05, (start, stop)
    held = json.loads((tmp_path / "holdout.json").read_text())["files"]["complement"]
    assert held  # the matched reference's background: pauses too
    for path in [*(tmp_path / "iter-000" / "complement").glob("*.wav"), *map(Path, held)]:
        audio, _ = read_audio(path)
        spectrum = np.abs(np.fft.rfft(audio[0].numpy()))
        freqs = np.fft.rfftfreq(audio.shape[-1], 1 / RATE)
        voice = spectrum[np.abs(freqs - 300) < 5].max()
        music = spectrum[np.abs(freqs - 440) < 5].max()
        assert voice < 0.05 * music, path  # leaked dialogue stays out of the noise set


def test_dialogue_that_never_pauses_gives_no_background_rather_than_leaked_dialogue(
        tmp_path, write_wav):
    record = build(tmp_path, stems(write_wav, leak_db=-6.0, pauses=False))
    assert record.seconds["complement"] == 0.0
    schema = yaml.safe_load((tmp_path / "iter-000" / "schema.yaml").read_text())
    noise = next(bus for bus in schema["buses"] if bus["name"] == "noise")
    assert "recording" not in [child["name"] for child in noise["children"]]
    assert json.loads((tmp_path / "holdout.json").read_text())["files"]["complement"] == []


def _speech_queries(node) -> list[dict]:
    found = []
    if isinstance(node, list):
        for child in node:
            found += _speech_queries(child)
        return found
    query = node.get("feed", {}).get("query", {})
    if query.get("class") == "speech":
        found.append(query)
    for key in ("buses", "children"):
        found += _speech_queries(node.get(key, []))
    return found


def test_matched_reference_draws_natural_voices_only_when_the_library_has_them(tmp_path,
                                                                                write_wav):
    from stemloop.datasets.adaptschema import reference_speech

    def library(name: str, voices: list[tuple[str, str]]) -> str:
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame([{"class": "speech", "subclass": sub, "voice": v} for sub, v in voices]
                     + [{"class": "noise", "subclass": "hiss", "voice": None}]
                     ).to_parquet(folder / "manifest.parquet")
        return str(folder)

    natural = library("natural", [("natural", "june"), ("natural", "carlo"),
                                  ("synthetic", "kal")])
    lone = library("lone", [("natural", "june"), ("synthetic", "kal")])
    assert reference_speech(natural, "natural") == {"subclass": "natural"}
    assert reference_speech(natural, "all") is None
    assert reference_speech(lone, "natural") is None      # one voice is not a reference
    assert reference_speech(None, "natural") is None

    schema = load_schema(ROOT / "configs" / "mixbus" / "dialogue.yaml")
    build_iteration(stems(write_wav, -30.0), "dialogue", 0, load_config(), tmp_path / "it",
                    schema, tmp_path / "holdout.json", reference_speech(natural, "natural"))
    reference = yaml.safe_load((tmp_path / "reference.yaml").read_text())
    queries = _speech_queries(reference["buses"])
    assert queries and all(q["subclass"] == "natural" for q in queries)
    # the training schema keeps every library voice
    trained = yaml.safe_load((tmp_path / "it" / "schema.yaml").read_text())
    trained = _speech_queries(trained["buses"])
    assert trained and all("subclass" not in q for q in trained)


def test_balance_puts_library_examples_at_the_recordings_levels_without_stacked_music(
        tmp_path, write_wav):
    """With ``loop.match_balance`` the main library voice sits at the crude dialogue's
    level, library music at the background's level and only where the recording's own
    background is absent; the matched reference stacks no library music on it. Without it,
    the schemas keep the base schema's levels."""
    from stemloop.datasets.audio import loudness

    files = stems(write_wav, -30.0)
    dialogue_lufs = loudness(*read_audio(files["dialogue"]))
    background_lufs = loudness(*read_audio(files["background"]))
    schema = load_schema(ROOT / "configs" / "mixbus" / "dialogue.yaml")

    def schemas(balance: bool, folder: str) -> tuple[dict, dict]:
        config = load_config(overrides=[f"loop.match_balance={str(balance).lower()}"])
        record = build_iteration(files, "dialogue", 0, config, tmp_path / folder / "it",
                                 schema, tmp_path / folder / "holdout.json")
        return (yaml.safe_load(Path(record.schema_path).read_text()),
                yaml.safe_load((tmp_path / folder / "reference.yaml").read_text()))

    trained, reference = schemas(True, "balanced")
    share = load_config().loop.background_share
    for tree in (trained, reference):
        low, high = node(tree, "sources", "voices", "foreground")["lufs"]
        assert abs((low + high) / 2 - dialogue_lufs) < 1e-6
        low, high = node(tree, "sources", "music", "ensemble")["lufs"]
        assert abs((low + high) / 2 - background_lufs) < 1e-6
    assert node(trained, "sources", "music")["probability"] == 0.8 * (1 - share)
    assert node(reference, "sources", "music")["probability"] == 0.0
    assert node(trained, "noise", "recording")["probability"] == share

    trained, reference = schemas(False, "plain")
    for tree in (trained, reference):
        assert node(tree, "sources", "voices", "foreground")["lufs"] == [-26, -18]
        assert node(tree, "sources", "music", "ensemble")["lufs"] == [-34, -20]
        assert node(tree, "sources", "music")["probability"] == 0.8

    # a custom schema without a music bus keeps working: its voice is set, nothing else
    from stemloop.datasets.adaptschema import match_balance

    bare = schema_from_dict({"buses": [{"name": "sources", "children": [
        {"name": "voices", "children": [{"name": "host", "lufs": [-30, -20],
                                         "feed": {"files": ["host.wav"]}}]}]},
        {"name": "noise", "children": []}], "targets": {"host": {"bus": "sources/voices"}}})
    balanced = dump_schema(match_balance(bare, (-20.0, -30.0), 0.7))
    assert balanced["buses"][0]["children"][0]["children"][0]["lufs"] == [-24.0, -16.0]
    assert balanced["buses"][1] == dump_schema(bare)["buses"][1]

    # a recording with no culled background: library music is the only one, at its level
    from stemloop.datasets.adaptschema import adaptation_schema

    lone = dump_schema(adaptation_schema([], [], schema, "dialogue", 1.0, [], (-20.0, -30.0),
                                         0.7, balance=True))
    assert node(lone, "sources", "music")["probability"] == 0.8
    assert node(lone, "sources", "music", "ensemble")["lufs"] == [-34.0, -26.0]


def test_a_music_or_noise_step_trains_its_own_class_as_the_target():
    """A recipe's music (noise) step: the recording's culled music (noise) joins the library's
    music (noise) as the target, its culled complement goes where the target is not."""
    from stemloop.datasets.adaptschema import adaptation_schema, reference_schema

    schema = load_schema(ROOT / "configs" / "mixbus" / "dialogue.yaml")
    own, rest = [Path("own.wav")], [Path("rest.wav")]

    def recording_in(tree: dict) -> list[str]:
        found = []

        def walk(nodes, path):
            for n in nodes:
                here = f"{path}/{n['name']}" if path else n["name"]
                if n["name"] == "recording":
                    found.append(f"{path}:{Path(n['feed']['files'][0]).name}")
                walk(n.get("children", []), here)
        walk(tree["buses"], "")
        return sorted(found)

    cases = {"dialogue": ("sources/voices", ["noise:rest.wav", "sources/voices:own.wav"]),
             "music": ("sources/music", ["noise:rest.wav", "sources/music:own.wav"]),
             "noise": ("noise", ["noise:own.wav", "sources:rest.wav"])}
    for target, (bus, placed) in cases.items():
        built = adaptation_schema(own, rest, schema, target, 0.5, [], (-20.0, -30.0), 0.7)
        assert (built.targets[0].name, built.targets[0].bus) == (target, bus)
        assert len({t.bus for t in built.targets}) == len(built.targets) == 3
        tree = dump_schema(built)
        assert recording_in(tree) == placed
        assert node(tree, *bus.split("/"))["probability"] == 1.0  # the target in every example
        reference = reference_schema(schema, rest, target, -30.0)
        assert reference.targets[0].bus == bus
        assert recording_in(dump_schema(reference)) == [p for p in placed if "rest" in p]
