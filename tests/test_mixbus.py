"""The mix bus: determinism, sums, levels, probabilities, clean targets, schema errors."""

from __future__ import annotations

import math

import pytest
import torch

from stemloop.datasets import augment
from stemloop.datasets.audio import loudness, write_audio
from stemloop.datasets.loader import LibraryProvider, MixDataset
from stemloop.datasets.mixbus import render
from stemloop.datasets.mixbus_yaml import load_schema, schema_from_dict
from stemloop.errors import ConfigError

RATE = 16000


def tone(freq: float, seconds: float = 3.0, rate: int = RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * math.pi * freq * t))[None]


@pytest.fixture
def sources(tmp_path):
    """Two 'voice' files (tones at 22.05 kHz, so the loader resamples) and a 'music' file."""
    for name, freq in (("voice_a", 440.0), ("voice_b", 523.0), ("music", 196.0)):
        write_audio(tmp_path / f"{name}.wav", tone(freq, 3.0, 22050), 22050)
    return tmp_path


def schema_dict(post=None, voice_effects=None, **voice):
    return {
        "buses": [
            {"name": "sources", "children": [
                {"name": "voices", "feed": {"files": ["voice_*.wav"]}, "lufs": [-30, -20],
                 "effects": voice_effects or [], **voice},
                {"name": "music", "feed": {"files": ["music.wav"]}, "gain_db": [-12, -6],
                 "effects": [{"type": "room", "rt60": [0.3, 0.6], "wet": [0.3, 0.6]}]}]},
            {"name": "noise", "children": [
                {"name": "hiss", "feed": {"synth": "hiss", "params": {"slope_db_oct": [-3, 0]}},
                 "lufs": [-50, -40]},
                {"name": "hum", "feed": {"synth": "hum", "params": {"f0_hz": [[49.8, 50.2],
                                                                              [59.8, 60.2]]}},
                 "lufs": [-50, -45], "probability": 0.5}]}],
        "post": post if post is not None else [
            {"type": "highpass", "cutoff_hz": [80, 200]},
            {"type": "lowpass", "cutoff_hz": [3000, 6000], "order": [2, 8]},
            {"type": "eq", "bands_hz": [250, 1000, 4000], "gains_db": [[-3, 3], 0, [-3, 3]]},
            {"type": "dropout", "count": [1, 2], "length_s": [0.05, 0.2], "depth_db": -12},
            {"type": "gaps", "count": 1, "length_s": 0.01}],
        "targets": {"dialogue": {"bus": "sources/voices"}, "music": {"bus": "sources/music"},
                    "noise": {"bus": "noise"}},
    }


def dataset(sources, data, size=8, seconds=2.0, seed=0):
    return MixDataset(schema_from_dict(data, "test", sources), None, size, RATE, seconds, seed)


def test_same_seed_same_bytes_and_different_seed_differs(sources):
    a, b = dataset(sources, schema_dict()), dataset(sources, schema_dict())
    c = dataset(sources, schema_dict(), seed=1)
    for i in range(3):
        (ma, ta), (mb, tb), (mc, _) = a[i], b[i], c[i]
        assert torch.equal(ma, mb) and torch.equal(ta, tb)
        assert not torch.equal(ma, mc)
    assert not torch.equal(a[0][0], a[1][0])


def test_shapes(sources):
    mixture, targets = dataset(sources, schema_dict(), seconds=1.5)[0]
    assert mixture.shape == (1, 24000) and targets.shape == (3, 1, 24000)
    assert mixture.dtype == torch.float32


def test_linear_chain_stems_sum_to_mixture(sources):
    data = dataset(sources, schema_dict(voice_effects=[{"type": "room", "rt60": 0.5},
                                                       {"type": "bandpass"}]))
    for i in range(6):
        mixture, targets = data[i]
        assert mixture.abs().max() > 1e-3
        assert torch.allclose(targets.sum(0), mixture, atol=1e-5)
        assert data.example(i).params["linear"]


def test_nonlinear_post_effect_is_flagged(sources):
    data = dataset(sources, schema_dict(post=[{"type": "soft_clip", "drive_db": 12}]))
    example = data.example(0)
    assert example.params["linear"] is False
    assert not torch.allclose(example.targets.sum(0), example.mixture, atol=1e-4)


def test_drawn_lufs_is_met(sources):
    data = dataset(sources, schema_dict(post=[]), seconds=3.0)
    for i in range(5):
        example = data.example(i)
        drawn = example.params["nodes"]["sources/voices"]["level"]["lufs"]
        assert -30 <= drawn <= -20
        assert abs(loudness(example.targets[0], RATE) - drawn) < 0.5


def test_relative_levels_keep_the_drawn_ratio(sources):
    data = schema_dict(post=[])
    voices = data["buses"][0]["children"][0]
    voices.pop("lufs")
    voices["rel_db"] = [-12, -6]
    data["buses"][0]["lufs"] = [-24, -20]  # 'sources' sets the reference for its children
    data["buses"][0]["children"][1] = {"name": "music", "feed": {"files": ["music.wav"]},
                                       "rel_db": 0}
    for i in range(3):
        example = dataset(sources, data, seconds=3.0).example(i)
        drawn = example.params["nodes"]["sources/voices"]["level"]["rel_db"]
        ratio = loudness(example.targets[0], RATE) - loudness(example.targets[1], RATE)
        assert -12 <= drawn <= -6 and abs(ratio - drawn) < 0.5


def test_probability_zero_and_one(sources):
    never = dataset(sources, schema_dict(probability=0.0), seconds=0.5)
    always = dataset(sources, schema_dict(probability=1.0), seconds=0.5)
    for i in range(8):
        assert never[i][1][0].abs().max() == 0
        assert always[i][1][0].abs().max() > 1e-3
    some = dataset(sources, schema_dict(), seconds=0.5)
    present = [some.example(i).params["nodes"]["noise/hum"]["present"] for i in range(16)]
    assert 0 < sum(present) < 16  # probability 0.5 gives both


def test_clean_target_skips_degradations(sources):
    data = schema_dict(voice_effects=[{"type": "lowpass", "cutoff_hz": 300, "order": 8}],
                       post=[{"type": "lowpass", "cutoff_hz": 300, "order": 8}])
    data["targets"]["dialogue_clean"] = {"bus": "sources/voices", "clean": True}
    example = dataset(sources, data).example(0)
    wet, clean = example.targets[0], example.targets[3]
    assert loudness(wet, RATE) < loudness(clean, RATE) - 20  # 440/523 Hz tones cut by 300 Hz
    assert example.names == ("dialogue", "music", "noise", "dialogue_clean")


def test_filters_attenuate_what_they_should():
    low, high = tone(500.0), tone(4000.0)
    db = lambda x, y: 20 * math.log10(float(y.std()) / float(x.std()))  # noqa: E731
    assert db(high, augment.lowpass(high, RATE, 1000.0, 4)) < -40
    assert abs(db(low, augment.lowpass(low, RATE, 1000.0, 4))) < 0.5
    assert db(low, augment.highpass(low, RATE, 2000.0, 4)) < -40
    assert abs(db(high, augment.highpass(high, RATE, 2000.0, 4))) < 0.5
    assert abs(db(low, augment.band_eq(low, RATE, [250, 500, 1000], [0, 6, 0])) - 6) < 0.2
    assert abs(db(high, augment.peaking(high, RATE, 4000, -9, 0.5)) + 9) < 0.2


def test_room_rt60_and_hum_frequency():
    gen = torch.Generator().manual_seed(0)
    from stemloop.datasets.loader import synthetic_ir

    assert abs(augment.rt60_of(synthetic_ir(0.8, gen, RATE), RATE) - 0.8) < 0.08
    hum = augment.hum(RATE * 4, RATE, 60.0, 5, 6.0, gen)
    spectrum = torch.fft.rfft(hum).abs()
    assert abs(float(spectrum.argmax()) / 4 - 60.0) < 0.5


def test_render_without_library_uses_synthetic_rooms(sources):
    schema = schema_from_dict(schema_dict(), "test", sources)
    gen = torch.Generator().manual_seed(3)
    example = render(schema, LibraryProvider(None), gen, RATE, RATE)
    room = example.params["nodes"]["sources/music"]["effects"][0]
    assert room["ir"].startswith("synthetic")


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["buses"][0]["children"][0].update(colour="red"), "buses.sources.voices.colour"),
    (lambda d: d["buses"][0]["children"][0]["effects"].append({"type": "lowpass", "cutof": 1}),
     "buses.sources.voices.effects[0].cutof"),
    (lambda d: d["post"].append({"type": "wobble"}), "post[5].type"),
    (lambda d: d["targets"].update(x={"bus": "sources/nothing"}), "targets.x.bus"),
    (lambda d: d["buses"][1]["children"][0].update(lufs=[-10, -30]), "buses.noise.hiss.lufs"),
    (lambda d: d.update(bus=[]), "bus"),
])
def test_bad_schema_key_is_one_line_error_naming_it(edit, key):
    data = schema_dict()
    edit(data)
    with pytest.raises(ConfigError) as info:
        schema_from_dict(data, "my.yaml")
    message = str(info.value)
    assert f"'{key}'" in message and message.startswith("my.yaml") and "\n" not in message


def test_shipped_schemas_are_valid():
    from stemloop.config import CONFIG_DIR, load_config

    schema = load_schema(CONFIG_DIR / load_config().mixbus.schema_path)
    assert [t.name for t in schema.targets] == ["dialogue", "music", "noise"]
    assert [b.name for b in schema.buses] == ["sources", "noise"]
    for path in sorted((CONFIG_DIR / "mixbus").glob("*.yaml")):
        assert load_schema(path).targets


def test_dataloader_workers_give_the_same_examples(sources):
    threads = torch.get_num_threads()
    data = dataset(sources, schema_dict(), size=4, seconds=0.5)
    # "spawn": a forked worker inherits whatever the test session started (e.g. Prefect's
    # test server and exit handlers) and can die on exit; a spawned one starts clean.
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2,
                                         multiprocessing_context="spawn")
    batches = list(loader)
    assert batches[0][0].shape == (2, 1, 8000) and batches[0][1].shape == (2, 3, 1, 8000)
    # Bit-identical for the same torch thread count; workers run one thread each, this
    # process more, and FFT/convolution sums may then round differently.
    assert torch.allclose(batches[1][0][1], data[3][0], atol=1e-6)
    torch.set_num_threads(1)
    try:
        assert torch.equal(batches[1][0][1], data[3][0])
    finally:
        torch.set_num_threads(threads)


def test_preview_cli_writes_examples(sources, tmp_path):
    import yaml

    from stemloop.flows.cli.main import main

    schema = sources / "schema.yaml"
    schema.write_text(yaml.safe_dump(schema_dict()))
    out = tmp_path / "preview"
    assert main(["dataset", "preview", "--schema", str(schema), "--n", "2", "--out", str(out),
                 "--set", "mixbus.segment_s=1.0"]) == 0
    names = sorted(p.name for p in (out / "example-001").iterdir())
    assert names == ["dialogue.wav", "mixture.wav", "music.wav", "noise.wav", "params.json"]


def test_write_schema_refuses_an_edit_out_of_range_before_writing(tmp_path):
    """An edited tree is validated as it will be read back: a level below the floor
    (a matched hum at -95 LUFS) is a one-line error naming the file, and nothing is written."""
    from dataclasses import replace

    from stemloop.config import CONFIG_DIR
    from stemloop.datasets.mixbus import edit_node
    from stemloop.datasets.mixbus_yaml import write_schema

    schema = load_schema(CONFIG_DIR / "mixbus" / "dialogue.yaml")
    write_schema(tmp_path / "ok.yaml", schema)
    assert load_schema(tmp_path / "ok.yaml") == schema
    low = edit_node(schema, "noise/hum", lambda n: replace(n, lufs=(-95.0, -90.0)))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*lufs"):
        write_schema(tmp_path / "bad.yaml", low)
    assert not (tmp_path / "bad.yaml").exists()
