"""CLI commands of the data engine: ``library build``, ``dataset preview``, ``dataset match``.

Kept beside ``flows/cli/main.py`` so the data commands live in one place; heavy
imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

out = Console(highlight=False, soft_wrap=True, markup=False)


def add_data_commands(sub: argparse._SubParsersAction,
                      add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    library = sub.add_parser("library", help="build the labelled source library")
    library_sub = library.add_subparsers(title="library commands", metavar="ACTION")
    cmd = library_sub.add_parser(
        "build", help="render speech, music stems, noise and rooms offline",
        description="Render a labelled library offline: TTS speech (festival, flite, "
                    "espeak-ng) and, when their Debian packages are installed, recorded "
                    "speech (four Asterisk voices, fillets-ng voice acting), music stems "
                    "(music21 scores through FluidSynth) and, when installed, recorded "
                    "soundtracks (flare-game, hedgewars-data), synthetic noise and simulated "
                    "rooms, with manifest.parquet. Settings: mixbus.library in the config.")
    cmd.add_argument("--out", required=True, help="library folder (created)")
    cmd.add_argument("--hours", type=float, default=1.0,
                     help="hours of speech and, separately, of music (default 1)")
    cmd.add_argument("--seed", type=int, default=0)
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_library_build)

    dataset = sub.add_parser("dataset", help="preview training examples; match a recording")
    dataset_sub = dataset.add_subparsers(title="dataset commands", metavar="ACTION")
    cmd = dataset_sub.add_parser(
        "preview", help="write rendered examples (mixture, stems, drawn parameters)",
        description="Render N examples of a mix-bus schema so a person can listen to what "
                    "training sees: mixture.wav, one WAV per target, params.json each.")
    cmd.add_argument("--schema", help="mix-bus YAML (default: mixbus.schema_path)")
    cmd.add_argument("--library", help="library folder (default: mixbus.library_dir)")
    cmd.add_argument("--n", type=int, default=4)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--rate", type=int, help="sample rate (default: loop.working_rate)")
    cmd.add_argument("--out", required=True)
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_dataset_preview)

    cmd = dataset_sub.add_parser(
        "match", help="fit a mix-bus schema's degradations to a recording",
        description="Estimate band-limits, EQ, noise floor, hum and reverberation of a "
                    "recording and write a matched copy of a mix-bus schema.")
    cmd.add_argument("recording")
    cmd.add_argument("--schema", help="schema to start from (default: mixbus.schema_path)")
    cmd.add_argument("--library", help="library whose material the EQ is matched against")
    cmd.add_argument("--stem", action="append", default=[], metavar="TARGET=FILE",
                     help="a crude stem of the recording (e.g. dialogue=stems/dialogue.wav); "
                          "its loudness sets the level range of that target's node")
    cmd.add_argument("--out", required=True, help="matched schema YAML to write")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_dataset_match)


def _load(args: argparse.Namespace):
    from stemloop.config import load_config

    return load_config(args.config, args.overrides)


def library_dir(args: argparse.Namespace, config) -> Path:
    from stemloop.tasks.state import state_dir

    return Path(args.library or config.mixbus.library_dir or state_dir(config) / "library")


def schema_path(args: argparse.Namespace, config) -> Path:
    from stemloop.config import CONFIG_DIR

    return Path(args.schema) if args.schema else CONFIG_DIR / config.mixbus.schema_path


def cmd_library_build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stemloop.datasets.library import build_library
    from stemloop.errors import UserError

    if args.hours <= 0:
        raise UserError(f"--hours {args.hours}: give a positive number of hours")
    config = _load(args)
    budget = {"speech": args.hours * 3600, "music": args.hours * 3600}
    with Progress(TextColumn("{task.description:>7}"), BarColumn(),
                  TextColumn("{task.fields[done]}"), TimeElapsedColumn()) as bar:
        tasks = {c: bar.add_task(c, total=budget.get(c), done="") for c in
                 ("speech", "music", "noise", "room")}

        def progress(cls: str, amount: float) -> None:
            bar.advance(tasks[cls], amount)
            done = bar.tasks[tasks[cls]].completed
            unit = f"{done / 60:.1f} min" if cls in budget else f"{int(done)} files"
            bar.update(tasks[cls], done=unit)

        manifest = build_library(args.out, args.hours, args.seed, config.mixbus.library,
                                 progress)
    counts = manifest.groupby("class")["duration"].agg(["count", "sum"])
    for cls, row in counts.iterrows():
        out.print(f"{cls:<7} {int(row['count']):>5} files  {row['sum'] / 60:8.1f} min")
    out.print(f"manifest: {Path(args.out) / 'manifest.parquet'}")
    return 0


def cmd_dataset_preview(args: argparse.Namespace) -> int:
    from stemloop.datasets.loader import preview

    config = _load(args)
    rate = args.rate or config.loop.working_rate
    written = preview(schema_path(args, config), library_dir(args, config), args.out, args.n,
                      args.seed, rate, config.mixbus.segment_s)
    out.print(f"wrote {len(written)} examples under {args.out}")
    return 0


def cmd_dataset_match(args: argparse.Namespace) -> int:
    from stemloop.datasets.match import match_recording
    from stemloop.errors import UserError

    config = _load(args)
    lib = Path(args.library) if args.library else None
    stems = {}
    for item in args.stem:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--stem {item!r}: expected TARGET=FILE, e.g. dialogue=dialogue.wav")
        stems[name] = path
    report = match_recording(args.recording, schema_path(args, config), args.out, lib, stems,
                             config.mixbus.match_seconds)
    for key, value in report.items():
        out.print(f"{key:<16} {value}")
    out.print(f"matched schema: {args.out}")
    return 0
