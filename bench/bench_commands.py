"""Benchmark: wall time of one-shot commands as a person types them (issue 22).

    flock /tmp/stemloop-bench.lock .venv/bin/python bench/bench_commands.py --runs 5

Times, each the median of ``--runs`` fresh processes (min–max beside it), from the command to
its exit: ``stemloop info`` on the bundled example, ``stemloop separate`` on it with a
temporary Prefect API (the default) and with a running ``stemloop server``, and
``stemloop separate`` on a missing file (the one-line error). Also each command's peak
RSS. A fresh state folder under /tmp, so nothing of ./.stemloop is touched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "archive-dialogue.flac"
CLI = [sys.executable, "-m", "stemloop.flows.cli"]


def timed(argv: list[str], env: dict[str, str], expect: int = 0) -> tuple[float, float]:
    """(wall s, peak RSS MB) of one run of ``argv``; fails loudly on another exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()  # until the process closes it, i.e. exits
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != expect:
        raise SystemExit(f"{' '.join(argv)} exited {code}: {err.strip()}")
    return wall, usage.ru_maxrss / 1024


def row(name: str, argv: list[str], env: dict[str, str], runs: int, expect: int = 0,
        before=None) -> None:
    walls, rss = [], []
    for _ in range(runs):
        if before:
            before()
        wall, peak = timed(argv, env, expect)
        walls.append(wall)
        rss.append(peak)
    print(f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | "
          f"{statistics.median(rss):.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stemloop-cmds-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STEMLOOP_"))}
        env["STEMLOOP_HOME"] = str(work / "state")
        out = work / "stems"

        def clear() -> None:
            shutil.rmtree(out, ignore_errors=True)

        print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
        print("| command | wall s, median | min–max | peak RSS MB |")
        print("|---|---|---|---|")
        row("stemloop info (25 s example)", [*CLI, "info", str(EXAMPLE)], env, args.runs)
        row("stemloop separate, missing file", [*CLI, "separate", str(work / "none.wav")], env,
            args.runs, expect=2)
        separate = [*CLI, "separate", str(EXAMPLE), "--out", str(out)]
        timed(separate, env)  # the first start migrates Prefect's new database: not counted
        row("stemloop separate (25 s example), temporary Prefect API", separate, env,
            args.runs, before=clear)
        server = subprocess.Popen([*CLI, "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            if not re.search(r" at http://\S+$", server.stdout.readline().strip()):
                raise SystemExit("stemloop server did not start")
            row("stemloop separate (25 s example), with `stemloop server` running", separate,
                env, args.runs, before=clear)
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    main()
