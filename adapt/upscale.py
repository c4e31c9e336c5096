"""Sample-rate upscaling (patent 3.1, FIG. 6): train low, transplant, freeze, unfreeze.

A model at rate r becomes a model at rate R: the sample-rate agnostic core and
head are copied bit for bit; the rate-specific encoder and decoder are new. They
are not random: each learned kernel is resampled to the new length (the filter
a conv learned at r, drawn at R), which starts stage "new-layers" close to where
the low-rate model was instead of from noise. Then stage "new-layers" trains the
new ends and their neighbours with every inherited parameter frozen, until the
validation SI-SDR is within ``margin_db`` of the low-rate model's (or the step
budget ends), and stage "all" unfreezes everything, inherited layers at a lower
learning rate, until it matches or beats the low-rate model.

The report also gives the low-rate model's score on the same high-rate validation set
when run the way the separation engine runs any model on audio at another rate
(resampled in and out: ``AtRate``), so a caller can tell whether upscaling paid off.
On band-limited archival audio it may not: there is nothing above the low rate's
Nyquist frequency to gain, and the retrained ends can lose what the core had.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from stemloop.adapt.apply import AtRate
from stemloop.adapt.checkpoint import load_checkpoint
from stemloop.adapt.interface import SeparatorModel
from stemloop.adapt.model import RATE_SPECIFIC, Separator, build_model
from stemloop.adapt.pretrained import (
    BAND_EDGE_HZ,
    SpleeterSeparator,
    bandwidth,
    holds_band,
    widen,
)
from stemloop.adapt.train import Batches, OnMetrics, Run, train, validate
from stemloop.config import SUPPORTED_RATES, TrainConfig, UpscaleConfig
from stemloop.datasets.audio import energy_above_db
from stemloop.names import VAL_SI_SDR

Validation = list[tuple[torch.Tensor, torch.Tensor]]
DataForRate = Callable[[int], tuple[Batches, Validation]]


class FineTuned(BaseModel, frozen=True):
    """What ``finetune`` returns: checkpoint paths."""

    working: str  # at the working rate: the next iteration starts from it
    recording: str  # the one that separates the recording (upscaled to its rate, if kept)


def can_upscale(model: SeparatorModel, rate: int, high_band_db: float = math.inf,
                min_high_band_db: float = -45.0) -> bool:
    """Whether the loop may grow ``model`` to a recording at ``rate``: our family when the
    rate is a supported one above the model's; a Spleeter model without a band head when the
    recording holds real content above its 11 kHz (``holds_band``)."""
    if model.UPSCALABLE:
        return rate > model.sample_rate and rate in SUPPORTED_RATES
    return (isinstance(model, SpleeterSeparator) and not model.config.full_band
            and holds_band(rate, high_band_db, min_high_band_db))


def reference_has_band(model: SeparatorModel, val: Validation, floor_db: float) -> bool:
    """Whether the validation set that will judge a band head (the matched reference) can
    show what it buys: for a Spleeter model, its true targets must hold content above the
    U-Nets' 11 kHz (``floor_db``, as ``can_upscale``). A library whose voices are all
    band-limited (TTS at 16-22 kHz, telephone prompts) cannot: the head would learn to give
    the band to the complement and the test could not tell. Our family: always."""
    if model.UPSCALABLE or not val:
        return model.UPSCALABLE
    targets = torch.cat([sources[:, 0].reshape(-1) for _, sources in val])[None]
    return energy_above_db(targets, model.sample_rate, BAND_EDGE_HZ) >= floor_db


def keeps_upscaled(report: dict[str, Any]) -> bool:
    """The loop keeps an upscaled model only if it beat the low-rate model run through
    resampling on the same recording-rate reference (``upscale``'s report): on band-limited
    recordings it often does not (film-it lost 0.46 dB of true SI-SDR to an upscale)."""
    return report["final_si_sdr"] > report["resampled_si_sdr"]


def transplant(model: Separator | SpleeterSeparator, rate: int
               ) -> Separator | SpleeterSeparator:
    """A model at ``rate`` whose core and head are ``model``'s; ends resampled from its ends.
    A Spleeter model keeps its rate and gains a band head for the band above 11 kHz
    (``widen``): its U-Nets are the inherited layers, the head the new ones."""
    if isinstance(model, SpleeterSeparator):
        return widen(model)
    new = build_model(model.config, rate)
    ratio = model.stride / new.stride
    state = {}
    for name, value in model.state_dict().items():
        if not name.startswith(RATE_SPECIFIC):
            state[name] = value.clone()
            continue
        length = new.state_dict()[name].shape[-1]
        resized = F.interpolate(value, size=length, mode="linear", align_corners=False)
        # An encoder sums r× more samples per frame at r× the rate: scale it down to match.
        state[name] = resized * ratio if name.startswith("encoder.") else resized
    new.load_state_dict(state)
    return new


def upscale(model: Separator, rate: int, data: DataForRate, upscale_config: UpscaleConfig,
            train_config: TrainConfig, folder: Path, on_metrics: OnMetrics | None = None
            ) -> tuple[Separator, dict[str, Any]]:
    """Transplant ``model`` to ``rate`` and train it in the two stages; returns the new model
    and a report of validation SI-SDR before and after each stage."""
    _, low_val = data(model.sample_rate)
    reference = validate(model, low_val)[VAL_SI_SDR]
    new = transplant(model, rate)
    rate = new.sample_rate  # a widened Spleeter model stays at its rate
    batches, val = data(rate)
    report: dict[str, Any] = {"from_rate": model.sample_rate, "to_rate": rate,
                              "from_band_hz": bandwidth(model), "to_band_hz": bandwidth(new),
                              "low_rate_si_sdr": reference,
                              "resampled_si_sdr": validate(AtRate(model, rate), val)[VAL_SI_SDR],
                              "transplanted_si_sdr": validate(new, val)[VAL_SI_SDR]}
    offset = 0

    def logged(metrics: dict[str, float], step: int) -> None:
        if on_metrics:
            on_metrics({f"upscale_{rate}/{k}": v for k, v in metrics.items()}, offset + step)

    # A transplant starts below the low-rate model and trains up to it; a widened model
    # starts where its parent was, so both stages run their budget to beat it.
    widened = isinstance(new, SpleeterSeparator)
    first = train(new, batches, val, train_config, Run(folder / f"{rate}-new-layers"),
                  stage="new-layers", steps=upscale_config.new_layers_steps,
                  lr=upscale_config.new_layers_lr,
                  goal_si_sdr=None if widened else reference - upscale_config.margin_db,
                  on_metrics=logged)
    report.update({"new_layers_si_sdr": first["best_si_sdr"], "new_layers_steps": first["step"],
                   "new_layers_stopped": first["stopped"]})
    offset = first["step"]
    second = train(new, batches, val, train_config, Run(folder / f"{rate}-all"), stage="all",
                   steps=upscale_config.all_steps, lr=train_config.lr,
                   inherited_lr_scale=upscale_config.inherited_lr_scale,
                   goal_si_sdr=None if widened else reference, on_metrics=logged)
    report.update({"all_si_sdr": second["best_si_sdr"], "all_steps": second["step"],
                   "all_stopped": second["stopped"]})
    if second["best_si_sdr"] < first["best_si_sdr"]:  # keep whichever stage validated better
        new.load_state_dict(load_checkpoint(folder / f"{rate}-new-layers" / "best.pt"
                                            ).model.state_dict())
    report["final_si_sdr"] = max(first["best_si_sdr"], second["best_si_sdr"])
    return new, report


def climb_ladder(model: Separator, ladder: list[int], data: DataForRate,
                 upscale_config: UpscaleConfig, train_config: TrainConfig, folder: Path,
                 on_metrics: OnMetrics | None = None) -> tuple[Separator, list[dict[str, Any]]]:
    """Upscale through each rate of ``ladder`` above the model's own, in order."""
    reports = []
    for rate in ladder:
        if rate <= model.sample_rate:
            continue
        model, report = upscale(model, rate, data, upscale_config, train_config, folder,
                                on_metrics)
        reports.append(report)
    return model, reports
