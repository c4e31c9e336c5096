"""CLI commands ``stemloop train-general`` and ``stemloop upscale``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from stemloop.errors import UserError
from stemloop.names import MANIFEST

if TYPE_CHECKING:
    from stemloop.config import Config

out = Console(highlight=False, soft_wrap=True, markup=False)


def add_train_commands(sub: argparse._SubParsersAction,
                       add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "train-general", help="train the general dialogue model (library → train → ladder)",
        description="Build (or reuse) the labelled library, train a model for model.targets "
                    "(dialogue by default; music, noise) at model.sample_rate on mix-bus "
                    "examples (configs/mixbus/), climb upscale.ladder, write one checkpoint per "
                    "rate into --out and register the top rung in MLflow as 'general-<target>' "
                    "('general-dialogue'). Resumable: rerun the same command after an "
                    "interruption.")
    cmd.add_argument("--out", required=True, help="folder for model-<rate>.pt checkpoints")
    _data_args(cmd)
    cmd.add_argument("--alias", default="candidate", help="MLflow alias for the new version")
    cmd.add_argument("--init", metavar="CHECKPOINT",
                     help="continue from this low-rate checkpoint (same architecture) with a "
                          "fresh schedule of train.steps, e.g. to train the shipped model longer; "
                          "or 'spleeter' to fine-tune the pretrained Spleeter 2-stem model at "
                          "its own 44.1 kHz (with --config general-spleeter), or "
                          "'spleeter-accompaniment' for its accompaniment mask as the target's "
                          "(a music model: --config general-spleeter-music)")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_train_general)

    cmd = sub.add_parser(
        "upscale", help="move a model to a higher sample rate (transplant, freeze, unfreeze)",
        description="Build a model at RATE around MODEL's core, train the new ends with the "
                    "core frozen until validation is within upscale.margin_db of MODEL, then "
                    "unfreeze everything (inherited layers at a lower learning rate).")
    cmd.add_argument("model", help="checkpoint to upscale")
    cmd.add_argument("--to", type=int, required=True, metavar="RATE",
                     help="target rate, Hz; a Spleeter-family model's own 44100 adds its "
                          "band head (11-22 kHz)")
    cmd.add_argument("--out", required=True, help="checkpoint to write")
    _data_args(cmd)
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_upscale)


def _data_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--library", help="labelled library folder (default mixbus.library_dir, "
                                       "else <state dir>/library, built if missing)")
    cmd.add_argument("--hours", type=float, default=1.0,
                     help="hours of speech and of music when the library must be built")


def _prepare(args: argparse.Namespace, check: Callable[[Config], None] | None = None):
    """The config, checked (``check`` too) before Prefect starts: a user's mistake is one
    line, with no server started for it."""
    from stemloop.config import load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.tasks.server import start_prefect
    from stemloop.tasks.state import state_dir, use_state_dir

    config = load_config(args.config, args.overrides)
    if args.library and not (Path(args.library) / MANIFEST).is_file():
        raise UserError(f"{args.library}: not a library (no manifest.parquet); build one with "
                        "`stemloop library build --out DIR`")
    if check:
        check(config)
    start_prefect(use_state_dir(state_dir(config), config))
    return config, check_output_dir


def cmd_train_general(args: argparse.Namespace) -> int:
    config, check_output_dir = _prepare(args)
    if args.init:  # a bad or mismatched checkpoint fails here, in one line
        from stemloop.tasks.state import resolve_model
        from stemloop.tasks.train import start_model

        args.init = resolve_model(args.init, config)
        model = start_model(config, args.init)
        if not model.UPSCALABLE and any(r > model.sample_rate
                                                    for r in config.upscale.ladder):
            raise UserError(f"--init {args.init}: a pretrained model keeps its own rate "
                            f"({model.sample_rate} Hz) and cannot climb upscale.ladder "
                            f"{config.upscale.ladder}; pass --set upscale.ladder=[] (or "
                            f"[{model.sample_rate}]: a Spleeter model's band head)")
    check_output_dir(args.out)
    from stemloop.flows.train_general import train_general

    result = train_general(args.out, args.config, args.overrides, args.library, args.hours,
                           args.alias, args.init)
    out.print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from stemloop.adapt.checkpoint import load_checkpoint
    from stemloop.adapt.model import frame_stride

    def check(config: Config) -> None:
        from stemloop.adapt.pretrained import bandwidth

        model = load_checkpoint(args.model).model  # a bad checkpoint fails here, in one line
        if not model.UPSCALABLE:
            if args.to == model.sample_rate and bandwidth(model) < model.sample_rate / 2:
                return  # a Spleeter-family model at its own rate: it gains its band head
            raise UserError(f"{args.model}: a {type(model).__name__} cannot be upscaled to "
                            f"{args.to} Hz (it works at {model.sample_rate} Hz only, and "
                            f"covers {bandwidth(model):.0f} Hz already); --to "
                            f"{model.sample_rate} adds a band head to one that stops at 11 kHz")
        frame_stride(args.to, config.model.latent_rate)  # an unsupported rate too
        if args.to <= model.sample_rate:
            raise UserError(f"--to {args.to}: must be above the model's {model.sample_rate} Hz")

    _, check_output_dir = _prepare(args, check)
    check_output_dir(Path(args.out).parent)
    from stemloop.flows.train_general import upscale_model

    result = upscale_model(args.model, args.to, args.out, args.config, args.overrides,
                           args.library, args.hours)
    out.print(json.dumps(result, indent=2, default=str))
    return 0
