"""Prefect task: score one iteration's stems (pseudo-reference, artefacts, DNSMOS, quality)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect.context import TaskRunContext

import adapt.apply
import adapt.score
import datasets.adaptset
from adapt.apply import AtRate
from adapt.checkpoint import load_checkpoint
from adapt.config import SUPPORTED_RATES, Config
from adapt.metrics import si_sdr
from adapt.model import frame_stride
from adapt.score import pseudo_reference_si_sdr, quality_estimate, score_stems
from datasets.adaptset import holdout_pairs, reference_pairs
from datasets.audio import read_audio
from tasks.caching import content_digest
from tasks.results import cached_task

AUDIO = (".wav", ".flac", ".ogg", ".aif", ".aiff")


def _key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    config: Config = parameters["config"]
    if not config.orchestration.cache:
        return None
    files = [*parameters["stems"].values(), parameters["recording"], parameters["model"],
             parameters["holdout"]]
    if parameters.get("library"):
        files.append(Path(parameters["library"]) / "manifest.parquet")
    if parameters["reference"]:
        files += sorted(p for p in Path(parameters["reference"]).iterdir()
                        if p.suffix.lower() in AUDIO)
    settings = (config.score, config.loop, config.model.latent_rate)
    code = (adapt.score, adapt.apply, datasets.adaptset, context.task.fn)
    return f"score-{content_digest(files, code, settings)}"


@cached_task(name="score-iteration", cache_key_fn=_key)
def score_iteration(stems: dict[str, str], recording: str, model: str, holdout: str,
                    reference: str | None, config: Config, library: str | None = None
                    ) -> dict[str, float]:
    """Flat ``group/name`` metrics of one iteration, ``quality/estimate`` among them."""
    audio = {name: read_audio(path)[0] for name, path in stems.items()}
    mixture, rate = read_audio(recording)
    # the references score the model that separated the stems, run as it ran on them
    separator = load_checkpoint(model).model
    at = rate if rate in SUPPORTED_RATES else separator.sample_rate
    as_run = AtRate(separator, at)
    pseudo = pseudo_reference_si_sdr(as_run, holdout_pairs(Path(holdout), at, config))
    matched = pseudo_reference_si_sdr(as_run, reference_pairs(Path(holdout), library, at, config))
    hop = frame_stride(rate, config.model.latent_rate) if rate in SUPPORTED_RATES else None
    scores = score_stems(audio, rate, mixture, tuple(config.score.speech_stems), hop,
                         config.score.dnsmos, config.score.dnsmos_hop_s,
                         config.score.click_threshold, config.score.click_match_s)
    metrics = {"pseudo_reference/si_sdr": pseudo, "matched_reference/si_sdr": matched}
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
    sum of the reference files no stem is named after.
    """
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in AUDIO}
    truth = {name: read_audio(path)[0] for name, path in files.items()}
    result = {}
    for name, stem in stems.items():
        if name in truth:
            ref = truth[name]
        else:
            others = [t for n, t in truth.items() if n not in stems]
            if not others:
                continue
            ref = sum(others)
        if ref.shape != stem.shape:
            continue
        score = float(si_sdr(stem, ref).mean())
        result[f"reference/si_sdr_{name}"] = score
        result[f"reference/si_sdri_{name}"] = score - float(si_sdr(mixture, ref).mean())
    return result
