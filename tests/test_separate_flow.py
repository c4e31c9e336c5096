"""End to end: the real ``separate`` Prefect flow and ``stemloop separate``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemloop.adapt.checkpoint import save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.config import load_config
from stemloop.flows.cli.main import main

RATE = 16000


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = load_config("smoke").model.model_copy(update={"targets": ["voice", "music"]})
    return save_checkpoint(tmp_path / "tiny.pt", build_model(config, RATE))


@pytest.fixture
def stereo_mix(write_wav) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(3).normal(0, 0.1, (int(2.5 * RATE), 2)).astype(np.float32)
    return write_wav("mix.wav", data, RATE), data


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_flow_writes_stems_record_and_reuses_its_cache(prefect_harness, tiny_checkpoint,
                                                       stereo_mix, tmp_path: Path):
    from stemloop.flows.separate import separate

    source, data = stereo_mix
    before = digest(source)
    out = tmp_path / "stems"
    record = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert list(record["stems"]) == ["voice", "music", "background"]
    stems = [sf.read(record["stems"][n], dtype="float32")[0] for n in record["stems"]]
    assert all(s.shape == data.shape for s in stems)
    assert np.abs(sum(stems) - data).max() < 1e-6
    assert json.loads((out / "separation.json").read_text()) == record
    assert record["frames"] == data.shape[0] and record["model_rate"] == [RATE]
    assert digest(source) == before
    again = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert again["seconds"] == record["seconds"]  # the persisted result, not a rerun
    (out / "voice.wav").unlink()
    redone = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert (out / "voice.wav").is_file() and redone["stems"] == record["stems"]


@pytest.mark.slow
def test_cli_separates_and_prints_stems(prefect_harness, tiny_checkpoint, stereo_mix,
                                        tmp_path: Path, capsys):
    source, data = stereo_mix
    out = tmp_path / "cli-out"
    code = main(["separate", str(source), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--strength", "2", "--config", "smoke", "--set", "separate.chunk_seconds=0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["background.wav", "music.wav",
                                                     "separation.json", "voice.wav"]
    record = json.loads((out / "separation.json").read_text())
    assert record["strength"] == 2.0 and record["chunk_seconds"] == 0.5
    assert "voice.wav" in printed and "separation.json" in printed
    total = sum(sf.read(out / f"{n}.wav", dtype="float32")[0]
                for n in ("voice", "music", "background"))
    assert np.abs(total - data).max() < 1e-6


def test_strength_on_a_maskless_model_is_refused(stereo_mix, tmp_path: Path):
    from stemloop.adapt.separate import prepare
    from stemloop.errors import UserError

    config = load_config("smoke")
    maskless = save_checkpoint(tmp_path / "direct.pt",
                               build_model(config.model.model_copy(update={"head": "maskless"})))
    assert prepare(stereo_mix[0], config, maskless).strength == 1.0
    with pytest.raises(UserError, match="maskless"):
        prepare(stereo_mix[0], config, maskless, strength=2.0)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_cli_mistakes_are_one_line_exit_2_and_write_nothing(tiny_checkpoint, stereo_mix,
                                                           tmp_path: Path, capsys):
    source, _ = stereo_mix
    before = digest(source)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04junk")
    out = tmp_path / "never"
    cases = [
        (["separate", str(tmp_path / "missing.wav"), "--model", str(tiny_checkpoint)],
         "no such file"),
        (["separate", str(source), "--model", str(junk)], "not a readable checkpoint"),
        (["separate", str(source), "--model", str(tmp_path / "none.pt")], "no such checkpoint"),
        (["separate", str(source), "--model", str(tiny_checkpoint), "--strength", "-1"],
         "strength"),
        (["separate", str(source), "--recipe", str(tmp_path / "none.yaml")], "cannot read"),
    ]
    for argv, words in cases:
        code = main([*argv, "--out", str(out)])
        message = capsys.readouterr().err.strip()
        assert code == 2, argv
        assert words in message and len(message.splitlines()) == 1, message
    assert not out.exists()
    assert digest(source) == before


@pytest.mark.slow
def test_a_poisoned_cache_file_is_recomputed_not_run(prefect_harness, tiny_checkpoint,
                                                     tmp_path: Path):
    """The issue's attack on the real `separate` flow: replace its cached result, rerun."""
    from prefect.serializers import PickleSerializer
    from prefect.settings import get_current_settings

    from stemloop.flows.separate import separate
    from tests.test_results import poisoned

    source = tmp_path / "take.wav"
    sf.write(source, np.random.default_rng(0).normal(0, 0.1, (RATE, 2)).astype(np.float32), RATE)
    storage = Path(get_current_settings().results.local_storage_path)
    keys = storage / "keys"
    before = {p.name for p in keys.glob("separate-*")} if keys.is_dir() else set()
    out = tmp_path / "stems"
    record = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    [key] = [p for p in keys.glob("separate-*") if p.name not in before]
    value = storage / key.name
    assert json.loads(key.read_text())["serializer"] == {"type": "stemloop-json"}
    assert json.loads(value.read_text())["__stemloop_record__"] == "SeparationRecord"
    def inode() -> int:  # a recomputation writes new stem files (temp file + rename)
        return (out / "voice.wav").stat().st_ino

    first = inode()
    again = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
    assert again == record and inode() == first  # served from the cache

    marker = tmp_path / "ran"
    metadata, payload = poisoned(marker, PickleSerializer())
    for files in ((key, metadata), (value, payload)), ((value, payload),):
        for path, content in files:  # both files, then the value alone
            path.write_bytes(content)
        before = inode()
        redone = separate(str(source), str(out), model=str(tiny_checkpoint), config_path="smoke")
        assert not marker.exists()
        assert redone["stems"] == record["stems"] and inode() != before
        assert json.loads(key.read_text())["serializer"] == {"type": "stemloop-json"}
        assert json.loads(value.read_text())["__stemloop_record__"] == "SeparationRecord"


def _separate(*argv: str) -> int:
    return main(["separate", *argv, "--config", "smoke"])


def _one_line_error(capsys, *words: str) -> str:
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert all(w in message for w in words), message
    return message


@pytest.mark.slow
def test_separate_never_writes_over_its_input_or_other_stems(prefect_harness, tiny_checkpoint,
                                                            tmp_path: Path, capsys, monkeypatch):
    """The issue's data-loss cases: --out onto the input's own folder, two takes named alike,
    stems of another recording, a rerun, a replaced stem, report/runs files."""
    rng = np.random.default_rng(5)
    takes = {}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        data = rng.normal(0, 0.1, (RATE, 2)).astype(np.float32)
        takes[folder] = (write := tmp_path / folder / "take.wav", data)
        sf.write(write, data, RATE, subtype="FLOAT")
    model = ("--model", str(tiny_checkpoint))

    # a recording named like a stem, separated into its own folder: refused, untouched
    voice = tmp_path / "a" / "voice.wav"
    sf.write(voice, takes["a"][1], RATE, subtype="FLOAT")
    before = digest(voice)
    listing = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert _separate(str(voice), *model, "--out", str(tmp_path / "a")) == 2
    _one_line_error(capsys, "voice.wav", "is the input recording", "--out")
    assert _separate(str(voice), *model, "--out", str(tmp_path / "a"), "--force") == 2
    _one_line_error(capsys, "is the input recording")
    assert digest(voice) == before and sorted(p.name for p in (tmp_path / "a").iterdir()) == listing

    # two takes named alike get their own default folders
    monkeypatch.chdir(tmp_path)
    assert _separate(str(tmp_path / "a" / "take.wav"), *model) == 0
    assert _separate(str(tmp_path / "b" / "take.wav"), *model) == 0
    capsys.readouterr()
    for folder, name in (("a", "take-stems"), ("b", "take-stems-2")):
        record = json.loads((tmp_path / name / "separation.json").read_text())
        assert record["input"] == str((tmp_path / folder / "take.wav").resolve())
        total = sum(sf.read(p, dtype="float32")[0] for p in record["stems"].values())
        assert np.abs(total - takes[folder][1]).max() < 1e-6
    # the same take again reuses its folder (a rerun, from the cache)
    assert _separate(str(tmp_path / "b" / "take.wav"), *model) == 0
    assert "take-stems-2" in capsys.readouterr().out

    # an explicit --out holding another recording's stems: refused unless --force
    first = digest(tmp_path / "take-stems" / "voice.wav")
    assert _separate(str(tmp_path / "b" / "take.wav"), *model, "--out", "take-stems") == 2
    _one_line_error(capsys, "take-stems", "already holds stems of", "--force")
    assert digest(tmp_path / "take-stems" / "voice.wav") == first
    # other settings into a take's own folder: refused too
    assert _separate(str(tmp_path / "a" / "take.wav"), *model, "--out", "take-stems",
                     "--strength", "2") == 2
    _one_line_error(capsys, "other settings", "--force")
    assert _separate(str(tmp_path / "b" / "take.wav"), *model, "--out", "take-stems",
                     "--force") == 0
    capsys.readouterr()
    record = json.loads((tmp_path / "take-stems" / "separation.json").read_text())
    assert record["input"] == str((tmp_path / "b" / "take.wav").resolve())

    # another output subtype is other settings too
    assert _separate(str(tmp_path / "b" / "take.wav"), *model, "--out", "take-stems-2",
                     "--set", "io.output_subtype=PCM_16") == 2
    _one_line_error(capsys, "other settings", "--force")

    # a replaced stem is noticed by content, not existence: the rerun rewrites it
    stem = tmp_path / "take-stems-2" / "voice.wav"
    sf.write(stem, np.zeros((RATE, 2), np.float32), RATE, subtype="FLOAT")
    assert _separate(str(tmp_path / "b" / "take.wav"), *model, "--out", "take-stems-2") == 0
    record = json.loads((tmp_path / "take-stems-2" / "separation.json").read_text())
    assert digest(stem) == record["sha256"]["voice"]
    total = sum(sf.read(p, dtype="float32")[0] for p in record["stems"].values())
    assert np.abs(total - takes["b"][1]).max() < 1e-6

    # report --out and runs --csv never replace a file without --force
    kept = tmp_path / "notes.txt"
    kept.write_text("mine")
    assert main(["report", str(tmp_path / "no-run"), "--out", str(kept)]) == 2
    _one_line_error(capsys, "notes.txt", "already exists", "--force")
    assert main(["runs", "--csv", str(kept)]) == 2
    _one_line_error(capsys, "notes.txt", "already exists", "--force")
    assert kept.read_text() == "mine"


@pytest.mark.slow
def test_a_full_output_disk_is_one_line_and_leaves_no_partial_stems(prefect_harness,
                                                                    tiny_checkpoint, tmp_path,
                                                                    capsys, small_disk):
    """A real small file system (tmpfs) as --out: libsndfile said only "System error."."""
    disk = small_disk("256k")
    source = tmp_path / "take.wav"
    sf.write(source, np.random.default_rng(2).normal(0, 0.1, (3 * RATE, 2)).astype(np.float32),
             RATE, subtype="FLOAT")
    before = digest(source)
    code = _separate(str(source), "--model", str(tiny_checkpoint), "--out", str(disk))
    err = capsys.readouterr().err
    # the session's Prefect logs at INFO (the CLI sets WARNING): only those lines besides
    lines = [line for line in err.strip().splitlines() if "| INFO " not in line and line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "no space left" in lines[0] and "--out" in lines[0]
    assert code == 2 and list(disk.iterdir()) == [] and digest(source) == before


@pytest.mark.slow
def test_several_inputs_and_a_folder_each_get_their_stems_after_all_are_checked(
        prefect_harness, tiny_checkpoint, write_wav, tmp_path: Path, capsys):
    rng = np.random.default_rng(7)
    takes = {name: rng.normal(0, 0.1, (RATE, 1)).astype(np.float32) for name in "abc"}
    first = write_wav("a.wav", takes["a"], RATE)
    folder = tmp_path / "reels"
    folder.mkdir()
    for name in "bc":
        sf.write(folder / f"{name}.wav", takes[name], RATE, subtype="FLOAT")
    (folder / "notes.txt").write_text("not audio, not listed")
    out = tmp_path / "stems"
    broken = write_wav("broken.wav", takes["a"], RATE)
    broken.write_bytes(broken.read_bytes()[:30])  # a header, then nothing
    args = ["--model", str(tiny_checkpoint), "-o", str(out), "--config", "smoke"]
    assert main(["separate", str(first), str(folder), str(broken), *args]) == 2
    assert "broken.wav" in capsys.readouterr().err and not out.exists()  # nothing written
    assert main(["separate", str(first), str(folder), *args]) == 0
    printed = capsys.readouterr().out
    for name, data in takes.items():
        stems = out / f"{name}-stems"
        total = sum(sf.read(stems / f"{s}.wav", dtype="float32", always_2d=True)[0]
                    for s in ("voice", "music", "background"))
        assert np.abs(total - data).max() < 1e-6 and str(stems.resolve()) in printed
    twin = tmp_path / "other"
    twin.mkdir()
    sf.write(twin / "a.wav", takes["b"], RATE, subtype="FLOAT")
    fresh = ["--model", str(tiny_checkpoint), "-o", str(tmp_path / "fresh"), "--config", "smoke"]
    assert main(["separate", str(first), str(twin / "a.wav"), *fresh]) == 2  # one folder
    assert "shares its name" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    assert main(["separate", str(first), str(twin / "a.wav"), *args]) == 0  # a-stems taken:
    assert (out / "a-stems-2" / "voice.wav").is_file()  # the other a.wav gets the next one


@pytest.mark.slow
@pytest.mark.parametrize("written,flags,expected", [
    (("FLAC", "PCM_16"), [], ("flac", "PCM_16")),            # auto: as the recording
    (("WAV", "PCM_24"), [], ("wav", "PCM_24")),
    (("FLAC", "PCM_16"), ["--format", "wav", "--bit-depth", "24"], ("wav", "PCM_24")),
    (("WAV", "PCM_16"), ["--bit-depth", "32f"], ("wav", "FLOAT")),
    (("OGG", "VORBIS"), [], ("wav", "FLOAT")),               # lossy in: float WAV out
])
def test_stems_follow_the_input_format_and_depth_and_still_sum_exactly(
        prefect_harness, tiny_checkpoint, tmp_path: Path, written, flags, expected):
    fmt, subtype = written
    source = tmp_path / f"take.{fmt.lower()}"
    data = np.random.default_rng(5).normal(0, 0.1, (2 * RATE, 2)).clip(-1, 1)
    sf.write(source, data, RATE, format=fmt, subtype=subtype)
    out = tmp_path / "stems"
    assert main(["separate", str(source), "--model", str(tiny_checkpoint), "-o", str(out),
                 "--config", "smoke", *flags]) == 0
    suffix, depth = expected
    paths = [out / f"{name}.{suffix}" for name in ("voice", "music", "background")]
    assert all(sf.info(p).subtype == depth for p in paths)
    record = json.loads((out / "separation.json").read_text())
    assert (record["output_format"], record["output_subtype"]) == expected
    mixture = sf.read(source, dtype="float64")[0]
    total = sum(sf.read(p, dtype="float64")[0] for p in paths)
    if depth == "FLOAT" or subtype == "VORBIS":
        assert np.abs(total - mixture).max() < 1e-6
    else:  # on the integer grid: the complement took the rounding, so the sum is exact
        assert np.array_equal(total, mixture)


@pytest.mark.slow
def test_library_chatter_only_with_verbose(tiny_checkpoint, stereo_mix, tmp_path: Path):
    """Prefect's own lines (its temporary server, task states) stay out of a command's
    output unless -v; the user's environment is not asked (it sets no level here)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL", "STEMLOOP_SET_LEVELS")}
    base = [sys.executable, "-m", "stemloop.flows.cli"]
    args = ["separate", str(stereo_mix[0]), "--model", str(tiny_checkpoint), "--config",
            "smoke"]
    quiet = subprocess.run([*base, *args, "-o", str(tmp_path / "a")], env=env,
                           capture_output=True, text=True, timeout=300)
    loud = subprocess.run([*base, "-v", *args, "-o", str(tmp_path / "b")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "Finished in state" not in quiet.stderr + quiet.stdout
    assert "Finished in state Completed()" in loud.stderr + loud.stdout
    assert "voice.wav" in quiet.stdout and "voice.wav" in loud.stdout
