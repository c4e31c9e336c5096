"""CLI commands for operations: ``stemloop adapt-batch``, ``runs``, ``report`` and ``server``.

Mistakes (a missing folder or manifest, a bad column, an unknown run) are UserErrors:
one line, exit 2, checked before Prefect starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from stemloop.errors import UserError

out = Console(highlight=False, soft_wrap=True, markup=False)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def add_ops_commands(sub: argparse._SubParsersAction,
                     add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "adapt-batch", help="adapt to every recording of a folder or CSV manifest",
        description="Run `adapt` on every recording of DIR (its audio files) or of a CSV "
                    "manifest (columns: recording, and optional overrides 'KEY=VALUE;KEY=VALUE' "
                    "and reference), orchestration.concurrency at a time, one child flow run "
                    "each. A failing recording gets a one-line reason in the summary and never "
                    "stops the others. Writes <state>/batches/<batch>/summary.{csv,json}. "
                    "Exit 0 when all completed, 2 when any failed.")
    cmd.add_argument("source", metavar="DIR|CSV", help="folder of recordings or CSV manifest")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_adapt_batch)

    cmd = sub.add_parser(
        "server", help="keep the state folder's Prefect API running, so commands start fast",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the state folder's Prefect API on loopback until Ctrl-C. Every "
                    "stemloop command using the same state folder finds it and skips starting "
                    "a temporary API of its own (about 5 s of each `separate`). Without it, "
                    "commands work as before.",
        epilog="examples:\n  stemloop server &                 # then, in the same folder:\n"
               "  stemloop separate take1.wav       # uses the running API\n"
               "  STEMLOOP_HOME=/data/state stemloop server --port 8500")
    cmd.add_argument("--port", type=int, metavar="N",
                     help="loopback port (default: a free one in 8000-8999)")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_server)

    cmd = sub.add_parser(
        "runs", help="list adaptation runs from MLflow: status, best iteration, quality",
        description="One row per `adapt` run (newest first) from the MLflow experiment "
                    "tracking.experiment: recording, run, status, delivered iteration, its "
                    "quality estimate and, when a reference was given, its true SI-SDR (dB).")
    cmd.add_argument("--limit", type=int, default=200, help="at most this many runs")
    cmd.add_argument("--csv", metavar="FILE", help="also write the table to FILE (a new file; "
                                                   "--force replaces one)")
    cmd.add_argument("--force", action="store_true", help="replace an existing --csv FILE")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_runs)

    cmd = sub.add_parser(
        "report", help="write one run's review page (HTML) and log it to MLflow",
        description="The review page of a finished run (what `stemloop review` serves) as "
                    "one self-contained HTML file: the deciding figures, A/B playback of "
                    "the recording, every iteration's stems and what each removed, curves "
                    "and spectrograms (a recipe's run: per step). Logged as report.html to "
                    "the run's MLflow parent run.")
    _page_args(cmd, "page to write (default: RUN/report.html, rewritten each time); an "
                    "existing FILE is replaced only with --force", 30.0,
               "seconds of each stem to embed (default 30)")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_report)


def _page_args(cmd: argparse.ArgumentParser, out_help: str, seconds: float,
               seconds_help: str) -> None:
    """RUN, --out, --force and --seconds: what `report` and `review` share."""
    cmd.add_argument("run", metavar="RUN", help="run folder (…/runs/<recording>/<run>) or "
                                                "MLflow run id (see `stemloop runs`)")
    cmd.add_argument("--out", metavar="FILE", help=out_help)
    cmd.add_argument("--force", action="store_true", help="replace an existing --out FILE")
    cmd.add_argument("--seconds", type=float, default=seconds, help=seconds_help)


def add_review_command(sub: argparse._SubParsersAction,
                       add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "review", help="listen to a run, compare iterations A/B, mark regions for the next run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve one run's review page on loopback until Ctrl-C: the deciding "
                    "figures in plain words,\nwhy the iteration was delivered, synced A/B "
                    "playback of the recording, every iteration's stems\nand what each "
                    "removed, a waveform with a loop region, spectrograms. Mark regions "
                    "(dialogue clean\nhere, no dialogue here, leak here) and save them: "
                    "RUN/guidance.yaml, for `adapt --guidance`.\nWith --out, write the page "
                    "as one self-contained file instead (marks are then downloaded).",
        epilog="examples:\n  stemloop review .stemloop/runs/<recording>/<run>\n"
               "  stemloop review 3f2a...e1 --port 8765          # an MLflow run id\n"
               "  stemloop review <run> --out review.html --seconds 120\n"
               "  stemloop adapt reel.wav --guidance <run>/guidance.yaml   # then")
    _page_args(cmd, "write a self-contained page instead of serving it (an existing FILE "
                    "needs --force)", 60.0,
               "with --out: seconds of each source to embed (default 60)")
    cmd.add_argument("--port", type=int, metavar="N", help="loopback port (default: a free one)")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_review)


def cmd_review(args: argparse.Namespace) -> int:
    given = new_file(args.out, args.force, "--out")
    if args.port is not None and not 1024 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 1024 to 65535")
    if args.seconds <= 0:
        raise UserError(f"--seconds {args.seconds:g}: give a positive number of seconds")
    config, state = _setup(args)
    from stemloop.flows.review_app import Review, render
    from stemloop.tasks.tracking import Tracker

    run_dir = _run_folder(args.run, Tracker(config, state))
    if given:
        write_new_file(given, render(run_dir, served=False, seconds=args.seconds), "--out")
        out.print(f"review page  {given.resolve()}")
        return 0
    try:
        server = Review(run_dir, args.port or 0)
    except OSError as exc:
        raise UserError(f"--port {args.port}: cannot listen there ({exc.strerror}); pick "
                        "another port, or leave --port out for a free one") from None
    out.print(f"review of {run_dir} at {server.url} (loopback only; Ctrl-C stops it)")
    out.print(f"saved marks go to {run_dir / 'guidance.yaml'}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out.print("stopped")
    finally:
        server.server_close()
    return 0


def _setup(args: argparse.Namespace):
    from stemloop.config import load_config
    from stemloop.tasks.state import state_dir, use_state_dir

    config = load_config(args.config, args.overrides)
    return config, use_state_dir(state_dir(config), config)


def cmd_adapt_batch(args: argparse.Namespace) -> int:
    from stemloop.flows.manifest import read_jobs

    read_jobs(args.source)  # a missing folder or a bad manifest: one line, before Prefect
    config, state = _setup(args)
    from stemloop.datasets.audio import check_output_dir

    check_output_dir(state / "batches")
    from stemloop.tasks.server import start_prefect

    start_prefect(state)
    import pandas as pd

    from stemloop.flows.batch import adapt_batch, format_summary

    rows = adapt_batch(str(args.source), args.config, list(args.overrides))
    table = pd.DataFrame(rows)
    out.print(format_summary(table))
    failed = int((table["status"] != "completed").sum())
    out.print(f"{len(rows) - failed} completed, {failed} failed; summary in "
              f"{state / 'batches'}")
    return 2 if failed else 0


def cmd_server(args: argparse.Namespace) -> int:
    if args.port is not None and not 1024 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 1024 to 65535")
    if args.port is not None:
        import socket

        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", args.port)) == 0:
                raise UserError(f"--port {args.port}: something already listens there; pick "
                                "another port, or leave --port out for a free one")
    _, state = _setup(args)
    from stemloop.tasks.server import serve_prefect

    # Ctrl-C or `kill -INT` stops it even when started as a background job (`stemloop server
    # &`), whose shell starts it with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def ready(url: str) -> None:
        out.print(f"Prefect API for {state} at {url}")
        out.print("stemloop commands using this state folder use it; Ctrl-C stops it")

    try:
        serve_prefect(state, args.port, ready)
    except KeyboardInterrupt:
        out.print("stopped")
    return 0


def new_file(path: str | None, force: bool, option: str) -> Path | None:
    """``path`` as a Path if it may be written: a file that exists is replaced only with
    ``force``, and a folder never; a one-line UserError otherwise (checked before any work)."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target}: is a folder; give a file name for {option}")
    if target.exists() and not force:
        raise UserError(f"{target}: already exists; pass --force to replace it, or choose "
                        f"another file for {option}")
    return target


def write_new_file(target: Path, text: str, option: str) -> None:
    from stemloop.files import write_text_atomic

    try:
        write_text_atomic(target, text)
    except OSError as exc:
        raise UserError(f"{target}: cannot write ({exc.strerror}); choose another file for "
                        f"{option}") from None


def cmd_runs(args: argparse.Namespace) -> int:
    csv = new_file(args.csv, args.force, "--csv")
    config, state = _setup(args)
    from stemloop.flows.review import runs_table
    from stemloop.tasks.tracking import Tracker

    tracker = Tracker(config, state)
    table = (runs_table(tracker.client, config.tracking.experiment, args.limit)
             if _store_exists(tracker) else None)
    if table is None or table.empty:
        out.print(f"no adaptation runs in MLflow experiment '{config.tracking.experiment}' "
                  f"at {tracker.uri}")
        return 0
    out.print(table.drop(columns="stems").fillna("").to_string(index=False))
    for row in table[table["stems"].notna()].itertuples():  # recipe runs: a line per stem
        out.print(f"{row.recording} {row.run} (recipe):")
        for stem in row.stems.split("; "):
            out.print(f"  {stem}")
    if csv:
        write_new_file(csv, table.to_csv(index=False), "--csv")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    given = new_file(args.out, args.force, "--out")
    config, state = _setup(args)
    from stemloop.flows.review import load_report
    from stemloop.flows.review_app import render
    from stemloop.tasks.tracking import Tracker

    if args.seconds <= 0:
        raise UserError(f"--seconds {args.seconds:g}: give a positive number of seconds")
    tracker = Tracker(config, state)
    run_dir = _run_folder(args.run, tracker)
    report = load_report(run_dir)
    page = given or run_dir / "report.html"
    write_new_file(page, render(run_dir, served=False, seconds=args.seconds), "--out")
    run_id = report.get("mlflow_run_id")
    if run_id and tracker.enabled:
        tracker.artifact(run_id, page)
    out.print(f"report      {page.resolve()}")
    out.print(f"MLflow      {f'run {run_id}, artifact {page.name}' if run_id else 'not logged'}")
    return 0


def _store_exists(tracker) -> bool:
    """False for a local SQLite store that was never written (MLflow would create it)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    prefix = "sqlite:///"
    return not tracker.uri.startswith(prefix) or Path(tracker.uri[len(prefix):]).is_file()


def _run_folder(run: str, tracker) -> Path:
    """A run folder as given, or the one an MLflow run's report.json names."""
    if Path(run).is_dir():
        return Path(run).resolve()
    if not RUN_ID.match(run):
        raise UserError(f"{run}: no such run folder or MLflow run id; list runs with "
                        "`stemloop runs`")
    if not _store_exists(tracker):
        raise UserError(f"{run}: no MLflow store at {tracker.uri}, so no such run; check "
                        "STEMLOOP_HOME or tracking.uri")
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = tracker.client.download_artifacts(run, "report.json", tmp)
            report = json.loads(Path(path).read_text())
    except MlflowException:
        raise UserError(f"{run}: no finished MLflow run with this id at {tracker.uri}; list "
                        "runs with `stemloop runs`") from None
    except OSError:
        raise UserError(f"{run}: this MLflow run has no report.json (it has not finished); "
                        "pick a FINISHED run from `stemloop runs`") from None
    folder = Path(report["run_dir"])
    if not folder.is_dir():
        raise UserError(f"{folder}: run {run}'s folder is not on this machine; run `stemloop "
                        "report` where the state directory lives")
    return folder
