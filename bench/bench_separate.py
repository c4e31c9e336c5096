"""Benchmarks of `stemloop separate` with the model it uses by default for each rate.

    flock /tmp/stemloop-bench.lock .venv/bin/python bench/bench_separate.py speed
    flock /tmp/stemloop-bench.lock .venv/bin/python bench/bench_separate.py memory
    ... speed --model models/general-dialogue-v3/model-44100.pt   # a trained checkpoint
    ... speed --recipe archive        # a recipe (issue 20: four stems, three models)

``speed``: real-time factor (wall seconds ÷ audio seconds) of the engine path
(``adapt.separate.run_separation``: read blocks, model, overlap-add, write
stems) on a mono file at 16 and 48 kHz, median of ``--runs``.
``memory``: peak RSS of a whole ``stemloop separate`` process (Prefect, CLI
and all) on 48 kHz mono files of 10, 30 and 60 minutes, generated on the fly
into /tmp and deleted after. Peak RSS is the child's ``ru_maxrss`` (wait4)
and, sampled every 0.1 s, the summed RSS of its process tree.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stemloop.adapt.checkpoint import save_checkpoint  # noqa: E402
from stemloop.adapt.model import build_model, count_parameters  # noqa: E402
from stemloop.adapt.separate import default_model, prepare, run_separation  # noqa: E402
from stemloop.config import load_config  # noqa: E402


def make_file(path: Path, rate: int, seconds: float, block_s: float = 60.0) -> Path:
    """Noise plus a wandering tone, written block by block (never whole in memory)."""
    rng = np.random.default_rng(0)
    total = int(seconds * rate)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as handle:
        for start in range(0, total, int(block_s * rate)):
            n = min(int(block_s * rate), total - start)
            t = (start + np.arange(n)) / rate
            tone = 0.3 * np.sin(2 * np.pi * (220 + 50 * np.sin(0.1 * t)) * t)
            handle.write((tone + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return path


def default_checkpoint(directory: Path, rate: int) -> Path:
    torch.manual_seed(0)
    model = build_model(load_config().model, rate)
    return save_checkpoint(directory / f"default-{rate}.pt", model)


def speed(args: argparse.Namespace, work: Path) -> None:
    config = load_config(overrides=[f"separate.threads={args.threads}",
                                    f"separate.precision={args.precision}"])
    print("| rate | audio | runs | RTF median | RTF min–max | CPU s per audio s (median) | "
          "load avg before | params |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in args.rates:
        source = make_file(work / f"speed-{rate}.wav", rate, args.seconds)
        model = None if args.recipe else (args.model or default_model(rate)
                                          or default_checkpoint(work, rate))
        job = prepare(source, config, model, args.recipe)
        rtfs, cpus, load = [], [], os.getloadavg()[0]
        for _ in range(args.runs):
            started, cpu = time.perf_counter(), time.process_time()
            run_separation(job, work / "out", config)
            rtfs.append((time.perf_counter() - started) / args.seconds)
            cpus.append((time.process_time() - cpu) / args.seconds)
        params = (sum(count_parameters(step.model) for step in job.fn._models.values())
                  if args.recipe else count_parameters(job.fn.model))
        print(f"| {rate / 1000:g} kHz | {args.seconds:g} s mono | {args.runs} | "
              f"{statistics.median(rtfs):.4f} | {min(rtfs):.4f}–{max(rtfs):.4f} | "
              f"{statistics.median(cpus):.4f} | {load:.1f} | {params / 1e6:.2f} M |", flush=True)


def measure_process(argv: list[str], log: Path) -> tuple[float, float, float]:
    """Run ``argv``; (wall s, ru_maxrss MB of the process, sampled tree peak MB)."""
    started = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    watched, tree_peak = psutil.Process(proc.pid), 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            procs = [watched, *watched.children(recursive=True)]
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv} failed: {log.read_text()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, tree_peak / 2**20


def memory(args: argparse.Namespace, work: Path) -> None:
    model = None if args.recipe else (args.model or default_model(48000)
                                      or default_checkpoint(work, 48000))
    which = ["--recipe", args.recipe] if args.recipe else ["--model", str(model)]
    print("| length | runs | peak RSS median (maxrss) | peak RSS max (maxrss) | "
          "tree peak max (sampled) | wall median | RTF median |")
    print("|---|---|---|---|---|---|---|")
    for minutes in args.minutes:
        source = make_file(work / f"long-{minutes}.wav", 48000, minutes * 60.0)
        peaks, trees, walls = [], [], []
        for _ in range(args.runs):
            out = work / "out"
            argv = [sys.executable, "-m", "stemloop.flows.cli", "separate", str(source), *which,
                    "--out", str(out)]
            wall, peak, tree = measure_process(argv, work / "stderr.log")
            peaks.append(peak)
            trees.append(tree)
            print(f"<!-- {minutes} min run: maxrss {peak:.0f} MB, tree {tree:.0f} MB, "
                  f"{wall:.1f} s -->", flush=True)
            walls.append(wall)
            shutil.rmtree(out)
        source.unlink()
        print(f"| {minutes} min 48 kHz mono | {args.runs} | {statistics.median(peaks):.0f} MB | "
              f"{max(peaks):.0f} MB | {max(trees):.0f} MB | {statistics.median(walls):.1f} s | "
              f"{statistics.median(walls) / (minutes * 60):.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    cmd = sub.add_parser("speed")
    cmd.add_argument("--model", type=Path, help="checkpoint (default: the shipped model "
                     "separate picks for the rate; without one, the default config, random)")
    cmd.add_argument("--recipe", help="a recipe (name or file) instead of a model")
    cmd.add_argument("--rates", type=int, nargs="+", default=[16000, 48000])
    cmd.add_argument("--seconds", type=float, default=120.0)
    cmd.add_argument("--runs", type=int, default=5)
    cmd.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    cmd.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                     help="separate.precision (default auto)")
    cmd = sub.add_parser("memory")
    cmd.add_argument("--model", type=Path, help="checkpoint (default: as for speed)")
    cmd.add_argument("--recipe", help="a recipe (name or file) instead of a model")
    cmd.add_argument("--minutes", type=int, nargs="+", default=[10, 30, 60])
    cmd.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    threads = getattr(args, "threads", 0) or torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {threads} threads")
    with tempfile.TemporaryDirectory(prefix="stemloop-bench-") as tmp:
        os.environ.setdefault("STEMLOOP_HOME", str(Path(tmp) / "state"))
        (speed if args.what == "speed" else memory)(args, Path(tmp))


if __name__ == "__main__":
    main()
