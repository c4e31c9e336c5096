"""Isolated separation artefacts (patent 4.2, FIG. 9): what a separator adds to its stem.

A general model separates mix-bus mixtures whose true stems are known; for one target
(e.g. dialogue) each example keeps the truth and the artefacts ``estimate - truth``:
music or noise the model let through, speech it took away, its own distortion. An
artefact model learns to split an estimate back into those two parts, so its pool
layout is the training loop's: ``(examples, 2, channels, time)`` = ``[clean, artefacts]``
with ``clean + artefacts == estimate`` (to float precision: artefacts are computed in
float64 and rounded once).

Pools are rendered once and cached on disk (``folder/artefacts-<rate>-<kind>.pt``), like
``datasets.batches.TrainingData``; batches are crops of one example with a small gain
applied to each part, never a remix of two examples: an example's artefacts belong to
its own truth (a removed syllable is the negative of that syllable).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from stemloop.datasets.batches import Batch, cached_pool, fixed_batches, remix_batch, render_pool

PARTS = ("clean", "artefacts")
# A separator's estimate of one stem: (channels, time) -> (channels, time), same rate. The
# caller builds it from a model (this module runs one but does not know what it is).
Estimate = Callable[[torch.Tensor], torch.Tensor]
GAIN_DB = 3.0  # each part's gain range in a training batch: a little more or less artefact


@torch.no_grad()
def artefact_examples(estimate: Estimate, mixtures: torch.Tensor, truth: torch.Tensor
                      ) -> torch.Tensor:
    """``mixtures (n, channels, time)`` and the ``truth (n, channels, time)`` of one stem
    → ``(n, 2, channels, time)``: the truth, then the estimate of that stem minus it."""
    parts = []
    for mix, true in zip(mixtures, truth, strict=True):
        artefacts = (estimate(mix).double() - true.double()).float()
        parts.append(torch.stack([true, artefacts]))
    return torch.stack(parts)


def render_artefact_pool(estimate: Estimate, rate: int, schema: str | Path,
                         library: str | Path | None, count: int, seconds: float, seed: int,
                         target: str, workers: int = 1) -> torch.Tensor:
    """Render ``count`` mix-bus examples at ``rate`` and keep, for stem ``target``,
    ``[truth, estimate - truth]``: ``(count, 2, channels, time)``."""
    sources = render_pool(schema, library, count, rate, seconds, seed, [target],
                          workers).float()  # (count, [target, rest], channels, time)
    return artefact_examples(estimate, sources.sum(dim=1), sources[:, 0])


class ArtefactData:
    """Training and validation pools of one separator's artefacts, cached in ``folder``.

    ``data(rate) -> (batches, validation)`` is the interface ``adapt.train.train`` and
    ``datasets.batches.TrainingData`` share. Validation examples come from another mix
    seed (held out); its SI-SDRi is the SI-SDR change the artefact model brings to the
    separator's estimates.
    """

    def __init__(self, estimate: Estimate, rate: int, schema: str | Path,
                 library: str | Path | None, target: str, folder: Path, pool_size: int,
                 val_size: int, pool_seconds: float, segment_s: float, batch_size: int,
                 seed: int, workers: int = 1):
        self.estimate, self.rate = estimate, rate
        self.schema, self.library, self.target = schema, library, target
        self.folder, self.workers = folder, workers
        self.sizes = {"train": pool_size, "val": val_size}
        self.seeds = {"train": seed, "val": seed + 7919}
        self.seconds = {"train": pool_seconds, "val": segment_s}
        self.segment_s, self.batch_size, self.seed = segment_s, batch_size, seed

    def pool(self, rate: int, kind: str) -> torch.Tensor:
        if rate != self.rate:
            raise ValueError(f"artefact pools are rendered at {self.rate} Hz, not {rate} Hz")
        return cached_pool(self.folder / f"artefacts-{rate}-{kind}.pt",
                           lambda: render_artefact_pool(
                               self.estimate, rate, self.schema, self.library,
                               self.sizes[kind], self.seconds[kind], self.seeds[kind],
                               self.target, self.workers))

    def __call__(self, rate: int) -> tuple[Callable[[int], Batch], list[Batch]]:
        train, val = self.pool(rate, "train"), self.pool(rate, "val")
        length = min(int(round(self.segment_s * rate)), train.shape[-1])

        def batches(step: int) -> Batch:
            return remix_batch(train, step, self.batch_size, length, self.seed, remix=0.0,
                               gain_db=GAIN_DB)

        return batches, fixed_batches(val, self.batch_size)
