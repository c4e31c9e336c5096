"""CLI command ``stemloop adapt``: the adaptation loop on one recording."""

from __future__ import annotations

import argparse
import contextlib
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stemloop.errors import UserError
from stemloop.flows.cli.separate import add_output_args, output_overrides

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def add_adapt_command(sub: argparse._SubParsersAction,
                      add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "adapt", help="adapt a model to one recording and deliver its best stems",
        description=textwrap.fill(
                    "Separate RECORDING with the general model, then iterate: cull the "
                    "confident parts of the stems, build a dataset from them and the matched "
                    "library, fine-tune, separate again and score without a reference; stop "
                    "when quality stops improving and deliver the best iteration's stems "
                    "(they sum to the recording). Rerun the same command to resume. With "
                    "--recipe, every step's model is adapted in turn on what the steps before "
                    "it left.", 88),
        epilog="examples:\n"
               "  stemloop adapt film.wav                     # stems in the run folder\n"
               "  stemloop adapt film.wav -o film-stems/      # and copied there\n"
               "  stemloop adapt film.wav --recipe archive    # dialogue, music, noise, other\n"
               "  stemloop adapt film.wav --reference truth/ --run trial-1\n"
               "  stemloop adapt film.wav --guidance <run>/guidance.yaml   # marks from review\n"
               "  stemloop review .stemloop/runs/<recording>/<run>   # then listen and compare",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("recording", help="the recording (never modified)")
    cmd.add_argument("-o", "--out", metavar="DIR",
                     help="also copy the delivered stems to DIR (the run folder stays the "
                          "record); a folder holding other files is refused without --force")
    cmd.add_argument("--reference", metavar="DIR",
                     help="ground-truth stems (evaluation only: logged, never steers the loop)")
    cmd.add_argument("--run", metavar="NAME", help="run name (default: from the config)")
    cmd.add_argument("--recipe", metavar="NAME|YAML",
                     help="adapt every step of a recipe in turn, each on what the steps before "
                          "it left (e.g. archive: dialogue, music, noise, other); a file, or "
                          "the name of one in configs/recipes/")
    cmd.add_argument("--guidance", metavar="FILE",
                     help="a restorer's marks (dialogue clean here, no dialogue here, leak "
                          "here) that steer the loop's data: `stemloop review RUN` writes "
                          "RUN/guidance.yaml")
    add_output_args(cmd)
    cmd.add_argument("--force", action="store_true",
                     help="let --out DIR hold other files (same-named stems are replaced)")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    from stemloop.datasets.audio import probe

    probe(args.recording)  # missing or not audio: one line before torch and Prefect load
    from stemloop.adapt.separate import input_stats
    from stemloop.config import guidance_overrides, load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.tasks.server import start_prefect
    from stemloop.tasks.state import check_run_name, starting_models, state_dir, use_state_dir

    overrides = [*args.overrides, *output_overrides(args)]
    config = load_config(args.config, [*overrides, *(guidance_overrides(args.guidance)
                                                     if args.guidance else [])])
    stats = input_stats(args.recording, config)  # NaN, length, channels: one line, up front
    check_run_name(args.run)
    for note in stats.warnings():
        err.print(f"stemloop: warning: {note}")
    if args.reference and not Path(args.reference).is_dir():
        raise UserError(f"{args.reference}: --reference must be a folder of stems")
    if args.out:
        check_delivery_dir(Path(args.out), Path(args.recording), args.force)
    from stemloop.adapt.recipe import loop_recipe, recipe_file

    chain = loop_recipe(recipe_file(args.recipe)) if args.recipe else None
    # a missing model file: one line
    models = starting_models(config, args.recording, stats.info.sample_rate, chain)
    state = use_state_dir(state_dir(config), config)
    start_prefect(state)
    check_output_dir(state / "runs")
    from stemloop.flows.adapt import adapt_recording, run_folder
    from stemloop.tasks.caching import file_digest
    from stemloop.tasks.state import check_run_free

    check_run_free(run_folder(config, args.recording, file_digest(args.recording), args.run,
                              models))
    with progress_bars(args.verbose):
        report = adapt_recording(args.recording, args.config, overrides, args.reference,
                                 args.run, args.recipe and str(args.recipe),
                                 args.guidance and str(Path(args.guidance).resolve()))
    if args.out:
        report["final"] = deliver_to(report, Path(args.out))
    from stemloop.flows import summary

    out.print(summary.text(report, config.loop.target))
    if config.tracking.enabled and config.tracking.uri:
        out.print(f"MLflow  {config.tracking.uri} (run {report['mlflow_run_id']})")
    elif config.tracking.enabled:
        out.print(f"MLflow  mlflow ui --backend-store-uri sqlite:///{state / 'mlflow.db'} "
                  "(then open http://127.0.0.1:5000)")
    return 0


@contextlib.contextmanager
def progress_bars(verbose: int) -> Iterator[None]:
    """A bar with its ETA per stage of the run on stderr (a stage with no count shows as
    running); none with -v, where the libraries' own log lines tell the story."""
    from stemloop import progress

    if verbose:
        yield
        return
    columns = (TextColumn("{task.description:<46}"), BarColumn(bar_width=20),
               TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=err) as bars:
        tasks: dict[str, TaskID] = {}

        def show(label: str, done: float, total: float | None) -> None:
            if label not in tasks:
                for other in tasks.values():  # a new stage ends the one before
                    bars.update(other, completed=bars.tasks[other].total or 1,
                                total=bars.tasks[other].total or 1)
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], completed=done, total=total)

        progress.listen(show)
        try:
            yield
        finally:
            progress.listen(None)


def check_delivery_dir(folder: Path, recording: Path, force: bool) -> None:
    """``--out``: a new or empty folder, or one an earlier ``adapt --out`` of the same
    recording filled (its ``delivery.json`` says so); never the recording's own folder."""
    from stemloop.datasets.audio import check_output_dir

    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: --out is a file; give a folder for the stems")
    if folder.resolve() == recording.resolve().parent:
        raise UserError(f"{folder}: --out is the recording's own folder; choose another one "
                        "(the recording is never overwritten)")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        record = folder / DELIVERY
        earlier = json.loads(record.read_text()).get("recording") if record.is_file() else None
        if earlier != str(recording.resolve()):
            raise UserError(f"{folder}: --out already holds other files; choose an empty "
                            "folder, or add --force to write the stems among them")
    check_output_dir(folder)


DELIVERY = "delivery.json"


def deliver_to(report: dict, folder: Path) -> dict[str, str]:
    """Copy the delivered stems to ``folder`` (each atomically) with ``delivery.json``."""
    from stemloop.files import copy_files, write_json

    copied = copy_files(report["final"], folder)
    write_json(folder / DELIVERY, {"recording": report["recording"],
                                   "run_dir": report["run_dir"], "stems": copied})
    return copied
