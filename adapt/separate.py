"""One separation job: a file, a model or a recipe, an output folder, a record of what ran.

``prepare`` checks everything a person can get wrong (the input file, the
model or recipe, the strength) before anything is written; ``check_outputs``
refuses an output folder whose files would replace the input or stems the job did
not write; ``run_separation`` then streams the file through it and writes one file
per stem plus ``separation.json`` (with each stem's SHA-256). Stems sum to the input
to float precision.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel

from stemloop.adapt.apply import (
    ChunkFn,
    ModelStep,
    Progress,
    output_settings,
    separate_file,
    stem_paths,
)
from stemloop.adapt.checkpoint import load_checkpoint, versions
from stemloop.adapt.pretrained import set_precision
from stemloop.adapt.recipe import load_recipe, recipe_file
from stemloop.config import Config
from stemloop.datasets.audio import AudioInfo, AudioStats, measure
from stemloop.errors import UserError
from stemloop.files import file_digest, write_json, write_text_atomic
from stemloop.names import SEPARATION_RECORD

RECORD_NAME = SEPARATION_RECORD


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
    sha256: dict[str, str] = {}  # per stem; a rerun trusts its cache only if they still match
    output_format: str | None = None
    output_subtype: str | None = None


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
    warnings: list[str] = field(default_factory=list)  # silent or clipped input
    output: tuple[str, str] = ("wav", "FLOAT")  # the stems' format and sample type


GENERAL_MODEL = Path(__file__).resolve().parent.parent / "models" / "general-dialogue-v4"
# The same model with a band head for 11-22 kHz (issue 21; models/MODEL_CARD.md): what
# `separate` uses by default on a recording whose band reaches above 11 kHz. On band-limited
# recordings the two give the same stems (the head masks an empty band).
FULL_BAND_MODEL = GENERAL_MODEL.with_name("general-dialogue-v4-fullband")


def shipped_model(rate: int, folder: Path = GENERAL_MODEL) -> Path | None:
    """The shipped general model's checkpoint for audio at ``rate``: the rung at that rate,
    else the lowest rung above it, else the highest below it (inputs are resampled)."""
    rungs = sorted((int(p.stem.split("-")[-1]), p) for p in folder.glob("model-*.pt")
                   if p.stem.split("-")[-1].isdigit())
    if not rungs:
        return None
    above = [p for r, p in rungs if r >= rate]
    return above[0] if above else rungs[-1][1]


def default_model(rate: int) -> Path | None:
    """``separate``'s model when none is named: the full-band general model for a recording
    whose band can reach above the general model's 11 kHz (rate above 24.3 kHz), if shipped;
    else the general model's rung for ``rate``."""
    from stemloop.adapt.pretrained import holds_band

    full = shipped_model(rate, FULL_BAND_MODEL) if holds_band(rate, 0.0) else None
    return full or shipped_model(rate)


def prepare(source: str | Path, config: Config, model: str | Path | None = None,
            recipe: str | Path | None = None, strength: float | None = None) -> Job:
    """Validate the input and load the separator; raises a one-line ``UserError`` if wrong."""
    model = model or (None if recipe else config.separate.model)
    recipe = recipe or (None if model else config.separate.recipe)
    if model and recipe:
        raise UserError("give a model or a recipe, not both")
    stats = input_stats(source, config)  # every sample read: NaN/Inf fail here, in one line
    if not model and not recipe:
        model = default_model(stats.info.sample_rate)
    if not model and not recipe:
        raise UserError(f"no separation model: {GENERAL_MODEL} holds no checkpoint; train it "
                        "with `stemloop train-general` or pass --model CHECKPOINT")
    strength = config.separate.strength if strength is None else strength
    if not 0.0 < strength <= 10.0:
        raise UserError(f"strength {strength:g} is out of range; use 0 < strength ≤ 10")
    info = stats.info
    output = output_settings(config.io.output_format, config.io.output_subtype, info)
    if recipe:
        recipe = recipe_file(recipe)
        tree = load_recipe(recipe, info.sample_rate, strength, config.separate.precision)
        return Job(info, tree, tree.names, tree.alignment, tree.model_rates, None, Path(recipe),
                   strength, stats.warnings(), output)
    separator = set_precision(load_checkpoint(model).model, config.separate.precision)
    step = ModelStep(separator, info.sample_rate, strength)
    if getattr(step.model.config, "head", "mask") == "maskless" and strength != 1.0:
        raise UserError(f"{model}: a maskless model has no mask, so strength {strength:g} "
                        "cannot apply; leave strength at 1")
    return Job(info, step, step.names, step.alignment, [step.model.sample_rate], Path(model),
               None, strength, stats.warnings(), output)


def input_stats(source: str | Path, config: Config) -> AudioStats:
    """The whole input checked before any heavy work: format, length, every sample finite;
    its peak, clipping and silence (``AudioStats.warnings`` tells a person); no loudness."""
    io = config.io
    return measure(source, io.block_seconds, io.clip_threshold, io.silence_dbfs,
                   io.min_duration_s, loudness=False)


def run_separation(job: Job, out_dir: str | Path, config: Config,
                   progress: Progress | None = None, force: bool = False) -> SeparationRecord:
    """Separate ``job.info.path`` into ``out_dir``; stems then ``separation.json``."""
    if config.separate.threads:
        torch.set_num_threads(config.separate.threads)
    out_dir = Path(out_dir)
    suffix = f".{job.output[0]}"
    check_outputs(job, out_dir, config, force)
    # A provisional record first: if the run dies between its stems (which appear together,
    # at the end) and its record, the folder is still this job's own, and a rerun with the
    # same settings is not refused. If it dies before the stems, the folder is as it was.
    record_path = out_dir / RECORD_NAME
    before = record_path.read_text() if record_path.is_file() else None
    write_json(record_path, {**_identity(job, config), "stems": {}, "sha256": {}})
    started = time.perf_counter()
    try:
        paths = separate_file(job.fn, job.names, job.info.path, out_dir,
                              config.separate.chunk_seconds, config.separate.overlap,
                              job.alignment, suffix, job.output[1], progress, job.info)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the original error says so
            if before is None:
                record_path.unlink(missing_ok=True)
            else:
                write_text_atomic(record_path, before)
        raise
    seconds = time.perf_counter() - started
    record = SeparationRecord(
        sample_rate=job.info.sample_rate, channels=job.info.channels, frames=job.info.frames,
        model_rate=job.model_rates,
        stems={name: str(path.resolve()) for name, path in paths.items()},
        seconds=round(seconds, 3), real_time_factor=round(seconds / job.info.duration, 5),
        versions=versions(), sha256={name: file_digest(path) for name, path in paths.items()},
        **_identity(job, config))
    write_json(out_dir / RECORD_NAME, record.model_dump(mode="json"))
    return record


_IDENTITY = ("input", "model", "recipe", "strength", "chunk_seconds", "overlap",
             "output_format", "output_subtype")


def _identity(job: Job, config: Config) -> dict:
    """What makes two jobs' outputs the same: the fields ``is_rerun`` compares."""
    return dict(zip(_IDENTITY, (
        _resolved(job.info.path), _resolved(job.model), _resolved(job.recipe), job.strength,
        config.separate.chunk_seconds, config.separate.overlap, *job.output), strict=True))


# ---------------------------------------------------------------- outputs never replace inputs

def output_paths(job: Job, out_dir: str | Path, config: Config) -> list[Path]:
    """Every file the job writes in ``out_dir``: its stems, then its record."""
    stems = stem_paths(job.names, out_dir, f".{job.output[0]}")
    return [*stems.values(), Path(out_dir) / RECORD_NAME]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def read_record(out_dir: str | Path) -> dict | None:
    """The ``separation.json`` in ``out_dir`` as a dict, or None if there is none readable."""
    try:
        record = json.loads((Path(out_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _resolved(path: Path | None) -> str | None:
    return str(path.resolve()) if path else None


def is_rerun(record: dict | None, job: Job, config: Config) -> bool:
    """True when ``record`` was written by this very job: same input file, model or recipe,
    strength, chunking and output format (so rewriting its stems gives the same result)."""
    if record is None:
        return False
    return _identity(job, config) == {k: record.get(k) for k in _IDENTITY}


def check_outputs(job: Job, out_dir: str | Path, config: Config, force: bool = False) -> None:
    """A one-line UserError if writing the job's outputs would replace its input (never
    allowed) or files that are not this job's own earlier outputs (allowed with ``force``)."""
    planned = output_paths(job, out_dir, config)
    for path in planned:
        if _same_file(path, job.info.path):
            raise UserError(f"{path}: is the input recording; stemloop never writes over its "
                            "input; choose another output folder with --out")
    existing = [p for p in planned if p.exists()]
    if not existing or force:
        return
    record = read_record(out_dir)
    if is_rerun(record, job, config):
        return
    what = (f"stems of {record.get('input')}" if record and record.get("input") != _resolved(
        job.info.path) else "stems made with other settings" if record else
        f"{', '.join(p.name for p in existing[:3])}")
    raise UserError(f"{out_dir}: already holds {what}; pass --force to replace them, or choose "
                    "another folder with --out")


def default_out_dir(job: Job, config: Config, base: str | Path = ".") -> Path:
    """``<base>/<input name>-stems``, or ``-stems-2``, ``-stems-3``... when that folder holds
    another recording's outputs: two inputs named alike never share a default folder."""
    for n in itertools.count(1):
        folder = Path(base) / (f"{job.info.path.stem}-stems" + (f"-{n}" if n > 1 else ""))
        record = read_record(folder)
        if record is not None and record.get("input") == _resolved(job.info.path):
            return folder
        if not any(p.exists() for p in output_paths(job, folder, config)):
            return folder
    raise AssertionError("unreachable")
