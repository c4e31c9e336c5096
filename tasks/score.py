"""Prefect task: score one iteration's stems (pseudo-reference, artefacts, DNSMOS, quality)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stemloop import adapt, datasets
from stemloop.adapt.apply import AtRate
from stemloop.adapt.checkpoint import load_checkpoint
from stemloop.adapt.metrics import si_sdr
from stemloop.adapt.model import frame_stride
from stemloop.adapt.pretrained import set_precision
from stemloop.adapt.quality import quality_estimate
from stemloop.adapt.score import pseudo_reference_si_sdr, score_stems
from stemloop.config import SUPPORTED_RATES, Config
from stemloop.datasets.adaptset import holdout_pairs, reference_pairs
from stemloop.datasets.audio import read_audio
from stemloop.names import MATCHED_SI_SDR, PSEUDO_SI_SDR, truth_si_sdr
from stemloop.tasks.caching import content_key
from stemloop.tasks.results import cached_task

AUDIO = (".wav", ".flac", ".ogg", ".aif", ".aiff")


def _inputs(parameters: dict[str, Any]):
    config: Config = parameters["config"]
    files = [*parameters["stems"].values(), parameters["recording"], parameters["model"],
             parameters["holdout"]]
    if parameters["reference"]:
        files += sorted(p for p in Path(parameters["reference"]).iterdir()
                        if p.suffix.lower() in AUDIO)
    settings = (config.score, config.loop, config.model.latent_rate)
    return files, (adapt.score, adapt.quality, adapt.apply, datasets.adaptset), settings


@cached_task(name="score-iteration", cache_key_fn=content_key(_inputs))
def score_iteration(stems: dict[str, str], recording: str, model: str, holdout: str,
                    reference: str | None, config: Config, library: str | None = None
                    ) -> dict[str, float]:
    """Flat ``group/name`` metrics of one iteration, ``quality/estimate`` among them."""
    audio = {name: read_audio(path)[0] for name, path in stems.items()}
    mixture, rate = read_audio(recording)
    # the references score the model that separated the stems, run as it ran on them
    separator = set_precision(load_checkpoint(model).model, config.separate.precision)
    at = rate if rate in SUPPORTED_RATES else separator.sample_rate
    as_run = AtRate(separator, at)
    pseudo = pseudo_reference_si_sdr(as_run, holdout_pairs(Path(holdout), at, config))
    matched = pseudo_reference_si_sdr(as_run, reference_pairs(Path(holdout), library, at, config))
    hop = frame_stride(rate, config.model.latent_rate) if rate in SUPPORTED_RATES else None
    scores = score_stems(audio, rate, mixture, tuple(config.score.speech_stems), hop,
                         config.score.dnsmos, config.score.dnsmos_hop_s,
                         config.score.click_threshold, config.score.click_match_s)
    metrics = {PSEUDO_SI_SDR: pseudo, MATCHED_SI_SDR: matched}
    for stem, values in scores.items():
        metrics.update({f"scores/{stem}/{k}": v for k, v in values.items()})
    metrics.update(quality_estimate(pseudo, scores[config.loop.target], config.score.weights,
                                    matched))
    if reference:
        metrics.update(reference_scores(audio, mixture, Path(reference), config.loop.target))
    return metrics


def reference_scores(stems: dict[str, torch.Tensor], mixture: torch.Tensor, folder: Path,
                     target: str) -> dict[str, float]:
    """True SI-SDR(i) of each stem against ground truth in ``folder`` (evaluation only).

    A stem with a file of its own name is compared with it; the complement with the
    sum of the reference files no stem is named after, when the reference files sum to
    ``mixture`` (a recipe's later step separates what earlier steps left, whose complement
    has no truth among them).
    """
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in AUDIO}
    truth = {name: read_audio(path)[0] for name, path in files.items()}
    whole = sum(truth.values())
    sums = (isinstance(whole, torch.Tensor) and whole.shape == mixture.shape
            and float(si_sdr(mixture, whole).mean()) > 30.0)
    result = {}
    for name, stem in stems.items():
        if name in truth:
            ref = truth[name]
        else:
            others = [t for n, t in truth.items() if n not in stems]
            if not others or not sums:
                continue
            ref = sum(others)
        if ref.shape != stem.shape:
            continue
        score = float(si_sdr(stem, ref).mean())
        result[truth_si_sdr(name)] = score
        result[f"reference/si_sdri_{name}"] = score - float(si_sdr(mixture, ref).mean())
    return result
