"""CLI command ``stemloop separate``: a recording into stems through the ``separate`` flow.

Everything a person can get wrong (file, model, recipe, strength, output
folder) is checked before the flow starts, so a mistake is one line, exit 2,
with nothing written. Heavy imports happen inside the handler.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def add_separate_command(sub: argparse._SubParsersAction,
                         add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "separate", help="separate a recording into stems with a model or a recipe",
        description="Separate a recording into stems that sum to it, with one model "
                    "(targets + the complement) or a recipe tree (configs/recipes/*.yaml). "
                    "Streams the file, so any length works; stems keep the recording's rate, "
                    "length and channels. Writes one file per stem and separation.json.")
    cmd.add_argument("input", help="audio file to separate (never modified)")
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
    cmd.add_argument("--out", metavar="DIR",
                     help="output folder (default: ./<input name>-stems, or -stems-2, -stems-3 "
                          "when that one holds another recording's stems)")
    cmd.add_argument("--force", action="store_true",
                     help="replace files in the output folder that this job did not write "
                          "(other stems, other settings); the input is never replaced")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_separate)


def cmd_separate(args: argparse.Namespace) -> int:
    from stemloop.adapt.separate import check_outputs, default_out_dir, prepare
    from stemloop.config import load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.tasks.server import start_prefect
    from stemloop.tasks.state import resolve_model, state_dir, use_state_dir

    config = load_config(args.config, args.overrides)
    model = resolve_model(str(args.model) if args.model else
                          None if args.recipe else config.separate.model, config)
    job = prepare(args.input, config, model, args.recipe, args.strength)
    for note in job.warnings:
        err.print(f"stemloop: warning: {note}")
    out_dir = Path(args.out) if args.out else default_out_dir(job, config)
    check_outputs(job, out_dir, config, args.force)
    check_output_dir(out_dir)
    state = use_state_dir(state_dir(config), config)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # keep the bar readable
    start_prefect(state)
    from stemloop.flows.separate import separate
    from stemloop.tasks.separate import report_progress

    columns = (TextColumn("separating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("separate", total=job.info.frames)
        report_progress(lambda done, total: bar.update(task, completed=done))
        try:
            record = separate(str(args.input), str(out_dir), model,
                              args.recipe and str(args.recipe), job.strength, args.config,
                              list(args.overrides), args.force)
        finally:
            report_progress(None)
    for name, path in record["stems"].items():
        out.print(f"{name:<16} {path}")
    out.print(f"{'record':<16} {out_dir.resolve() / 'separation.json'}")
    return 0
