"""CLI command ``stemloop separate``: a recording into stems through the ``separate`` flow.

Everything a person can get wrong (file, model, recipe, strength, output
folder) is checked before the flow starts, so a mistake is one line, exit 2,
with nothing written. Heavy imports happen inside the handler.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def add_separate_command(sub: argparse._SubParsersAction,
                         add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "separate", help="separate recordings into stems with a model or a recipe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
                    "Separate recordings into stems that sum to them, with one model "
                    "(dialogue + background) or a recipe tree (configs/recipes/*.yaml). "
                    "Streams each file, so any length works; stems keep the recording's rate, "
                    "length, channels, and (unless --format/--bit-depth say otherwise) its "
                    "format and bit depth. Writes one file per stem and separation.json. "
                    "Every input is checked before the first is separated.", 88),
        epilog="examples:\n"
               "  stemloop separate take1.wav                  # ./take1-stems/\n"
               "  stemloop separate reel.flac -o stems/reel --bit-depth 24\n"
               "  stemloop separate reels/ -o stems/           # stems/<name>-stems/ each\n"
               "  stemloop separate film.wav --recipe archive  # dialogue, music, noise, other\n"
               "  stemloop models                              # what --model/--recipe take")
    cmd.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="audio files or folders of them (never modified)")
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="PATH",
                       help="separator checkpoint (.pt), or 'spleeter' for the pretrained "
                            "Spleeter 2-stem model")
    which.add_argument("--recipe", metavar="NAME|YAML",
                       help="recipe of several models: a file, or the name of one in "
                            "configs/recipes/ (e.g. archive: dialogue, music, noise, other)")
    cmd.add_argument("--strength", type=float, metavar="S",
                     help="separation strength (mask exponent): >1 less target, <1 more "
                          "(default: separate.strength)")
    cmd.add_argument("-o", "--out", metavar="DIR",
                     help="output folder (default: ./<input name>-stems, or -stems-2, -stems-3 "
                          "when that one holds another recording's stems); with several "
                          "inputs, the folder that holds each one's <input name>-stems")
    add_output_args(cmd)
    cmd.add_argument("--force", action="store_true",
                     help="replace files in the output folder that this job did not write "
                          "(other stems, other settings); the input is never replaced")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_separate)


def add_output_args(cmd: argparse.ArgumentParser) -> None:
    """--format and --bit-depth: the stems' file type (io.output_format, io.output_subtype)."""
    cmd.add_argument("--format", choices=("wav", "flac"),
                     help="stems' file format (default: FLAC for a FLAC recording, else WAV)")
    cmd.add_argument("--bit-depth", choices=("16", "24", "32f"),
                     help="stems' samples: 16- or 24-bit integers or 32-bit float (default: "
                          "the recording's 16 or 24 bits, else 32f; FLAC has no float: 24)")


def output_overrides(args: argparse.Namespace) -> list[str]:
    """--format / --bit-depth as config overrides (after --set: the flags win)."""
    depths = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
    return ([f"io.output_format={args.format}"] if getattr(args, "format", None) else []) + (
        [f"io.output_subtype={depths[args.bit_depth]}"] if getattr(args, "bit_depth", None)
        else [])


def input_files(inputs: list[str]) -> list[Path]:
    """The audio files named, folders expanded (their audio files, sorted); each checked
    to be a readable audio file before anything heavy is imported."""
    from stemloop.datasets.audio import probe
    from stemloop.flows.manifest import audio_files

    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        files += audio_files(path) if path.is_dir() else [path]
    for path in files:
        probe(path)  # missing, empty, not audio: one line, before torch and Prefect load
    return files


def cmd_separate(args: argparse.Namespace) -> int:
    files = input_files(args.inputs)
    from stemloop.adapt.separate import check_outputs, default_out_dir, prepare
    from stemloop.config import load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.errors import UserError
    from stemloop.tasks.server import start_prefect
    from stemloop.tasks.state import resolve_model, state_dir, use_state_dir

    overrides = [*args.overrides, *output_overrides(args)]
    config = load_config(args.config, overrides)
    model = resolve_model(str(args.model) if args.model else
                          None if args.recipe else config.separate.model, config)
    plans: list[tuple[Path, Path, int]] = []  # every input checked before the first runs
    for path in files:
        job = prepare(path, config, model, args.recipe, args.strength)
        for note in job.warnings:
            err.print(f"stemloop: warning: {note}")
        if len(files) == 1 and args.out:
            out_dir = Path(args.out)
        else:
            out_dir = default_out_dir(job, config, args.out or ".")
        if any(out_dir == planned for _, planned, _ in plans):
            raise UserError(f"{path}: shares its name with another input, so both stems "
                            f"would go to {out_dir}; separate them with different --out")
        check_outputs(job, out_dir, config, args.force)
        plans.append((path, out_dir, job.info.frames))
        strength = job.strength
        del job  # its model: one at a time in memory
    for _, out_dir, _ in plans:  # folders are made once every input passed its checks
        check_output_dir(out_dir)
    state = use_state_dir(state_dir(config), config)
    start_prefect(state)
    from stemloop.flows.separate import separate
    from stemloop.tasks.separate import report_progress

    for number, (path, out_dir, frames) in enumerate(plans, 1):
        label = f"separating {path.name}" + (f" ({number}/{len(plans)})" if len(plans) > 1
                                             else "")
        columns = (TextColumn(label), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("separate", total=frames)
            report_progress(lambda done, total, task=task, bar=bar: bar.update(task,
                                                                              completed=done))
            try:
                record = separate(str(path), str(out_dir), model,
                                  args.recipe and str(args.recipe), strength, args.config,
                                  overrides, args.force)
            finally:
                report_progress(None)
        if len(plans) > 1:
            out.print(f"{path}:")
        for name, stem in record["stems"].items():
            out.print(f"{name:<16} {stem}")
        out.print(f"{'record':<16} {out_dir.resolve() / 'separation.json'}")
    return 0
