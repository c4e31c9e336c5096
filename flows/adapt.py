"""Prefect flow ``adapt-recording``: the self-iteration loop (patent 2.3, FIG. 4; 4.3, FIG. 10).

    iteration 0: separate with the general model
    each iteration k: separate (model k) → cull + dataset → score → stop? → fine-tune
                      (model k+1 at the working rate, upscaled to the recording's rate)
    deliver the BEST iteration's stems (they sum to the recording)

Everything lands in ``<state>/runs/<recording-id>/<run>/``: ``iter-NNN/{model/, stems/,
dataset/, scores.json, spectrograms/}``, ``final/``, ``report.json``, figures. Each
stage is a task cached on content, and fine-tuning checkpoints inside, so rerunning
the same command resumes where a crash stopped. MLflow: one parent run per run and
one nested run per iteration, ids passed explicitly. Call
``tasks.state.use_state_dir`` before importing this module.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger

from stemloop import progress
from stemloop.adapt.apply import on_grid, output_settings
from stemloop.adapt.plots import curves_png, iterations_png, spectrogram_png
from stemloop.adapt.quality import delivered_iteration, should_stop
from stemloop.adapt.recipe import LoopRecipe, LoopStep, loop_recipe, recipe_file
from stemloop.adapt.separate import input_stats
from stemloop.config import Config, guidance_overrides, load_config, result_train
from stemloop.datasets.audio import probe, read_audio, write_audio
from stemloop.files import copy_files, write_json
from stemloop.flows import summary
from stemloop.names import HOLDOUT, MATCHED_SI_SDR, PSEUDO_SI_SDR, QUALITY, truth_si_sdr
from stemloop.tasks.caching import file_digest
from stemloop.tasks.dataset import build_dataset
from stemloop.tasks.finetune import finetune
from stemloop.tasks.library import ensure_library
from stemloop.tasks.match import match_schema
from stemloop.tasks.score import score_iteration
from stemloop.tasks.separate import separate_file
from stemloop.tasks.state import (
    band_above_db,
    check_run_name,
    run_lock,
    starting_models,
    state_dir,
)
from stemloop.tasks.tracking import Tracker, config_params


class Stopwatch:
    """Wall time per stage, for the report (and the Prefect + MLflow overhead figure):
    ``with timed("score"): ...``."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        begin = time.monotonic()
        try:
            if stage in STAGE_LABELS:  # a stage with no count of its own: a running line
                with progress.Stage(STAGE_LABELS[stage]):
                    yield
            else:
                yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.monotonic() - begin


# what a person reads in the progress display (fine-tuning reports its own steps)
STAGE_LABELS = {"separate": "separating", "dataset": "culling, building the dataset",
                "score": "scoring", "deliver": "delivering the best iteration"}


def _flow_run_name() -> str:
    """``adapt-<recording name>``: what a person looks for in Prefect's list of runs."""
    from prefect.runtime import flow_run

    return f"adapt-{Path(str(flow_run.parameters.get('recording', 'recording'))).stem}"


@flow(name="adapt-recording", log_prints=False, persist_result=False,
      flow_run_name=_flow_run_name)
def adapt_recording(recording: str, config_path: str | None = None,
                    overrides: list[str] | None = None, reference: str | None = None,
                    run_name: str | None = None, recipe: str | None = None,
                    guidance: str | None = None) -> dict[str, Any]:
    """Adapt a model to ``recording`` and deliver its best stems; returns the report.
    With ``recipe`` (a name or a file) every step's model is adapted in turn, each on what
    the steps before it left (``adapt_steps``). ``guidance``: a file of a restorer's marks
    (``stemloop review`` writes it) that steers the loop's data (``loop.guidance``)."""
    started = time.monotonic()
    config = load_config(config_path, [*(overrides or []),
                                       *(guidance_overrides(guidance) if guidance else [])])
    info = input_stats(recording, config).info  # every sample finite, before heavy work
    digest = file_digest(recording)
    chain = loop_recipe(recipe_file(recipe)) if recipe else None
    models = starting_models(config, recording, info.sample_rate, chain)
    run_dir = run_folder(config, recording, digest, run_name, models)
    with run_lock(run_dir):  # one writer per run folder; a second run says so in one line
        report = _adapt(recording, config, info.sample_rate, digest, models, run_dir,
                        reference, started, chain)
    _summary_artifact(report, config.loop.target)
    return report


def _summary_artifact(report: dict[str, Any], target: str) -> None:
    """The end-of-run summary as the flow run's markdown artifact (in Prefect's UI)."""
    from prefect.artifacts import create_markdown_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", f"adapt-{Path(report['recording']).stem}".lower())
    create_markdown_artifact(markdown=summary.markdown(report, target), key=key.strip("-"),
                             description=f"stemloop adapt: {Path(report['recording']).name}")


def _adapt(recording: str, config: Config, rate: int, digest: str, models: tuple[str, ...],
           run_dir: Path, reference: str | None, started: float,
           chain: LoopRecipe | None = None) -> dict[str, Any]:
    state = state_dir(config)
    with progress.Stage("the training library (built once per state folder)"):
        library = ensure_library(config.mixbus.library_dir, str(state / "library"),
                                 config.mixbus.library_hours, config.mixbus.seed,
                                 config.mixbus.library)
    tracker = Tracker(config, state)
    extra = ({"recipe": chain.path,  # name=target per step, for `stemloop runs`
              "recipe.steps": ",".join(f"{s.name}={s.target}" for s in chain.steps)}
             if chain else {})
    params = config_params(config, ("loop", "cull", "train", "upscale", "score"),
                           recording=recording, **extra)
    with tracker.run(f"{run_dir.parent.name}/{run_dir.name}", params,
                     {"stemloop.recording_sha256": digest, "stemloop.flow": "adapt"},
                     resume=str(run_dir)) as parent:
        matched = match_schema(recording, digest, config.mixbus.schema_path, library,
                               str(run_dir / "matched.yaml"))
        timed = Stopwatch()
        if chain:
            report = adapt_steps(recording, rate, chain, reference, config, run_dir, library,
                                 matched, tracker, parent, timed)
            report.update(recording_sha256=digest, mlflow_run_id=parent)
        else:
            history, stems, stopped = _iterate(recording, rate, models, reference,
                                               config, run_dir, library, matched, tracker,
                                               parent, timed)
            with timed("deliver"):
                report = deliver(run_dir, history, stems, stopped, recording, digest, parent,
                                 started, config)
            report["start_model"] = models[1]  # iteration 0's: v4, or v4-fullband (a band)
        marks = config.loop.guidance.model_dump(include={"include", "exclude", "target",
                                                          "complement"})
        if any(marks.values()):  # which regions steered this run (the review page shows them)
            report["guidance"] = marks
        report["wall_s"] = round(time.monotonic() - started, 1)
        report["stages_s"] = {k: round(v, 1) for k, v in timed.stages.items()}
        write_json(run_dir / "report.json", report)
        if not chain:
            _log_delivery(tracker, parent, run_dir, report["best_iteration"])
        else:
            tracker.artifact(parent, run_dir / "report.json")
    return report


def adapt_steps(recording: str, rate: int, chain: LoopRecipe, reference: str | None,
                config: Config, run_dir: Path, library: str, matched: str, tracker: Tracker,
                parent: str | None, timed: Stopwatch) -> dict[str, Any]:
    """The loop on every step of a recipe (patent 2.3: the self-iteration applies to each
    source's model), in the recipe's order: step k adapts its model on what steps before
    it delivered as their complement, stops on its own quality estimate and delivers its
    best iteration into ``steps/<name>/`` (a two-stem run folder of its own, with its own
    report.json and MLflow run). The recipe's stems are the steps' delivered targets and
    the recording minus all of them (``rest``), so they sum to the recording. Each
    step's metrics also go to the recipe's MLflow run as ``<step>/<metric>``. A restorer's
    "clean here" / "no target here" marks steer the first step only (they name its target);
    included and excluded regions apply to every step."""
    log = get_run_logger()
    source, reports = recording, {}
    for n, step in enumerate(chain.steps):
        begun = time.monotonic()
        folder = run_dir / "steps" / step.name
        step_config = recipe_step_config(config, step, first=n == 0)
        log.info("recipe step %s: %s %s", step.name,
                 "adapting" if step.adapt else "separating with (not adapted)",
                 Path(step.model).name)
        with tracker.run(f"step-{step.name}", {"model": step.model, "loop.target": step.target},
                         parent=parent, resume=f"step-{step.name}") as child, \
                progress.scope(step.name):
            history, stems, stopped = _iterate(source, rate, (step.model, step.model),
                                               reference, step_config, folder, library,
                                               matched, tracker, child, timed)
            stopped = stopped if step.adapt else "not_adapted"
            with timed("deliver"):
                report = deliver(folder, history, stems, stopped, source, file_digest(source),
                                 child, begun, step_config)
        for k, metrics in enumerate(history):
            tracker.metrics(parent, {f"{step.name}/{key}": value
                                     for key, value in metrics.items()}, k)
        reports[step.name] = report
        source = next(path for name, path in report["final"].items() if name != step.target)
    with timed("deliver"):
        final = _recipe_stems(recording, chain, reports, run_dir / "final", config)
    return {"recording": str(Path(recording).resolve()), "run_dir": str(run_dir),
            "recipe": chain.path, "final": final,
            "steps": {name: {key: report[key] for key in
                             ("run_dir", "best_iteration", "stopped", "iterations", "final")}
                      for name, report in reports.items()},
            "target": {step.name: step.target for step in chain.steps}}


def recipe_step_config(config: Config, step: LoopStep, first: bool) -> Config:
    """The loop's config for one recipe step: its target; no fine-tuning with ``adapt:
    false``; a restorer's "clean here" / "no target here" marks only on the first step
    (they name its target), included and excluded regions on every step."""
    loop: dict[str, Any] = {"target": step.target}
    if not step.adapt:
        loop["max_iterations"] = 0
    if not first:
        loop["guidance"] = config.loop.guidance.model_copy(update={"target": [],
                                                                   "complement": []})
    return config.model_copy(update={"loop": config.loop.model_copy(update=loop)})


def _recipe_stems(recording: str, chain: LoopRecipe, reports: dict[str, dict[str, Any]],
                  final: Path, config: Config) -> dict[str, str]:
    """The recipe's stems in ``final``: each step's delivered target, and the recording
    minus all of them as ``chain.rest``, in the recording's format settings."""
    mixture, rate = read_audio(recording)
    stems = {step.name: read_audio(reports[step.name]["final"][step.target])[0]
             for step in chain.steps}
    stems[chain.rest] = mixture - sum(stems.values())
    fmt, subtype = output_settings(config.io.output_format, config.io.output_subtype,
                                   probe(recording))
    audio = on_grid(torch.stack(list(stems.values())), mixture, subtype)
    final.mkdir(parents=True, exist_ok=True)
    for name, stem in zip(stems, audio, strict=True):  # for the review page
        spectrogram_png(stem, rate, final.parent / "spectrograms" / f"{name}.png",
                        f"delivered: {name}")
    return {name: str(write_audio(final / f"{name}.{fmt}", stem, rate, subtype))
            for name, stem in zip(stems, audio, strict=True)}


def _iterate(recording: str, rate: int, models: tuple[str, str], reference: str | None,
             config: Config, run_dir: Path, library: str, matched: str, tracker: Tracker,
             parent: str | None, timed: Stopwatch
             ) -> tuple[list[dict[str, float]], list[dict[str, str]], str]:
    """The loop from ``models`` (working rate, recording's rate): every iteration's
    metrics and stems, and why it stopped."""
    log = get_run_logger()
    model_work, model_rec = models
    high_band = band_above_db(recording, rate)  # a band head?
    history: list[dict[str, float]] = []
    stems: list[dict[str, str]] = []
    for k in range(config.loop.max_iterations + 1):
        folder = run_dir / f"iter-{k:03d}"
        with tracker.run(f"iteration-{k}", {"model": model_rec}, parent=parent,
                         resume=f"iteration-{k}") as child:
            log.info("iteration %d: separating with %s", k, summary.model_label(model_rec))
            with progress.scope(f"iteration {k}"):
                with timed("separate"):
                    record = separate_file(recording, str(folder / "stems"), model_rec, None,
                                           None, config)
                with timed("dataset"):
                    data = build_dataset(record.stems, k, config, str(folder / "dataset"),
                                         matched, str(run_dir / HOLDOUT), library)
                with timed("score"):
                    metrics = score_iteration(record.stems, recording, model_rec, data.holdout,
                                              reference, config, library)
            metrics.update({f"cull/coverage_{n}": v for n, v in data.coverage.items()})
            metrics.update({f"cull/seconds_{n}": v for n, v in data.seconds.items()})
            write_json(folder / "scores.json", metrics)
            with timed("tracking"):
                _log_iteration(tracker, child, parent, metrics, k, record.stems, folder, config)
            history.append(metrics)
            stems.append(record.stems)
            log.info("iteration %d: quality %.2f, matched-reference SI-SDR %.2f dB, "
                     "pseudo-reference %.2f dB", k, metrics[QUALITY],
                     metrics[MATCHED_SI_SDR], metrics[PSEUDO_SI_SDR])
            if should_stop([h[QUALITY] for h in history], config.loop.min_delta,
                           config.loop.patience, config.loop.max_iterations):
                return history, stems, ("max_iterations" if k >= config.loop.max_iterations
                                        else "no_improvement")
            log.info("iteration %d: fine-tuning on %.1f s of culled target", k,
                     data.seconds["target"])
            with timed("finetune"), progress.scope(f"iteration {k + 1}"):
                tuned = finetune(model_work, data.schema_path, library, data.holdout,
                                 str(run_dir / f"iter-{k + 1:03d}" / "model"), rate, config,
                                 child, high_band)
            model_work, model_rec = tuned.working, tuned.recording
    return history, stems, "max_iterations"


def _log_delivery(tracker: Tracker, parent: str | None, run_dir: Path, best: int) -> None:
    tracker.artifact(parent, run_dir / "report.json")
    for png in ("iterations.png", "curves.png"):
        tracker.artifact(parent, run_dir / png, "figures")
    best_model = run_dir / f"iter-{best:03d}" / "model"
    for checkpoint in sorted(best_model.glob("model-*.pt")) if best_model.is_dir() else []:
        tracker.artifact(parent, checkpoint, "best-model")


def run_folder(config: Config, recording: str, digest: str, run_name: str | None,
               models: tuple[str, ...] = ()) -> Path:
    """``<state>/runs/<recording-id>/<run>``; the default run name is the digest of the
    config (less its orchestration and tracking sections) and of the starting models'
    files, so rerunning the same command finds (and resumes) the same folder, and a new
    general model never resumes an old one's fine-tuning checkpoints."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(recording).stem)[:40] or "recording"
    # What changes the results, not how they are orchestrated or tracked: `adapt`, a batch
    # with other concurrency and a deployment all find (and resume) the same folder.
    # (thread and worker counts neither: adapt-batch shares the cores out)
    results = config.model_copy(update={"train": result_train(config)}).model_dump_json(
        exclude={"orchestration", "tracking"})
    identity = results + "".join(file_digest(m) for m in dict.fromkeys(models))
    name = check_run_name(run_name) or "run-" + hashlib.sha256(identity.encode()).hexdigest()[:8]
    return state_dir(config) / "runs" / f"{slug}-{digest[:8]}" / name



def _log_iteration(tracker: Tracker, child: str | None, parent: str | None,
                   metrics: dict[str, float], k: int, stems: dict[str, str], folder: Path,
                   config: Config) -> None:
    tracker.metrics(child, metrics, k)
    tracker.metrics(parent, metrics, k)
    seconds = config.tracking.preview_seconds
    for name, path in stems.items():
        audio, rate = read_audio(path)
        png = spectrogram_png(audio, rate, folder / "spectrograms" / f"{name}.png",
                              f"iteration {k}: {name}")
        tracker.artifact(child, png, "spectrograms")
        if seconds > 0 and tracker.enabled:
            preview = write_audio(folder / "previews" / f"{name}.flac",
                                  audio[:, : int(seconds * rate)], rate, "PCM_24")
            tracker.artifact(child, preview, "previews")


def deliver(run_dir: Path, history: list[dict[str, float]], stems: list[dict[str, str]],
            stopped: str, recording: str, digest: str, parent: str | None, started: float,
            config: Config) -> dict[str, Any]:
    """Copy the best iteration's stems to ``final/``; write report.json and the figures."""
    best = delivered_iteration(history, config.loop.own_voice_guard_db)
    delivered = copy_files(stems[best], run_dir / "final")
    loaded = [{n: read_audio(p)[0] for n, p in s.items()} for s in stems]
    rate = probe(recording).sample_rate
    iterations_png(loaded, rate, [f"iteration {k}" for k in range(len(stems))],
                   run_dir / "iterations.png")
    keys = [QUALITY, MATCHED_SI_SDR, PSEUDO_SI_SDR,
            truth_si_sdr(config.loop.target)]
    curves_png(history, keys, best, run_dir / "curves.png",
               f"stopped: {stopped}; delivered iteration {best}")
    report = {"recording": str(Path(recording).resolve()), "recording_sha256": digest,
              "run_dir": str(run_dir), "best_iteration": best, "stopped": stopped,
              "iterations": history, "final": delivered, "mlflow_run_id": parent,
              "wall_s": round(time.monotonic() - started, 1)}
    write_json(run_dir / "report.json", report)
    return report
