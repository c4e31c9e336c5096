"""Operations at tiny scale with real parts: ``adapt-batch`` (three recordings at once, a
corrupt one and an unwritable one failing alone), ``runs`` and ``report``, and the
one-line errors for mistakes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from stemloop.adapt.checkpoint import save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.config import load_config
from stemloop.flows.cli.main import main
from stemloop.flows.manifest import read_jobs
from tests.signals import speechlike

STEMLOOP = [sys.executable, "-m", "stemloop.flows.cli"]  # the command, this venv's

RATE = 16000


def tiny_recordings(folder: Path, count: int, seconds: float = 4.0) -> list[Path]:
    """``count`` different 'dialogue over hum and hiss' recordings, and a tiny model."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * RATE)) / RATE
        voice = speechlike(RATE, seconds, seed, peak=0.4)
        rest = 0.05 * np.sin(2 * np.pi * (50 + 10 * seed) * t) + 0.01 * rng.standard_normal(
            len(t))
        truth = folder / f"truth-{seed}"
        truth.mkdir(exist_ok=True)
        sf.write(truth / "dialogue.wav", voice.astype(np.float32), RATE, subtype="FLOAT")
        sf.write(truth / "background.wav", rest.astype(np.float32), RATE, subtype="FLOAT")
        paths.append(folder / f"scene-{seed}.wav")
        sf.write(paths[-1], voice.astype(np.float32) + rest.astype(np.float32), RATE,
                 subtype="FLOAT")
    return paths


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    config = load_config("smoke").model.model_copy(update={"complement": "background"})
    return save_checkpoint(path, build_model(config, RATE))


def tiny_sets(model: Path, library: Path, *extra: str) -> list[str]:
    """One iteration of the smoke preset with the tiny model and library."""
    return [f"loop.model={model}", f"mixbus.library_dir={library}",
            "loop.max_iterations=1", "loop.patience=10", "train.threads=1", *extra]


def assert_stems_sum_to_input(report: dict) -> None:
    mixture, rate = sf.read(report["recording"], dtype="float32")
    stems = [sf.read(p, dtype="float32") for p in report["final"].values()]
    assert len(stems) == 2 and all(r == rate and s.shape == mixture.shape for s, r in stems)
    assert np.abs(sum(s for s, _ in stems) - mixture).max() < 1e-5


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_library, prefect_harness):
    """One real batch: three good recordings at once (one with a reference), a corrupt
    file, and a recording whose run folder cannot be created."""
    from stemloop.flows.adapt import run_folder

    folder = tmp_path_factory.mktemp("batch")
    good = tiny_recordings(folder, 4)
    blocked = good.pop()
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 50)
    state = tmp_path_factory.mktemp("batch-state")
    # 400 steps without early stopping (not the preset's 4): each run lasts well over the
    # ~5 s that the three child flow runs take to start, so they surely overlap
    sets = tiny_sets(tiny_model(folder / "tiny.pt"), tiny_library,
                     "orchestration.concurrency=3", "train.steps=400",
                     "train.early_stop_patience=0")
    argv = ["adapt-batch", str(folder / "manifest.csv"), "--config", "smoke",
            *[a for s in sets for a in ("--set", s)]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEMLOOP_HOME", str(state))
        # An output that cannot be written: a file where the recording's run folder goes
        # (the OS refuses with ENOTDIR, as a full disk refuses with ENOSPC; root ignores
        # chmod, so a read-only folder cannot be simulated here).
        config = load_config("smoke", sets)
        digest = hashlib.sha256(blocked.read_bytes()).hexdigest()
        in_the_way = run_folder(config, str(blocked), digest, None).parent
        in_the_way.parent.mkdir(parents=True)
        in_the_way.write_text("not a folder")
        rows = ["recording,overrides,reference", f"{good[0].name},,truth-0",
                f"{good[1].name},train.steps=380,", f"{good[2].name},,", "corrupt.wav,,",
                f"{blocked.name},,"]
        (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
        code = main(argv)
    summary = next((state / "batches").glob("*/summary.csv"))
    return {"code": code, "state": state, "good": good, "blocked": blocked,
            "in_the_way": in_the_way, "table": pd.read_csv(summary, keep_default_na=False),
            "json": json.loads(summary.with_suffix(".json").read_text())}


@pytest.mark.slow
def test_batch_three_at_once_own_folders_and_mlflow_runs(batch):
    from mlflow import MlflowClient

    from stemloop.tasks.state import tracking_uri

    assert batch["code"] == 2  # some recordings failed
    table = batch["table"].set_index(batch["table"]["recording"].map(lambda p: Path(p).name))
    done = table[table["status"] == "completed"]
    assert sorted(done.index) == sorted(p.name for p in batch["good"])
    assert done["run_dir"].nunique() == 3 and done["mlflow_run_id"].nunique() == 3
    client = MlflowClient(tracking_uri(batch["state"]))
    spans = []
    for path in batch["good"]:
        row = done.loc[path.name]
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
        assert report["recording"] == str(path) and report["mlflow_run_id"] == row[
            "mlflow_run_id"]
        assert_stems_sum_to_input(report)
        parent = client.get_run(row["mlflow_run_id"])
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["stemloop.recording_sha256"] == hashlib.sha256(
            path.read_bytes()).hexdigest()
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert len(children) == 2  # iterations 0 and 1, under their own parent only
        spans.append((parent.info.start_time, parent.info.end_time))
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # all three at once
    assert done.loc["scene-0.wav", "si_sdr"] != ""  # the row with a reference
    assert done.loc["scene-1.wav", "si_sdr"] == ""


@pytest.mark.slow
def test_batch_bad_recording_and_unwritable_output_fail_alone_with_one_line(batch):
    table = batch["table"].set_index(batch["table"]["recording"].map(lambda p: Path(p).name))
    corrupt = table.loc["corrupt.wav"]
    assert corrupt["status"] == "failed"
    assert "corrupt.wav: not a readable audio file" in corrupt["reason"]
    blocked = table.loc[batch["blocked"].name]
    assert blocked["status"] == "failed"
    assert f"{batch['in_the_way']}" in blocked["reason"]
    assert "cannot write (Not a directory, ENOTDIR)" in blocked["reason"]
    for reason in table["reason"]:
        assert "\n" not in reason and "Traceback" not in reason
    assert batch["in_the_way"].read_text() == "not a folder"  # nothing was overwritten


@pytest.mark.slow
def test_runs_lists_the_batch_and_report_writes_a_page_logged_to_mlflow(
        batch, monkeypatch, capsys, tmp_path):
    from mlflow import MlflowClient

    from stemloop.tasks.state import tracking_uri

    monkeypatch.setenv("STEMLOOP_HOME", str(batch["state"]))
    capsys.readouterr()
    assert main(["runs", "--csv", str(tmp_path / "runs.csv")]) == 0
    listed = pd.read_csv(tmp_path / "runs.csv")
    # three finished; the unwritable one stopped at its run folder's lock, before its MLflow
    # run began (no FAILED run left behind), and the corrupt one never began
    assert len(listed) == 3
    assert sorted(listed["status"]) == ["FINISHED", "FINISHED", "FINISHED"]
    finished = listed[listed["status"] == "FINISHED"].set_index("recording")
    assert (finished["best_iteration"].isin([0, 1])).all()
    assert finished["si_sdr"].notna().sum() == 1 and not np.isnan(
        finished.loc["scene-0.wav", "si_sdr"])
    assert "scene-0.wav" in capsys.readouterr().out
    run_id = finished.loc["scene-0.wav", "run_id"]
    run_dir = Path(batch["table"].set_index("mlflow_run_id").loc[run_id, "run_dir"])
    assert main(["report", run_id, "--seconds", "2"]) == 0
    page = (run_dir / "report.html").read_text()
    report = json.loads((run_dir / "report.json").read_text())
    count = len(report["iterations"])
    # the review page, as one file: the recording, then every iteration's dialogue and
    # what it removed, each its first 2 s as inline FLAC; curves and spectrograms inline
    assert page.count('class="source"') == 1 + 2 * count
    assert page.count('"src": "data:audio/flac;base64,') == 1 + 2 * count
    assert page.count("<small>(first 2.0 s of 4.0 s)</small>") == 1 + 2 * count
    assert page.count('src="data:image/png;base64,') == 1 + count  # curves, spectrograms
    assert f"iteration {report['best_iteration']} (delivered)" in page
    assert not re.search(r"(src|href)=['\"]?(https?:|/|file:)", page)  # self-contained
    artifacts = [a.path for a in MlflowClient(tracking_uri(batch["state"])).list_artifacts(
        run_id)]
    assert "report.html" in artifacts
    assert main(["report", str(run_dir), "--out", str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").stat().st_size > 10_000


def test_manifest_rows_relative_paths_overrides_and_duplicates(tmp_path):
    (tmp_path / "m.csv").write_text("recording,overrides\na.wav, train.steps=3;loop.patience=2\n"
                                    "b.wav,\na.wav,train.steps=3;loop.patience=2\n,\n")
    jobs = read_jobs(tmp_path / "m.csv")
    assert jobs[0].recording == str(tmp_path / "a.wav")
    assert jobs[0].overrides == ["train.steps=3", "loop.patience=2"] and jobs[0].problem is None
    assert jobs[1].overrides == [] and jobs[1].problem is None
    assert "same recording and overrides as line 2" in jobs[2].problem
    assert "line 5: empty 'recording'" in jobs[3].problem


def test_manifest_reference_that_is_missing_and_compressed_recordings(tmp_path):
    """A missing reference folder is the row's problem (was: "cannot write ... free space");
    a folder of MP3 and Opus files is a batch, as `adapt` reads both."""
    (tmp_path / "refs").mkdir()
    (tmp_path / "m.csv").write_text("recording,reference\na.wav,refs\nb.wav,nope\n")
    good, bad = read_jobs(tmp_path / "m.csv")
    assert good.problem is None and good.reference == str(tmp_path / "refs")
    assert "line 3: reference folder" in bad.problem and "does not exist" in bad.problem
    folder = tmp_path / "compressed"
    folder.mkdir()
    for name in ("a.mp3", "b.opus", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert [Path(j.recording).name for j in read_jobs(folder)] == ["a.mp3", "b.opus"]


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "missing", "missing: no such folder or CSV manifest"),
    (lambda d: d, "no recordings in this folder"),
    (lambda d: _write(d / "list.txt", "recording\na.wav\n"), "list.txt: not a folder or a .csv"),
    (lambda d: _write(d / "m.csv", "file,overrides\na.wav,\n"), "m.csv: bad columns ('file'"),
    (lambda d: _write(d / "m.csv", "recording\n"), "m.csv: the manifest lists no recordings"),
])
def test_batch_mistakes_are_one_line_and_exit_2(tmp_path, capsys, make, expected):
    code = main(["adapt-batch", str(make(tmp_path))])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert expected in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not (Path(os.environ["STEMLOOP_HOME"]) / "batches").exists()


@pytest.mark.parametrize("run,expected", [
    ("0123456789abcdef0123456789abcdef", "no MLflow store at"),
    ("not-a-run", "not-a-run: no such run folder or MLflow run id"),
])
def test_report_of_an_unknown_run_is_one_line_and_exit_2(capsys, run, expected):
    code = main(["report", run])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_report_of_a_run_id_missing_from_a_store_is_one_line(capsys):
    assert main(["runs"]) == 0
    assert "no adaptation runs" in capsys.readouterr().out
    from stemloop.tasks.state import state_dir, tracking_uri
    from stemloop.tasks.tracking import Tracker

    Tracker(load_config(), state_dir()).experiment_id()  # a store that exists, runs or not
    capsys.readouterr()
    code = main(["report", "0123456789abcdef0123456789abcdef"])
    err = capsys.readouterr().err
    assert code == 2 and "no finished MLflow run with this id" in err
    assert len(err.strip().splitlines()) == 1 and tracking_uri(state_dir()) in err


def test_report_of_an_unfinished_run_folder_is_one_line(capsys, tmp_path):
    code = main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "no report.json, so the run has not finished" in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_sigterm_stops_a_batch_without_starting_its_queued_recordings(tiny_library, tmp_path):
    """adapt-batch used to ignore SIGTERM until every queued recording had run (its pool
    waited for them). Now: exit 130 within seconds and the queued recordings never start."""
    import signal
    import subprocess
    import time

    from tests.test_state import prefect_servers, wait_until

    folder = tmp_path / "recordings"
    tiny_recordings(folder, 3)
    sets = tiny_sets(tiny_model(tmp_path / "tiny.pt"), tiny_library,
                     "orchestration.concurrency=1", "train.steps=2000",
                     "train.early_stop_patience=0")
    state = tmp_path / "state"
    batch = subprocess.Popen(
        [*STEMLOOP, "adapt-batch", str(folder), "--config", "smoke",
         *[a for s in sets for a in ("--set", s)]],
        cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "STEMLOOP_HOME": str(state)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: any(state.glob("runs/*/run-*/iter-000")), 300), \
            "the first recording never started"
        batch.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert batch.wait(60) == 130 and time.monotonic() - began < 60
        assert len(list(state.glob("runs/*/run-*"))) == 1  # the queued two never started
        # The running recording's thread used to start fresh Prefect servers once the exit
        # handler had stopped the first, and those outlived the batch.
        assert wait_until(lambda: not prefect_servers(state), 20), prefect_servers(state)
    finally:
        batch.kill()
        for pid in prefect_servers(state):
            os.kill(pid, signal.SIGKILL)
