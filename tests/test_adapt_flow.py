"""End to end: the real ``adapt-recording`` flow at tiny scale (real Prefect, MLflow, audio,
training), plus the kill-and-resume guarantee."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemloop.adapt.checkpoint import load_checkpoint, save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.config import load_config
from stemloop.datasets.audio import resample
from tests.signals import speechlike

STEMLOOP = [sys.executable, "-m", "stemloop.flows.cli"]  # the command, this venv's

RATE = 16000
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 6 s 16 kHz 'dialogue over hum and hiss' recording, its truth, a tiny model."""
    folder = tmp_path_factory.mktemp("recording")
    rng = np.random.default_rng(0)
    t = np.arange(6 * RATE) / RATE
    voice = speechlike(RATE, 6.0, 1, peak=0.4)
    rest = 0.05 * np.sin(2 * np.pi * 50 * t) + 0.01 * rng.standard_normal(len(t))
    truth = folder / "truth"
    truth.mkdir()
    sf.write(truth / "dialogue.wav", voice.astype(np.float32), RATE, subtype="FLOAT")
    sf.write(truth / "background.wav", rest.astype(np.float32), RATE, subtype="FLOAT")
    mixture = (voice.astype(np.float32) + rest.astype(np.float32))
    sf.write(folder / "scene.wav", mixture, RATE, subtype="FLOAT")
    torch.manual_seed(0)
    config = load_config("smoke").model.model_copy(update={"complement": "background"})
    model = save_checkpoint(folder / "tiny.pt", build_model(config, RATE))
    return folder / "scene.wav", truth, model


def overrides(model: Path | str, library: Path, *extra: str) -> list[str]:
    sets = [f"loop.model={model}", f"mixbus.library_dir={library}", "loop.patience=10",
            *extra]
    return [arg for item in sets for arg in ("--set", item)]


@pytest.mark.slow
def test_adapt_flow_delivers_stems_report_figures_and_mlflow_runs(
        prefect_harness, tiny_library, recording, capsys):
    from mlflow import MlflowClient

    from stemloop.flows.cli.main import main
    from stemloop.tasks.state import state_dir, tracking_uri

    source, truth, model = recording
    before = source.read_bytes()
    delivered = source.parent / "delivered"
    argv = ["adapt", str(source), "--config", "smoke", "--reference", str(truth),
            "-o", str(delivered), *overrides(model, tiny_library)]
    assert main(argv) == 0
    assert source.read_bytes() == before  # the input is never modified
    run_dir = next((state_dir() / "runs").glob("scene-*/run-*"))
    report = json.loads((run_dir / "report.json").read_text())
    printed = capsys.readouterr().out  # the end of the run: how good, why, where, what next
    first, chosen = report["iterations"][0], report["iterations"][report["best_iteration"]]
    assert f"{first['quality/estimate']:.2f} -> {chosen['quality/estimate']:.2f}" in printed
    assert "true dialogue SI-SDR" in printed and f"stemloop review {run_dir}" in printed
    assert "Finished in state" not in printed and "stopped" in printed
    assert report["start_model"] == str(model)
    assert re.search(rf"started from\s+{model.parent.name}/tiny.pt", printed)
    for path in report["final"].values():  # -o: the delivered stems copied there
        assert (delivered / Path(path).name).read_bytes() == Path(path).read_bytes()
        assert str(delivered / Path(path).name) in printed
    assert json.loads((delivered / "delivery.json").read_text())["run_dir"] == str(run_dir)
    _prefect_names_and_summary(report)
    assert len(report["iterations"]) == 3  # iteration 0 + loop.max_iterations (2)
    best = report["best_iteration"]
    estimates = [it["quality/estimate"] for it in report["iterations"]]
    assert estimates[best] == max(estimates)
    mixture, rate = sf.read(source, dtype="float32")
    stems = {n: sf.read(p, dtype="float32") for n, p in report["final"].items()}
    assert set(stems) == {"dialogue", "background"}
    assert all(r == rate and s.shape == mixture.shape for s, r in stems.values())
    assert np.abs(sum(s for s, _ in stems.values()) - mixture).max() < 1e-5
    for k in range(3):
        assert (run_dir / f"iter-{k:03d}" / "spectrograms" / "dialogue.png").stat().st_size > 0
        assert "reference/si_sdr_dialogue" in report["iterations"][k]
    assert (run_dir / "iter-001" / "model" / "model-16000.pt").is_file()
    assert not list(run_dir.glob("iter-*/model/pools"))  # resume-only data, removed when done
    assert not list(run_dir.glob("iter-*/model/*/last.pt"))
    assert (run_dir / "iterations.png").is_file() and (run_dir / "curves.png").is_file()
    client = MlflowClient(tracking_uri(state_dir()))
    parent = client.get_run(report["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    assert parent.data.tags["stemloop.recording_sha256"] == report["recording_sha256"]
    history = client.get_metric_history(parent.info.run_id, "quality/estimate")
    assert [m.step for m in history] == [0, 1, 2]
    assert all(len(repr(m.value)) <= 12 for m in history)  # six significant digits, no noise
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "cull/coverage_target" in children[0].data.metrics
    capsys.readouterr()
    assert main(argv) == 0  # a rerun is served from the cache and delivers the same stems
    again = json.loads((run_dir / "report.json").read_text())
    assert [it["quality/estimate"] for it in again["iterations"]] == estimates


def _prefect_names_and_summary(report: dict) -> None:
    """The flow run is named after the recording, task runs after their iteration, and the
    run's summary is a markdown artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["adapt-scene"])))
        assert runs, "no flow run named after the recording"
        names = {t.name for t in client.read_task_runs() if t.flow_run_id == runs[-1].id}
        artifacts = client.read_artifacts()
    assert {"separate-file-iter-0", "score-iteration-iter-0", "fine-tune-iter-1",
            "fine-tune-iter-2", "score-iteration-iter-2"} <= names, names
    summary = next(a for a in artifacts if a.key == "adapt-scene")
    assert summary.type == "markdown" and "true dialogue SI-SDR" in summary.data
    assert f"stemloop review {report['run_dir']}" in summary.data
    assert str(Path(report["run_dir"]) / "report.json") in summary.data


def _final(state: Path) -> dict[str, np.ndarray]:
    report = json.loads(next((state / "runs").glob("scene-*/run-*/report.json")).read_text())
    return {n: sf.read(p, dtype="float32")[0] for n, p in report["final"].items()}


@pytest.mark.slow
def test_sigkill_during_fine_tuning_then_rerun_matches_an_uninterrupted_run(
        tiny_library, recording, tmp_path):
    source, _, model = recording
    extra = ("train.steps=40", "train.checkpoint_every=2", "train.threads=1",
             "orchestration.state_dir=", "tracking.enabled=false")
    command = [*STEMLOOP, "-v", "adapt", str(source), "--config", "smoke",  # -v: task states
               *overrides(model, tiny_library, *extra)]

    def run(state: Path, **kwargs):
        env = {**os.environ, "STEMLOOP_HOME": str(state)}
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kwargs)

    whole = run(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    killed = run(tmp_path / "killed")
    deadline = time.monotonic() + 600
    checkpoint = None
    while time.monotonic() < deadline and killed.poll() is None:
        found = list((tmp_path / "killed" / "runs").glob("scene-*/run-*/iter-002/model/train/"
                                                         "last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert checkpoint is not None, "the run ended before iteration 2's fine-tuning"
    from tests.test_state import prefect_servers, wait_until

    assert wait_until(lambda: not prefect_servers(tmp_path / "killed"), 20)  # no orphan
    step = load_checkpoint(checkpoint).train_state["step"]
    assert 2 <= step < 40
    resumed = run(tmp_path / "killed")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert output.count("Cached(type=COMPLETED)") >= 6  # iterations 0-1: every stage cached
    logged = [int(m) for m in re.findall(r"step (\d+)/40", output)]
    assert logged and min(logged) > step  # fine-tuning resumed after its last checkpoint
    expected, got = _final(tmp_path / "whole"), _final(tmp_path / "killed")
    assert set(got) == set(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


def test_run_folder_follows_the_config_and_the_starting_model(tmp_path):
    from stemloop.config import load_config
    from stemloop.flows.adapt import run_folder

    config = load_config("smoke", [f"orchestration.state_dir={tmp_path}"])
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"model a")
    b.write_bytes(b"model b")
    same = run_folder(config, "reel.flac", "0" * 64, None, (str(a),))
    assert same == run_folder(config, "reel.flac", "0" * 64, None, (str(a),))
    assert same != run_folder(config, "reel.flac", "0" * 64, None, (str(b),))
    other = load_config("smoke", [f"orchestration.state_dir={tmp_path}", "train.steps=7"])
    assert same != run_folder(other, "reel.flac", "0" * 64, None, (str(a),))
    assert run_folder(config, "reel.flac", "0" * 64, "mine", (str(b),)).name == "mine"
    # how a run is orchestrated or tracked is not what it computes: a batch resumes `adapt`'s
    batch = load_config("smoke", [f"orchestration.state_dir={tmp_path}",
                                  "orchestration.concurrency=2", "orchestration.cache=true",
                                  "tracking.enabled=false", "train.threads=1"])
    assert same == run_folder(batch, "reel.flac", "0" * 64, None, (str(a),))


@pytest.mark.slow
def test_a_lower_rate_model_is_upscaled_and_kept_only_if_it_beats_resampling(
        tiny_library, recording, tmp_path):
    source, _, _ = recording
    torch.manual_seed(0)
    config = load_config("smoke").model.model_copy(update={"complement": "background"})
    low = save_checkpoint(tmp_path / "tiny-8k.pt", build_model(config, 8000))
    extra = ("loop.max_iterations=1", "loop.working_rate=8000", "train.threads=1",
             "tracking.enabled=false")
    env = {**os.environ, "STEMLOOP_HOME": str(tmp_path / "state")}
    done = subprocess.run([*STEMLOOP, "-v", "adapt", str(source), "--config",
                           "smoke", *overrides(low, tiny_library, *extra)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = re.search(r"upscaled to 16000 Hz: (-?[\d.]+) dB on the reference, working-rate "
                        r"model resampled: (-?[\d.]+) dB; separating with the (\w+)",
                        done.stdout + done.stderr)
    assert verdict, done.stdout + done.stderr
    upscaled, resampled, chosen = float(verdict[1]), float(verdict[2]), verdict[3]
    assert chosen == ("upscaled" if upscaled > resampled else "working")
    run_dir = next((tmp_path / "state" / "runs").glob("scene-*/run-*"))
    used = json.loads((run_dir / "iter-001" / "stems" / "separation.json").read_text())
    assert used["model"].endswith("model-16000.pt" if chosen == "upscaled" else "model-8000.pt")
    assert used["sample_rate"] == RATE


@pytest.mark.slow
def test_the_loop_adapts_the_pretrained_spleeter_model(tiny_library, recording, tmp_path):
    from stemloop.adapt.pretrained import RATE as SPLEETER_RATE
    from stemloop.adapt.pretrained import SpleeterSeparator

    scene, rate = sf.read(recording[0], dtype="float32")
    source = tmp_path / "scene.wav"  # at 48 kHz: above the model's one rate, so never upscaled
    sf.write(source, resample(torch.from_numpy(scene), rate, 48000).numpy(),
             48000, subtype="FLOAT")
    extra = ("loop.max_iterations=1", "train.threads=1", "tracking.enabled=false")
    env = {**os.environ, "STEMLOOP_HOME": str(tmp_path / "state")}
    done = subprocess.run([*STEMLOOP, "adapt", str(source), "--config",
                           "smoke", *overrides("spleeter", tiny_library, *extra)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = next((tmp_path / "state" / "runs").glob("scene-*/run-*"))
    tuned = run_dir / "iter-001" / "model" / f"model-{SPLEETER_RATE}.pt"
    assert isinstance(load_checkpoint(tuned).model, SpleeterSeparator)  # fine-tuned, not upscaled
    used = json.loads((run_dir / "iter-001" / "stems" / "separation.json").read_text())
    assert used["model"] == str(tuned) and used["sample_rate"] == 48000
    report = json.loads((run_dir / "report.json").read_text())
    mixture, _ = sf.read(source, dtype="float32")
    stems = [sf.read(p, dtype="float32")[0] for p in report["final"].values()]
    assert np.abs(sum(stems) - mixture).max() < 1e-5


@pytest.mark.slow
def test_adapt_with_a_recipe_adapts_every_step_on_what_the_previous_left(
        prefect_harness, tiny_library, recording, tmp_path, capsys):
    """`adapt --recipe`: each step's model goes through the loop on the complement the step
    before delivered; the recipe's stems sum to the recording; per-step reports, MLflow runs
    and metrics; the noise step trains with the noise as its target."""
    from mlflow import MlflowClient

    from stemloop.datasets.mixbus_yaml import load_schema
    from stemloop.flows.cli.main import main
    from stemloop.flows.review import runs_table
    from stemloop.flows.review_app import page_data, render
    from stemloop.tasks.state import state_dir, tracking_uri

    source, truth, dialogue_model = recording
    torch.manual_seed(1)
    config = load_config("smoke").model.model_copy(update={"targets": ["noise"],  # as the
                                                          "complement": "rest"})  # shipped one
    noise_model = save_checkpoint(tmp_path / "noise.pt", build_model(config, RATE))
    recipe = tmp_path / "two.yaml"
    recipe.write_text(f"name: two\nsteps:\n  - {{name: dialogue, models: [{dialogue_model}]}}\n"
                      f"  - {{name: hum, models: [{noise_model}]}}\n"
                      f"  - {{name: hiss, models: [{noise_model}], adapt: false}}\n"
                      "rest: other\n")
    before = source.read_bytes()
    argv = ["adapt", str(source), "--config", "smoke", "--recipe", str(recipe),
            "--reference", str(truth), "--set", f"mixbus.library_dir={tiny_library}",
            "--set", "loop.max_iterations=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "hum" in printed and "other" in printed
    assert re.search(r"step hiss +noise: not adapted \(the shipped model\)", printed)
    assert source.read_bytes() == before
    run_dir = next((state_dir() / "runs").glob("scene-*/run-*"))
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["final"]) == ["dialogue", "hum", "hiss", "other"]
    mixture, rate = sf.read(source, dtype="float32")
    stems = {n: sf.read(p, dtype="float32")[0] for n, p in report["final"].items()}
    assert all(s.shape == mixture.shape for s in stems.values())
    assert np.abs(sum(stems.values()) - mixture).max() < 1e-5
    steps = report["steps"]
    assert list(steps) == ["dialogue", "hum", "hiss"]
    for name in ("dialogue", "hum"):
        assert len(steps[name]["iterations"]) == 2  # iteration 0 + one adaptation
        assert (run_dir / "steps" / name / "iter-001" / "model" / "model-16000.pt").is_file()
    # `adapt: false`: iteration 0 only, delivered as it is, nothing fine-tuned
    assert (len(steps["hiss"]["iterations"]), steps["hiss"]["stopped"]) == (1, "not_adapted")
    assert not (run_dir / "steps" / "hiss" / "iter-001").exists()
    hiss_input = json.loads((run_dir / "steps" / "hiss" / "iter-000" / "stems" /
                             "separation.json").read_text())
    assert hiss_input["input"] == steps["hum"]["final"]["rest"]
    # the hum step separated what the dialogue step delivered as its complement
    hum_input = json.loads((run_dir / "steps" / "hum" / "iter-000" / "stems" /
                            "separation.json").read_text())
    assert hum_input["input"] == steps["dialogue"]["final"]["background"]
    np.testing.assert_array_equal(
        stems["dialogue"], sf.read(steps["dialogue"]["final"]["dialogue"], dtype="float32")[0])
    schema = load_schema(run_dir / "steps" / "hum" / "iter-000" / "dataset" / "schema.yaml")
    assert (schema.targets[0].name, schema.targets[0].bus) == ("noise", "noise")
    # truth for the steps' targets only: the hum step's input is not the sum of the truth
    assert "reference/si_sdr_dialogue" in steps["dialogue"]["iterations"][0]
    assert not any(k.startswith("reference/") for k in steps["hum"]["iterations"][0])
    client = MlflowClient(tracking_uri(state_dir()))
    parent = client.get_run(report["mlflow_run_id"])
    history = client.get_metric_history(parent.info.run_id, "hum/quality/estimate")
    assert [m.step for m in history] == [0, 1]
    table = runs_table(client, "stemloop")
    row = table[table.run_id == parent.info.run_id].iloc[0]
    assert "hum" in row["stems"] and "dialogue" in row["stems"]
    # the review page of a recipe's run: a row of figures per step, the four stems and
    # every step's iterations of its own stem to play, each step's curves and spectrograms
    data = page_data(run_dir)
    assert [(s["name"], s["adapted"], s["fine_tuned"]) for s in data["steps"]] == [
        ("dialogue", True, 1), ("hum", True, 1), ("hiss", False, 0)]
    assert data["steps"][0]["truth"] is not None and data["steps"][1]["truth"] is None
    labels = [source["label"] for source in data["sources"]]
    assert labels[:5] == ["recording", "delivered: dialogue", "delivered: hum",
                          "delivered: hiss", "delivered: other"]
    assert {"dialogue 0", "hum 0", "hiss 0 (delivered)"} <= set(labels) and len(labels) == 10
    assert sum("curves" in Path(i["path"]).name for i in data["spectrograms"]) == 3
    assert [i["label"] for i in data["spectrograms"][:4]] == [
        "delivered: dialogue", "delivered: hum", "delivered: hiss", "delivered: other"]
    page = render(run_dir, served=False, seconds=1.0)
    assert page.count('class="source"') == 10 and 'id="steps"' in page
    assert "not adapted (shipped model)" in page and "marks steer the recipe's first step" in page
    capsys.readouterr()
    assert main(["runs"]) == 0
    listed = capsys.readouterr().out
    assert "(recipe):" in listed and "  hum: iteration" in listed and "true" in listed


def test_a_recipe_step_config_targets_its_stem_and_marks_steer_the_first_step_only():
    """Each step's loop extracts its own stem; `adapt: false` stops after iteration 0; a
    restorer's "dialogue clean here" / "no dialogue here" marks name the first step's
    target, so later steps drop them, while leaks stay excluded from every step."""
    from stemloop.adapt.recipe import LoopStep
    from stemloop.flows.adapt import recipe_step_config

    config = load_config(overrides=["loop.guidance.target=[[1.0, 2.0]]",
                                    "loop.guidance.complement=[[3.0, 4.0]]",
                                    "loop.guidance.exclude=[[5.0, 6.0]]"])
    first = recipe_step_config(config, LoopStep(name="dialogue", target="dialogue",
                                                model="d.pt"), first=True)
    later = recipe_step_config(config, LoopStep(name="noise", target="noise", model="n.pt",
                                                adapt=False), first=False)
    assert (first.loop.target, later.loop.target) == ("dialogue", "noise")
    assert first.loop.guidance.target == [(1.0, 2.0)]
    assert first.loop.guidance.complement == [(3.0, 4.0)]
    assert later.loop.guidance.target == [] and later.loop.guidance.complement == []
    assert first.loop.guidance.exclude == later.loop.guidance.exclude == [(5.0, 6.0)]
    assert first.loop.max_iterations == config.loop.max_iterations > 0
    assert later.loop.max_iterations == 0
    assert config.loop.target == "dialogue"  # the run's config is left as it was
