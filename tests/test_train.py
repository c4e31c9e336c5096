"""Training engine: stages by parameter groups, losses, real (tiny) training, kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stemloop.adapt.checkpoint import load_checkpoint
from stemloop.adapt.model import build_model
from stemloop.adapt.train import (
    NEW_LAYERS,
    Run,
    losses,
    parameter_groups,
    torch_threads,
    train,
    validate,
)
from stemloop.config import load_config
from tests.signals import toy_batch

RATE = 8000
ROOT = Path(__file__).resolve().parent.parent


def tiny(overrides: tuple[str, ...] = ()):
    config = load_config("smoke", ["train.val_every=5", "train.checkpoint_every=5",
                                   "train.lr=0.005", *overrides])
    torch.manual_seed(0)
    return config, build_model(config.model, RATE)


def batches(config):
    return lambda step: toy_batch(step, config.train.batch_size, RATE, config.train.segment_s)


def test_new_layers_stage_freezes_every_inherited_parameter(tmp_path):
    config, model = tiny()
    groups = parameter_groups(model, "new-layers", 0.01)
    held = {id(p) for g in groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in held}
    assert names and all(n.startswith(NEW_LAYERS) for n in names)
    assert {n for n, _ in model.named_parameters()} - names  # something is inherited
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, batches(config), [toy_batch(99, 2, RATE, 0.5)], config.train,
          Run(tmp_path), stage="new-layers", steps=6)
    for name, param in model.named_parameters():
        if name.startswith(NEW_LAYERS):
            continue
        assert torch.equal(param, before[name]), f"{name} changed in stage new-layers"
        assert not param.requires_grad
    changed = [n for n in names if not torch.equal(dict(model.named_parameters())[n], before[n])]
    assert changed  # the new layers did learn


def test_all_stage_gives_inherited_layers_a_lower_rate():
    _, model = tiny()
    groups = parameter_groups(model, "all", 0.01, inherited_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["new", "inherited"]
    assert groups[1]["lr"] == pytest.approx(0.001)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_globs_never_train_in_any_stage(tmp_path):
    config, model = tiny(("train.freeze=[core.blocks.0.*, head.*]",))
    frozen = {n for n, _ in model.named_parameters()
              if n.startswith(("core.blocks.0.", "head."))}
    assert frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, batches(config), [toy_batch(99, 2, RATE, 0.5)], config.train,
          Run(tmp_path), steps=6)
    params = dict(model.named_parameters())
    for name in frozen:
        assert torch.equal(params[name], before[name]) and not params[name].requires_grad
    assert any(not torch.equal(params[n], before[n]) for n in params if n not in frozen)
    held = {id(p) for g in parameter_groups(model, "all", 0.01, 0.1, config.train.freeze)
            for p in g["params"]}
    assert not held & {id(params[n]) for n in frozen}  # not even in stage "all"


def test_losses_ignore_silent_references_and_vanish_on_a_perfect_estimate():
    config, _ = tiny(("train.loss.l1=1.0", "train.loss.mrstft=1.0"))
    mixture, sources = toy_batch(1, 2, RATE, 0.5)
    silent = sources.clone()
    silent[0, 0] = 0.0  # no voice in the first example
    terms = losses(sources, silent, mixture, config.train.loss, RATE)
    assert torch.isfinite(terms["total"])
    perfect = losses(sources, sources, mixture, config.train.loss, RATE)
    assert float(perfect["l1"]) == 0.0 and float(perfect["mrstft"]) < 1e-3
    assert float(perfect["si_sdr"]) < -60  # negative SI-SDR: lower is better


def test_training_separates_the_toy_task_and_keeps_the_best(tmp_path):
    config, model = tiny()
    val = [toy_batch(10_000 + i, 2, RATE, 0.5) for i in range(2)]
    before = validate(model, val)["val/si_sdr"]
    result = train(model, batches(config), val, config.train, Run(tmp_path), steps=40)
    assert result["best_si_sdr"] > before + 10.0
    assert validate(model, val)["val/si_sdr"] == pytest.approx(result["best_si_sdr"], abs=1e-4)
    assert load_checkpoint(tmp_path / "best.pt").train_state["val_si_sdr"] == pytest.approx(
        result["best_si_sdr"])


def test_keep_start_never_returns_a_model_worse_than_the_start(tmp_path):
    config, model = tiny()
    val = [toy_batch(10_000 + i, 2, RATE, 0.5) for i in range(2)]
    train(model, batches(config), val, config.train, Run(tmp_path / "a"), steps=30)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    good = validate(model, val)["val/si_sdr"]

    def swapped(step):  # targets swapped: training on these only makes validation worse
        mixture, sources = batches(config)(step)
        return mixture, sources.flip(1)

    result = train(model, swapped, val, config.train, Run(tmp_path / "b"), steps=10,
                   keep_start=True)
    assert result["history"][0]["step"] == 0
    assert result["best_si_sdr"] == pytest.approx(good, abs=1e-4)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    worse = [r["val/si_sdr"] for r in result["history"] if "val/si_sdr" in r][1:]
    assert worse and max(worse) < good  # training did make it worse, and it was not kept


def test_goal_and_early_stopping_end_training(tmp_path):
    config, model = tiny(("train.early_stop_patience=1",))
    val = [toy_batch(10_000, 2, RATE, 0.5)]
    result = train(model, batches(config), val, config.train, Run(tmp_path / "goal"),
                   steps=40, goal_si_sdr=-1000.0)
    assert result["stopped"] == "goal" and result["step"] == 5


def _history(folder: Path) -> list[float]:
    state = load_checkpoint(folder / "last.pt").train_state
    return [row["train/total"] for row in state["history"]]


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_curve(tmp_path):
    command = [sys.executable, "-m", "tests.train_worker"]
    steps = "14"
    subprocess.run([*command, str(tmp_path / "whole"), steps], cwd=ROOT, check=True)
    killed = subprocess.Popen([*command, str(tmp_path / "killed"), steps, "0.25"], cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for a checkpoint past step 4, then SIGKILL
        last = tmp_path / "killed" / "last.pt"
        if last.exists() and load_checkpoint(last).train_state["step"] >= 4:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(tmp_path / "killed" / "last.pt").train_state["step"]
    assert 4 <= interrupted_at < 14
    subprocess.run([*command, str(tmp_path / "killed"), steps], cwd=ROOT, check=True)
    whole, resumed = _history(tmp_path / "whole"), _history(tmp_path / "killed")
    assert len(whole) == len(resumed) == 14
    assert resumed == pytest.approx(whole, rel=1e-5, abs=1e-6)


def test_validation_leaves_out_examples_whose_target_is_silent():
    """A music model's examples without music have no SI-SDR (their reference is zero):
    they used to pull the mean to about -8 dB while the SI-SDRi read +26."""
    from stemloop.adapt.train import validate

    class Half(torch.nn.Module):  # keeps half of the mixture as the target
        def forward(self, mixture):
            return torch.stack([0.5 * mixture, 0.5 * mixture], dim=1)

    torch.manual_seed(0)
    voice, noise = torch.randn(1, 1, 800), torch.randn(1, 1, 800)
    with_target = (voice + noise, torch.stack([voice, noise], dim=1))
    silent = (noise, torch.stack([torch.zeros_like(noise), noise], dim=1))
    alone = validate(Half(), [with_target])
    both = validate(Half(), [with_target, silent])
    assert both == alone and abs(alone["val/si_sdr"]) < 1.0  # voice at 0 dB against noise


def test_auto_threads_follow_omp_num_threads_else_the_cores_shared_out(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads("auto") == cores
    assert torch_threads("auto", sharers=2) == max(1, cores // 2)
    assert torch_threads("auto", sharers=cores + 5) == 1  # never none
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads("auto") == 3
    assert torch_threads(1) == 1 and torch_threads(0) == 0  # a number is taken as it is
    assert load_config(None, ["train.threads=auto"]).train.threads == "auto"
    assert load_config(None, ["train.threads=2"]).train.threads == 2
