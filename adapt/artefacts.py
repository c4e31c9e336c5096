"""The artefact model (patent 4.2, FIG. 9): a separator that splits a stem into its clean
part and the artefacts a first separation left in it.

It is an ordinary ``Separator`` with targets ``[clean]`` and complement ``artefacts``,
trained on ``datasets.artefactset`` pools (a general model's estimate = truth +
(estimate − truth)). Two uses:

- a reference-free score: ``artefact_energy_db``, the energy of what it calls artefacts
  relative to the stem, in dB (lower is cleaner);
- a post-processing step in recipes (``post:`` in ``adapt.recipe``): what it removes
  goes to the step's complement, so stems still sum to the mixture.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from stemloop.adapt.apply import ModelStep, chunk_grid, overlap_add
from stemloop.adapt.checkpoint import CheckpointError, load_checkpoint
from stemloop.adapt.model import Separator

SOURCES = ["clean", "artefacts"]
FLOOR_DB = -100.0  # a silent stem, or one the model finds no artefact in


def is_artefact_model(model: Separator) -> bool:
    return model.sources == SOURCES


def load_artefact_model(path: str | Path) -> Separator:
    """The artefact model at ``path``; a one-line ``CheckpointError`` if it is not one."""
    model = load_checkpoint(path).model
    if not is_artefact_model(model):
        raise CheckpointError(f"{path}: not an artefact model (its stems are "
                              f"{', '.join(model.sources)}, not clean, artefacts); train one "
                              "with `stemloop train-artefacts`")
    return model


@torch.no_grad()
def identity_start(model: Separator, mask_logit: float = 3.0) -> Separator:
    """Start a mask-head artefact model close to "no artefacts": every mask near
    ``sigmoid(mask_logit)`` whatever the input (head weights scaled down, bias raised).

    With the Fourier-frame encoder a constant mask only scales the stem, which leaves its
    SI-SDR unchanged, so training starts from the separator's own estimate instead of the
    random mask's distortion (about -0.9 dB SI-SDR on validation at step 0).
    """
    if model.config.head == "mask":
        model.head.proj.weight.mul_(0.1)
        model.head.proj.bias.fill_(mask_logit)
    return model


def stem_estimator(separator: Separator, target: str):
    """``(channels, time)`` mixture → ``(channels, time)`` estimate of ``target``, one pass
    at the separator's rate (the function ``datasets.artefactset`` renders pools with)."""
    if target not in separator.sources[:-1]:
        raise CheckpointError(f"the separator has no target {target!r} (it has "
                              f"{', '.join(separator.sources[:-1])})")
    step = ModelStep(separator.eval(), separator.sample_rate)
    index = separator.sources.index(target)

    def estimate(mixture: torch.Tensor) -> torch.Tensor:
        return step(mixture)[index]

    return estimate


@torch.inference_mode()
def artefact_energy_db(model: Separator, stem: torch.Tensor, rate: int,
                       chunk_seconds: float = 20.0, overlap: float = 0.25) -> float:
    """Artefact-to-stem energy ratio of ``stem (channels, time)`` at ``rate``, in dB.

    The artefact model runs chunked (windowed overlap-add, resampled to its rate and back
    when needed), and only the two energies are accumulated, so memory is bounded by one
    chunk whatever the length. ``FLOOR_DB`` for a silent stem or one without artefacts.
    """
    if not is_artefact_model(model):
        raise CheckpointError(f"artefact energy needs an artefact model (stems clean, "
                              f"artefacts), not one with {', '.join(model.sources)}")
    step = ModelStep(model.eval(), rate)
    chunk, hop = chunk_grid(chunk_seconds, overlap, rate, step.alignment)
    energy = {"artefacts": 0.0, "stem": 0.0}

    def emit(stems: torch.Tensor, block: torch.Tensor) -> None:
        energy["artefacts"] += float(stems[1].double().pow(2).sum())
        energy["stem"] += float(block.double().pow(2).sum())

    overlap_add(step, lambda lo, hi: stem[:, lo:hi], stem.shape[-1], chunk, hop, emit)
    if energy["stem"] <= 0.0 or energy["artefacts"] <= 0.0:
        return FLOOR_DB
    return max(FLOOR_DB, 10 * math.log10(energy["artefacts"] / energy["stem"]))
