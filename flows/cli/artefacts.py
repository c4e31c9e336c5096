"""CLI command ``stemloop train-artefacts``: the artefact model (patent 4.2)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from stemloop.errors import UserError
from stemloop.names import MANIFEST

out = Console(highlight=False, soft_wrap=True, markup=False)


def add_artefact_commands(sub: argparse._SubParsersAction,
                          add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "train-artefacts", help="train an artefact model (a stem → clean part + artefacts)",
        description="Separate library mixtures with the general model, keep its estimate of "
                    "one stem split into truth and artefacts (estimate − truth), and train a "
                    "small model that splits a stem into 'clean' and 'artefacts'. Its artefact "
                    "energy is a reference-free score, and recipes can run it as a 'post' step. "
                    "Writes model-<rate>.pt into --out and registers it in MLflow as "
                    "'artefact-model'. Resumable: rerun the same command after an interruption.")
    cmd.add_argument("--out", required=True, help="folder for model-<rate>.pt")
    cmd.add_argument("--general", metavar="CHECKPOINT",
                     help="the separator whose artefacts to learn (default: the shipped general "
                          "model at model.sample_rate)")
    cmd.add_argument("--target", help="which of its stems (default: its first target)")
    cmd.add_argument("--library", help="labelled library folder (default mixbus.library_dir, "
                                       "else <state dir>/library, built if missing)")
    cmd.add_argument("--hours", type=float, default=1.0,
                     help="hours of speech and of music when the library must be built")
    cmd.add_argument("--alias", default="candidate", help="MLflow alias for the new version")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_train_artefacts, config="artefacts")


def cmd_train_artefacts(args: argparse.Namespace) -> int:
    from stemloop.adapt.artefacts import SOURCES, is_artefact_model
    from stemloop.adapt.checkpoint import load_checkpoint
    from stemloop.adapt.separate import shipped_model
    from stemloop.config import CONFIG_DIR, load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.datasets.mixbus_yaml import load_schema
    from stemloop.tasks.server import start_prefect
    from stemloop.tasks.state import state_dir, use_state_dir

    config = load_config(args.config, args.overrides)
    if [*config.model.targets, config.model.complement] != SOURCES:
        got = ", ".join(config.model.targets)
        raise UserError(f"train-artefacts needs model.targets 'clean' and model.complement "
                        f"'artefacts' (as in configs/artefacts.yaml), not '{got}' and "
                        f"'{config.model.complement}'; use --config artefacts")
    rate = config.model.sample_rate
    general = args.general or shipped_model(rate)
    if not general:
        raise UserError("no general model to learn the artefacts of; pass --general CHECKPOINT")
    separator = load_checkpoint(general).model  # a bad checkpoint fails here, in one line
    if is_artefact_model(separator):
        raise UserError(f"{general}: is an artefact model; --general needs a separator of "
                        "mixtures (e.g. models/general-dialogue-v2/model-16000.pt)")
    if separator.sample_rate != rate:
        raise UserError(f"{general}: runs at {separator.sample_rate} Hz but model.sample_rate "
                        f"is {rate}; pass --general with a {rate} Hz checkpoint (e.g. "
                        "models/general-dialogue-v2/model-16000.pt) or set --set "
                        f"model.sample_rate={separator.sample_rate}")
    target = args.target or separator.sources[0]
    schema = load_schema(CONFIG_DIR / config.mixbus.schema_path)
    if target not in separator.sources[:-1] or target not in [t.name for t in schema.targets]:
        raise UserError(f"--target {target}: must be a target of both the general model "
                        f"({', '.join(separator.sources[:-1])}) and the mix bus "
                        f"({', '.join(t.name for t in schema.targets)})")
    if args.library and not (Path(args.library) / MANIFEST).is_file():
        raise UserError(f"{args.library}: not a library (no manifest.parquet); build one with "
                        "`stemloop library build --out DIR`")
    check_output_dir(args.out)
    start_prefect(use_state_dir(state_dir(config), config))
    from stemloop.flows.train_artefacts import train_artefacts

    result = train_artefacts(args.out, str(Path(general).resolve()), target, args.config,
                             args.overrides, args.library, args.hours, args.alias)
    out.print(json.dumps(result, indent=2, default=str))
    return 0
