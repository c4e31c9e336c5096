"""A tiny training run in its own process, for the kill-and-resume test.

    python -m tests.train_worker RUN_DIR STEPS [SLEEP_S]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from stemloop.adapt.model import build_model
from stemloop.adapt.train import Run, train
from stemloop.config import load_config
from tests.signals import toy_batch

RATE = 8000


def main(folder: str, steps: int, sleep_s: float = 0.0) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config("smoke", ["train.val_every=3", "train.checkpoint_every=2",
                                   "train.lr=0.003"])
    model = build_model(config.model, RATE)
    val = [toy_batch(10_000, 2, RATE, 0.5)]

    def batches(step: int):
        time.sleep(sleep_s)  # gives the test time to kill us between checkpoints
        return toy_batch(step, config.train.batch_size, RATE, config.train.segment_s)

    train(model, batches, val, config.train, Run(Path(folder)), steps=steps)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
