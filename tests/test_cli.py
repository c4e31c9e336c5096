"""The stemloop command: help, version, info, config show, and exit codes for mistakes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stemloop.flows.cli.main import main
from tests.signals import sine


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_prints_every_field(capsys, write_wav):
    path = write_wav("tone.wav", sine(997, 48000, 3.0, 1.0, channels=2), 48000, "PCM_24")
    code, out, _ = run(capsys, "info", str(path), "--json")
    assert code == 0
    fields = json.loads(out)
    assert fields["format"] == "WAV" and fields["subtype"] == "PCM_24"
    assert fields["sample_rate"] == 48000 and fields["channels"] == 2
    assert fields["duration_s"] == 3.0
    assert fields["peak_dbfs"] == pytest.approx(0.0, abs=0.01)
    assert fields["integrated_lufs"] == pytest.approx(-0.04, abs=0.1)  # two channels: +3 dB
    assert "state_dir" in fields
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0 and "integrated lufs" in out and "LUFS" in out


def test_info_on_clipped_input_warns_and_succeeds(capsys, write_wav):
    path = write_wav("hot.wav", np.clip(sine(440, 16000, 2.0, 2.0), -1, 1), 16000)
    code, _, err = run(capsys, "info", str(path))
    assert code == 0 and "warning" in err and "clipped" in err


@pytest.mark.parametrize("name,content", [("missing.wav", None), ("empty.wav", b""),
                                          ("junk.flac", b"\x00junk" * 100),
                                          ("reel [1962] take [b].wav", b"")])
def test_info_on_bad_input_is_one_line_and_exit_2(capsys, tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "info", str(path))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_config_show_prints_effective_yaml(capsys):
    code, out, _ = run(capsys, "config", "show", "--config", "smoke", "--set", "train.steps=123")
    assert code == 0 and "steps: 123" in out


def test_config_show_rejects_a_bad_key_with_exit_2(capsys):
    code, _, err = run(capsys, "config", "show", "--set", "train.steps=0")
    assert code == 2 and "'train.steps' = 0" in err and "≥ 1" in err


def test_an_unknown_key_given_with_set_blames_set_not_the_defaults(capsys):
    code, _, err = run(capsys, "config", "show", "--set", "nosuch.key=1")
    assert code == 2 and "'nosuch' is unknown (from --set nosuch.key=1)" in err
    assert "default.yaml" not in err


def test_every_command_help_shows_an_example(capsys):
    from stemloop.flows.cli.main import build_parser

    def commands(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from ([(name, sub)] if sub.get_default("handler") else commands(sub))

    found = dict(commands(build_parser()))
    assert {"separate", "adapt", "models", "show", "info"} <= set(found)
    for name, sub in found.items():
        assert "example" in (sub.epilog or ""), name


def test_models_lists_shipped_checkpoints_pretrained_and_recipes(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    found = json.loads(out)
    shipped = {m["name"]: m for m in found["shipped"]}
    assert shipped["general-dialogue-v4"]["stems"] == ["dialogue", "background"]
    assert shipped["general-dialogue-v4"]["rates"] == [44100]
    assert shipped["general-dialogue-v2"]["rates"] == [16000, 48000]
    assert shipped["general-music-v1"]["stems"][0] == "music"
    assert "archive" in {r["name"] for r in found["recipes"]}
    assert {m["name"] for m in found["pretrained"]} == {"spleeter", "spleeter-accompaniment"}
    code, out, _ = run(capsys, "models")
    assert code == 0 and "general-dialogue-v4 " in out and "dialogue + background" in out


def test_installed_console_script_help_version_and_user_error_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "stemloop.flows.cli"]
    help_run = subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True)
    assert "info" in help_run.stdout and "config" in help_run.stdout
    version = subprocess.run([*exe, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("stemloop 0.1.0") and "torch 2.11" in version.stdout
    flag = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=True)
    assert flag.stdout.strip() == "stemloop 0.1.0"
    bad = subprocess.run([*exe, "info", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"stemloop: error: {tmp_path}: is a directory; give an audio file"


@pytest.mark.parametrize("model", ["missing.pt", "not-a-checkpoint.pt"])
def test_adapt_with_an_unusable_starting_model_is_one_line_and_exit_2(capsys, tmp_path,
                                                                       write_wav, model):
    source = write_wav("scene.wav", sine(440, 16000, 1.0, 0.5))
    path = tmp_path / model
    if model.startswith("not"):
        path.write_bytes(b"not a checkpoint")
    code, out, err = run(capsys, "adapt", str(source), "--set", f"loop.model={path}")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(path) in err
    assert not list(Path(os.environ["STEMLOOP_HOME"]).glob("runs/*"))  # no partial run


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", ["separate", "adapt", "info"])
@pytest.mark.parametrize("bad,words", [("nan", "NaN or infinite samples (first at 0.500 s)"),
                                       ("inf", "NaN or infinite samples (first at 1.250 s)")])
def test_non_finite_samples_stop_every_command_up_front(capsys, tmp_path, write_wav, command,
                                                        bad, words):
    """Checked before torch models, Prefect or MLflow start: one line, exit 2, nothing
    written (no state folder content, no output folder), the input unchanged."""
    data = sine(440, 16000, 2.0, 0.5, channels=2)
    data[int((0.5 if bad == "nan" else 1.25) * 16000), 1] = np.nan if bad == "nan" else np.inf
    source = write_wav("take.wav", data, 16000, "FLOAT")
    before = _digest(source)
    out = tmp_path / "stems"
    argv = [command, str(source)] + (["--out", str(out)] if command == "separate" else [])
    code, printed, err = run(capsys, *argv)
    assert code == 2 and printed == ""
    assert len(err.strip().splitlines()) == 1 and words in err and str(source) in err, err
    assert not out.exists() and not any(Path(os.environ["STEMLOOP_HOME"]).iterdir())
    assert _digest(source) == before


def test_seven_channels_have_a_loudness(capsys, write_wav):
    """pyloudnorm stops at five channels; stemloop measures up to eight (was a traceback)."""
    path = write_wav("surround.wav", sine(997, 48000, 2.0, 0.5, channels=7), 48000)
    code, out, err = run(capsys, "info", str(path), "--json")
    assert code == 0, err
    # BS.1770: a 997 Hz sine of amplitude 0.5 in one channel reads -9.03 LUFS; seven equal
    # channels weighted 1, 1, 1, 1.41, 1.41, 1, 1 add 10*log10(7.82) = 8.93 dB
    assert json.loads(out)["integrated_lufs"] == pytest.approx(-9.03 + 8.93, abs=0.1)


def test_silent_and_clipped_input_warn_before_separating(tmp_path, write_wav):
    from stemloop.adapt.separate import input_stats
    from stemloop.config import load_config

    config = load_config("smoke")
    silent = write_wav("silent.wav", np.zeros((16000, 1), np.float32))
    hot = write_wav("hot.wav", np.clip(sine(440, 16000, 1.0, 3.0), -1, 1))
    assert any("digitally silent" in n for n in input_stats(silent, config).warnings())
    assert any("clipped" in n for n in input_stats(hot, config).warnings())


@pytest.mark.parametrize("name", ["../../../escape-run", "/tmp/abs-run", "a/b", "..", ".hidden",
                                  "", "x" * 81, "run name"])
def test_run_names_are_plain_names(capsys, tmp_path, write_wav, name):
    """A run name never leaves the state folder: CLI, batch rows and deployments share the check."""
    from stemloop.errors import UserError
    from stemloop.tasks.state import check_run_name

    source = write_wav("scene.wav", sine(440, 16000, 2.0, 0.5))
    code, _, err = run(capsys, "adapt", str(source), "--run", name)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run name" in err, err
    assert not any(Path(os.environ["STEMLOOP_HOME"]).iterdir())
    with pytest.raises(UserError):
        check_run_name(name)
    assert check_run_name("take-2_v1.0") == "take-2_v1.0"


def test_upscale_of_a_model_that_cannot_be_upscaled_is_one_line_and_exit_2(capsys, tmp_path):
    shipped = Path(__file__).parents[1] / "models" / "general-dialogue-v3" / "model-44100.pt"
    code, out, err = run(capsys, "upscale", str(shipped), "--to", "48000",
                         "--out", str(tmp_path / "up"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "cannot be upscaled" in err
    assert not (tmp_path / "up").exists()
