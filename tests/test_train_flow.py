"""End to end: the real ``train-general`` flow (library → train → ladder → MLflow registry)."""

from __future__ import annotations

import pytest

from stemloop.adapt.checkpoint import load_checkpoint

LADDER = ["--set", "model.sample_rate=8000", "--set", "upscale.ladder=[8000,16000]"]


@pytest.mark.slow
def test_train_general_ships_each_rung_registers_and_resumes_from_cache(
        prefect_harness, tiny_library, tmp_path, capsys):
    from mlflow import MlflowClient

    from stemloop.flows.cli.main import main
    from stemloop.tasks.state import state_dir, tracking_uri

    out = tmp_path / "models"
    argv = ["train-general", "--out", str(out), "--library", str(tiny_library),
            "--config", "smoke", *LADDER]
    assert main(argv) == 0
    low, high = load_checkpoint(out / "model-8000.pt"), load_checkpoint(out / "model-16000.pt")
    assert (low.model.sample_rate, high.model.sample_rate) == (8000, 16000)
    assert high.train_state["upscale"]["new_layers_steps"] <= 2
    client = MlflowClient(tracking_uri(state_dir()))
    version = client.get_model_version_by_alias("general-dialogue", "candidate")
    run = client.get_run(version.run_id)
    assert "data/manifest_sha256" in run.data.params and "val/si_sdr_16000" in run.data.metrics
    history = client.get_metric_history(version.run_id, "train/total")
    assert len(history) >= 4  # the low-rate steps were logged, by step
    capsys.readouterr()
    assert main(argv) == 0  # a rerun reuses both cached stages and registers version 2
    assert int(client.get_model_version_by_alias("general-dialogue", "candidate").version) == 2


def test_upscale_command_rejects_bad_requests_in_one_line(tmp_path, capsys):
    from stemloop.flows.cli.main import main

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["upscale", str(tmp_path / "bad.pt"), "--to", "16000", "--out",
                 str(tmp_path / "x.pt")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert main(["train-general", "--out", str(tmp_path / "m"), "--library",
                 str(tmp_path)]) == 2
    assert "no manifest.parquet" in capsys.readouterr().err
    assert main(["train-general", "--out", str(tmp_path / "m"), "--config", "smoke",
                 "--init", str(tmp_path / "bad.pt")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "m").exists()
