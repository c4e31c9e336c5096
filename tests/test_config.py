"""Config: defaults load, presets and --set override, and every mistake is one clear line."""

from __future__ import annotations

import pytest
import yaml

from stemloop.config import CONFIG_DIR, Config, dump_config, load_config
from stemloop.errors import ConfigError


def test_default_config_covers_every_stage():
    config = load_config()
    assert isinstance(config, Config)
    assert set(Config.model_fields) == {"io", "model", "separate", "cull", "mixbus", "train",
                                        "upscale", "score", "loop", "tracking", "orchestration"}
    assert config.train.steps == yaml.safe_load((CONFIG_DIR / "default.yaml").read_text()
                                                )["train"]["steps"]


def test_smoke_preset_overrides_a_subset_by_name_or_path():
    default, smoke = load_config(), load_config("smoke")
    assert smoke.train.steps < default.train.steps
    assert smoke.loop.working_rate == default.loop.working_rate  # untouched keys stay
    assert load_config(CONFIG_DIR / "smoke.yaml") == smoke


def test_set_overrides_are_typed_and_nested():
    config = load_config("smoke", ["train.steps=200", "train.loss.l1=0.5", "model.rnn=gru",
                                   "upscale.ladder=[16000, 48000]", "separate.model=null"])
    assert config.train.steps == 200 and config.train.loss.l1 == 0.5
    assert config.model.rnn == "gru" and config.upscale.ladder == [16000, 48000]
    assert config.separate.model is None


def test_out_of_range_value_names_key_value_range_and_source():
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["train.lr=5"])
    message = str(caught.value)
    assert "'train.lr'" in message and "5" in message and "≤ 1.0" in message
    assert "--set train.lr=5" in message and "\n" not in message


def test_unknown_key_in_a_preset_file_names_the_file_and_known_keys(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError) as caught:
        load_config(preset)
    message = str(caught.value)
    assert "'train.stpes' is unknown" in message and str(preset) in message
    assert "steps" in message


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="'trian' is unknown"):
        load_config(overrides=["trian.steps=3"])


def test_wrong_choice_is_rejected_with_the_choices():
    with pytest.raises(ConfigError, match="'model.rnn' = 'transformer'.*'lstm' or 'gru'"):
        load_config(overrides=["model.rnn=transformer"])


@pytest.mark.parametrize("bad", ["train.steps", "=3", "train..steps=3"])
def test_malformed_override_says_how_to_write_one(bad):
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(overrides=[bad])


def test_override_into_a_value_is_rejected():
    with pytest.raises(ConfigError, match="'train.steps' is a value, not a section"):
        load_config(overrides=["train.steps.x=1"])


def test_invalid_yaml_and_missing_preset_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: config file is not valid YAML at line"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no-such-preset: config file not found"):
        load_config("no-such-preset")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listing)


def test_dump_round_trips_through_yaml(tmp_path):
    config = load_config("smoke", ["train.steps=7"])
    dumped = tmp_path / "effective.yaml"
    dumped.write_text(dump_config(config))
    assert load_config(dumped) == config


def test_python_tags_are_named_as_such_never_loaded(tmp_path):
    """`!!python` YAML was reported as 'not valid YAML'; it is valid and refused on purpose."""
    from stemloop.adapt.recipe import read_recipe
    from stemloop.datasets.mixbus_yaml import load_schema

    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    evil.write_text(f"train: !!python/object/apply:os.mkdir ['{marker}']\n")
    for load, what in ((load_config, "config file"), (read_recipe, "recipe"),
                       (load_schema, "mix-bus schema")):
        with pytest.raises(ConfigError, match=rf"evil\.yaml: {what} uses a Python tag at line 1"):
            load(evil)
    assert not marker.exists()


def test_a_guidance_file_becomes_loop_guidance_and_mistakes_name_the_file(tmp_path):
    from stemloop.config import guidance_overrides

    good = tmp_path / "guidance.yaml"
    good.write_text("recording: /x/reel.wav\ntarget: [[1.0, 2.5]]\ncomplement: []\n"
                    "exclude: [[3.0, 3.25]]\n")
    config = load_config(None, guidance_overrides(good))
    assert config.loop.guidance.target == [(1.0, 2.5)]
    assert config.loop.guidance.exclude == [(3.0, 3.25)] and config.loop.guidance.complement == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [[1, 2]]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown guidance key 'targets'"):
        guidance_overrides(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: a guidance file is a mapping"):
        guidance_overrides(bad)
    with pytest.raises(ConfigError, match="missing.yaml"):
        guidance_overrides(tmp_path / "missing.yaml")
