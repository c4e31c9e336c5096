"""CLI command ``stemloop adapt``: the adaptation loop on one recording."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from stemloop.errors import UserError

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
        epilog="examples:\n  stemloop adapt film.wav\n"
               "  stemloop adapt film.wav --recipe archive   # dialogue, music, noise, other\n"
               "  stemloop adapt film.wav --reference truth/ --run trial-1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("recording", help="the recording (never modified)")
    cmd.add_argument("--reference", metavar="DIR",
                     help="ground-truth stems (evaluation only: logged, never steers the loop)")
    cmd.add_argument("--run", metavar="NAME", help="run name (default: from the config)")
    cmd.add_argument("--recipe", metavar="NAME|YAML",
                     help="adapt every step of a recipe in turn, each on what the steps before "
                          "it left (e.g. archive: dialogue, music, noise, other); a file, or "
                          "the name of one in configs/recipes/")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    from stemloop.adapt.separate import input_stats
    from stemloop.config import load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.tasks.server import start_prefect
    from stemloop.tasks.state import check_run_name, starting_models, state_dir, use_state_dir

    config = load_config(args.config, args.overrides)
    stats = input_stats(args.recording, config)  # NaN, length, channels: one line, up front
    check_run_name(args.run)
    for note in stats.warnings():
        err.print(f"stemloop: warning: {note}")
    if args.reference and not Path(args.reference).is_dir():
        raise UserError(f"{args.reference}: --reference must be a folder of stems")
    from stemloop.adapt.recipe import loop_recipe, recipe_file

    chain = loop_recipe(recipe_file(args.recipe)) if args.recipe else None
    models = starting_models(config, stats.info.sample_rate, chain)  # missing: one line
    state = use_state_dir(state_dir(config), config)
    start_prefect(state)
    check_output_dir(state / "runs")
    from stemloop.flows.adapt import adapt_recording, run_folder
    from stemloop.tasks.caching import file_digest
    from stemloop.tasks.state import check_run_free

    check_run_free(run_folder(config, args.recording, file_digest(args.recording), args.run,
                              models))
    report = adapt_recording(args.recording, args.config, args.overrides, args.reference,
                             args.run, args.recipe and str(args.recipe))
    run_dir = Path(report["run_dir"])
    if "steps" in report:
        out.print(f"adapted {len(report['steps'])} recipe steps in {report['wall_s']:.0f} s")
        for name, step in report["steps"].items():
            out.print(f"  {name:<12} delivered iteration {step['best_iteration']} of "
                      f"{len(step['iterations'])} (stopped: {step['stopped']})")
        out.print("stems (they sum to the recording):")
    else:
        out.print(f"delivered iteration {report['best_iteration']} of "
                  f"{len(report['iterations'])} (stopped: {report['stopped']}) in "
                  f"{report['wall_s']:.0f} s")
    for name, path in report["final"].items():
        out.print(f"  {name:<12} {path}")
    out.print(f"report      {run_dir / 'report.json'}")
    if "steps" not in report:
        out.print(f"figures     {run_dir / 'iterations.png'}, {run_dir / 'curves.png'}")
    if config.tracking.enabled and config.tracking.uri:
        out.print(f"MLflow      {config.tracking.uri} (run {report['mlflow_run_id']})")
    elif config.tracking.enabled:
        out.print(f"MLflow      mlflow ui --backend-store-uri sqlite:///{state / 'mlflow.db'} "
                  "(then open http://127.0.0.1:5000)")
    return 0
