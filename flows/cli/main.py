"""The ``stemloop`` command.

User mistakes (``UserError``) print one line and exit 2; anything else is a
bug and keeps its traceback (exit 1). Heavy imports (torch, Prefect, MLflow)
happen inside the commands that need them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import math
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence
from importlib import metadata

from rich.console import Console
from rich.markup import escape

from stemloop.errors import UserError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    quiet_libraries(args.verbose)
    previous = None
    try:
        previous = _exit_on_sigterm()
        return args.handler(args) or 0
    except UserError as exc:
        err.print(f"[red]stemloop: error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except Exception as exc:  # a full or read-only disk is not a bug; anything else is
        if (line := storage_problem(exc)) is None:
            raise
        err.print(f"[red]stemloop: error:[/] {escape(line)}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("stemloop: interrupted")
        exit_now_if_threads_linger(130)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def quiet_libraries(verbose: int) -> None:
    """Prefect's and MLflow's info lines (server start and stop, task states, table
    creation) stay out of a command's output unless ``-v``; a level set in the
    environment wins either way. Set before either library is imported."""
    for key in _LIBRARY_LEVELS:
        if key not in _USER_LEVELS:
            os.environ[key] = "INFO" if verbose else "WARNING"
    os.environ[_OURS] = ",".join(k for k in _LIBRARY_LEVELS if k not in _USER_LEVELS)


_LIBRARY_LEVELS = ("PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL")
_OURS = "STEMLOOP_SET_LEVELS"  # the levels a stemloop command set (its children inherit them)
_USER_LEVELS = {key for key in _LIBRARY_LEVELS if key in os.environ
                and key not in os.environ.get(_OURS, "").split(",")}  # as the user set them


def _exit_on_sigterm():
    """SIGTERM (a worker's cancel, `kill`) unwinds like Ctrl-C, so exit handlers run and
    Prefect's temporary server stops with the command; returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def exit_now_if_threads_linger(code: int) -> None:
    """After Ctrl-C or SIGTERM: if worker threads still run (adapt-batch's recordings run in
    threads, which Python would wait for at exit), run the exit handlers (Prefect stops its
    temporary server) and end the process now. Files are written atomically and run-folder
    locks are released by the kernel, so a rerun resumes cleanly."""
    others = [t for t in threading.enumerate()
              if t.is_alive() and not t.daemon and t is not threading.main_thread()]
    if not others:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


_STORAGE_ERRORS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}


def storage_problem(exc: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk met mid-run (an OSError, or SQLite's
    "database or disk is full" from Prefect's or MLflow's store), or None for anything else."""
    seen: set[int] = set()
    while (exc is not None and id(exc) not in seen and not isinstance(exc, OSError)
           and "disk is full" not in str(exc)):
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    if exc is None or not (isinstance(exc, OSError) or "disk is full" in str(exc)):
        return None
    what = _STORAGE_ERRORS.get(exc.errno) if isinstance(exc, OSError) else "database or disk full"
    if what is None:
        return None
    where = getattr(exc, "filename", None) or "a file in the state folder"
    return (f"{where}: {what}; free space or fix permissions there (or point STEMLOOP_HOME "
            "or --out elsewhere), then rerun: finished stages are kept")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemloop",
        description="Separate old single-track recordings into clean stems by adapting a model "
                    "to each recording.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  stemloop separate take1.wav              # two stems in seconds, no adapting\n"
               "  stemloop adapt take1.wav -o stems/       # adapt to the recording: best stems\n"
               "  stemloop review .stemloop/runs/<recording>/<run>   # listen, compare, mark\n"
               "  stemloop models                          # models and recipes to choose from\n"
               "  stemloop COMMAND --help                  # each command's options, examples\n\n"
               "State (Prefect home, MLflow store, runs) lives in $STEMLOOP_HOME or "
               "./.stemloop.\nExit codes: 0 ok, 2 bad input or config, 1 a bug.")
    parser.add_argument("--version", action="version", version=f"stemloop {_version('stemloop')}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show Prefect's and MLflow's own log lines (task states, servers)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    cmd = sub.add_parser("version", help="print versions of stemloop and its key libraries",
                         epilog="example:\n  stemloop version    # (stemloop --version: its own)",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.set_defaults(handler=cmd_version)

    cmd = sub.add_parser("info", help="describe an audio file: format, rate, level, loudness",
                         description="Describe an audio file: format, subtype, rate, channels, "
                                     "duration, peak, integrated loudness (BS.1770-4), clipping "
                                     "and digital silence. Streams the file, so any length works.",
                         epilog="examples:\n  stemloop info reel3.flac\n"
                                "  stemloop info reel3.flac --json",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("file", help="audio file (WAV, FLAC, OGG, AIFF, ...)")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_info)

    config = sub.add_parser("config", help="show the effective configuration")
    config_sub = config.add_subparsers(title="config commands", metavar="ACTION")
    cmd = config_sub.add_parser("show", help="print the effective config as YAML",
                                epilog="examples:\n  stemloop config show\n"
                                       "  stemloop config show --config smoke --set "
                                       "train.steps=50",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_config_show)

    from stemloop.flows.cli.data import add_data_commands

    add_data_commands(sub, add_config_args)

    from stemloop.flows.cli.separate import add_separate_command

    add_separate_command(sub, add_config_args)

    from stemloop.flows.cli.score import add_score_command

    add_score_command(sub, add_config_args)

    from stemloop.flows.cli.train import add_train_commands

    add_train_commands(sub, add_config_args)

    from stemloop.flows.cli.artefacts import add_artefact_commands

    add_artefact_commands(sub, add_config_args)

    from stemloop.flows.cli.adapt import add_adapt_command

    add_adapt_command(sub, add_config_args)

    from stemloop.flows.cli.ops import add_ops_commands, add_review_command

    add_ops_commands(sub, add_config_args)
    add_review_command(sub, add_config_args)

    from stemloop.flows.cli.models import add_models_command

    add_models_command(sub, add_config_args)
    _add_examples(parser)
    return parser


EXAMPLES = {  # for the commands whose own module gives none
    "build": ["stemloop library build --out lib/ --hours 0.25"],
    "preview": ["stemloop dataset preview --out preview/ --n 4",
                "stemloop dataset preview --out preview/ --schema configs/mixbus/music.yaml "
                "--rate 44100"],
    "match": ["stemloop dataset match reel.wav --out reel-matched.yaml",
              "stemloop dataset match reel.wav --stem dialogue=reel-stems/dialogue.wav "
              "--out m.yaml"],
    "score": ["stemloop score take1-stems/", "stemloop score take1-stems/ --mixture take1.wav"],
    "train-general": ["stemloop train-general --out models/mine --config general",
                      "stemloop train-general --out models/mine-music --init "
                      "spleeter-accompaniment --config general-spleeter-music"],
    "upscale": ["stemloop upscale models/mine/model-16000.pt --to 48000 --out m-48k.pt"],
    "train-artefacts": ["stemloop train-artefacts --out models/artefacts"],
    "adapt-batch": ["stemloop adapt-batch reels/", "stemloop adapt-batch manifest.csv --set "
                    "orchestration.concurrency=1"],
    "runs": ["stemloop runs", "stemloop runs --limit 20 --csv runs.csv"],
    "report": ["stemloop report .stemloop/runs/<recording>/<run>",
               "stemloop report 3f2a...e1 --out review.html --seconds 60"],
}


def _add_examples(parser: argparse.ArgumentParser) -> None:
    """Every command's --help ends with examples (EXAMPLES, where its module gave none)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            _add_examples(sub)
            if name in EXAMPLES and "example" not in (sub.epilog or ""):
                if sub.description and sub.formatter_class is argparse.HelpFormatter:
                    sub.description = textwrap.fill(sub.description, 88)
                sub.formatter_class = argparse.RawDescriptionHelpFormatter
                sub.epilog = "\n".join(["examples:", *("  " + e for e in EXAMPLES[name]),
                                        *([sub.epilog] if sub.epilog else [])])


def add_config_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--config", metavar="FILE",
                     help="preset YAML over configs/default.yaml (a path, or a name such as "
                          "'smoke')")
    cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one key, e.g. --set train.steps=200 (repeatable)")


def load(args: argparse.Namespace):
    from stemloop.config import load_config

    return load_config(args.config, args.overrides)


def cmd_version(args: argparse.Namespace) -> int:
    names = ["stemloop", "torch", "torchaudio", "prefect", "mlflow", "soundfile", "pyloudnorm"]
    versions = {name: _version(name) for name in names}
    out.print(f"stemloop {versions.pop('stemloop')} (python {sys.version.split()[0]}, "
              + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")")
    return 0


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    from stemloop.datasets.audio import measure
    from stemloop.tasks.state import state_dir

    config = load(args)
    stats = measure(args.file, config.io.block_seconds, config.io.clip_threshold,
                    config.io.silence_dbfs)
    info = stats.info
    rows = {
        "file": str(info.path),
        "format": info.format,
        "subtype": info.subtype,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "duration_s": round(info.duration, 3),
        "peak_dbfs": _round(stats.peak_dbfs),
        "integrated_lufs": _round(stats.lufs),
        "clipped_pct": round(stats.clipped_pct, 4),
        "digital_silence_pct": round(stats.silence_pct, 4),
        "state_dir": str(state_dir(config)),
    }
    for note in stats.warnings():
        err.print(f"[yellow]stemloop: warning:[/] {escape(str(note))}", soft_wrap=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    units = {"duration_s": " s", "sample_rate": " Hz", "peak_dbfs": " dBFS",
             "integrated_lufs": " LUFS", "clipped_pct": " %", "digital_silence_pct": " %"}
    width = max(map(len, rows))
    for key, value in rows.items():
        out.print(f"{key.replace('_', ' '):<{width}}  {value}{units.get(key, '')}")
    return 0


def _round(value: float) -> float | str:
    return round(value, 2) if math.isfinite(value) else "-inf"


def cmd_config_show(args: argparse.Namespace) -> int:
    from stemloop.config import dump_config

    print(dump_config(load(args)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
