"""One separation job: a file, a model or a recipe, an output folder, a record of what ran.

``prepare`` checks everything a person can get wrong (the input file, the
model or recipe, the strength) before anything is written; ``run_separation``
then streams the file through it and writes one file per stem plus
``separation.json``. Stems sum to the input to float precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from adapt.apply import ChunkFn, ModelStep, Progress, separate_file
from adapt.checkpoint import load_checkpoint, versions
from adapt.config import Config
from adapt.errors import UserError
from adapt.recipe import load_recipe
from datasets.audio import AudioInfo, probe
from datasets.files import write_json

RECORD_NAME = "separation.json"


class SeparationRecord(BaseModel):
    """What ran and what it wrote (also written to ``separation.json``)."""

    input: str
    sample_rate: int
    channels: int
    frames: int
    model: str | None
    recipe: str | None
    model_rate: list[int]
    strength: float
    chunk_seconds: float
    overlap: float
    stems: dict[str, str]
    seconds: float
    real_time_factor: float
    versions: dict[str, str]


@dataclass
class Job:
    info: AudioInfo
    fn: ChunkFn
    names: list[str]
    alignment: int
    model_rates: list[int]
    model: Path | None
    recipe: Path | None
    strength: float


GENERAL_MODEL = Path(__file__).resolve().parent.parent / "models" / "general-dialogue-v3"


def shipped_model(rate: int, folder: Path = GENERAL_MODEL) -> Path | None:
    """The shipped general model's checkpoint for audio at ``rate``: the rung at that rate,
    else the lowest rung above it, else the highest below it (inputs are resampled)."""
    rungs = sorted((int(p.stem.split("-")[-1]), p) for p in folder.glob("model-*.pt")
                   if p.stem.split("-")[-1].isdigit())
    if not rungs:
        return None
    above = [p for r, p in rungs if r >= rate]
    return above[0] if above else rungs[-1][1]


def prepare(source: str | Path, config: Config, model: str | Path | None = None,
            recipe: str | Path | None = None, strength: float | None = None) -> Job:
    """Validate the input and load the separator; raises a one-line ``UserError`` if wrong."""
    model = model or (None if recipe else config.separate.model)
    recipe = recipe or (None if model else config.separate.recipe)
    if model and recipe:
        raise UserError("give a model or a recipe, not both")
    if not model and not recipe:
        model = shipped_model(probe(source, config.io.min_duration_s).sample_rate)
    if not model and not recipe:
        raise UserError(f"no separation model: {GENERAL_MODEL} holds no checkpoint; train it "
                        "with `stemloop train-general` or pass --model CHECKPOINT")
    strength = config.separate.strength if strength is None else strength
    if not 0.0 < strength <= 10.0:
        raise UserError(f"strength {strength:g} is out of range; use 0 < strength ≤ 10")
    info = probe(source, config.io.min_duration_s)
    if recipe:
        tree = load_recipe(recipe, info.sample_rate, strength)
        return Job(info, tree, tree.names, tree.alignment, tree.model_rates, None, Path(recipe),
                   strength)
    step = ModelStep(load_checkpoint(model).model, info.sample_rate, strength)
    if getattr(step.model.config, "head", "mask") == "maskless" and strength != 1.0:
        raise UserError(f"{model}: a maskless model has no mask, so strength {strength:g} "
                        "cannot apply; leave strength at 1")
    return Job(info, step, step.names, step.alignment, [step.model.sample_rate], Path(model),
               None, strength)


def run_separation(job: Job, out_dir: str | Path, config: Config,
                   progress: Progress | None = None) -> SeparationRecord:
    """Separate ``job.info.path`` into ``out_dir``; stems then ``separation.json``."""
    if config.separate.threads:
        torch.set_num_threads(config.separate.threads)
    out_dir = Path(out_dir)
    suffix = f".{config.io.output_format}"
    started = time.perf_counter()
    paths = separate_file(job.fn, job.names, job.info.path, out_dir, config.separate.chunk_seconds,
                          config.separate.overlap, job.alignment, suffix,
                          config.io.output_subtype, progress, job.info)
    seconds = time.perf_counter() - started
    record = SeparationRecord(
        input=str(job.info.path.resolve()), sample_rate=job.info.sample_rate,
        channels=job.info.channels, frames=job.info.frames,
        model=str(job.model.resolve()) if job.model else None,
        recipe=str(job.recipe.resolve()) if job.recipe else None,
        model_rate=job.model_rates, strength=job.strength,
        chunk_seconds=config.separate.chunk_seconds, overlap=config.separate.overlap,
        stems={name: str(path.resolve()) for name, path in paths.items()},
        seconds=round(seconds, 3), real_time_factor=round(seconds / job.info.duration, 5),
        versions=versions())
    write_json(out_dir / RECORD_NAME, record.model_dump(mode="json"))
    return record
