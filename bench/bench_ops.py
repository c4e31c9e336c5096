"""Operations figures: Prefect server and worker memory, time from trigger to first task,
and recordings per hour per worker.

    python bench/bench_ops.py cluster [--runs 3]
        a Prefect server on 127.0.0.1 (temp home), the process pool, `prefect deploy` of
        adapt-recording, one worker; RSS of the server and worker trees idle and during
        tiny deployment runs (sampled every 0.1 s), and per run the seconds from trigger
        (flow run created) to the worker picking it up (Pending), to the flow starting
        (Running, after the flow-run process imported its code) and to its first task
    python bench/bench_ops.py load [--runs 20] [--workers 2]
        the deployment of tests/test_deploy.py (PostgreSQL started here, Prefect and MLflow
        servers on it, N process workers with --limit 1): all runs triggered at once; per
        run trigger-to-first-task, completions, runs started more than once (none allowed),
        peak RSS of the Prefect server, MLflow server and PostgreSQL trees, recordings/hour
    python bench/bench_ops.py three-minute [--out DIR] [--recipe R] [--set KEY=VALUE ...]
        concatenates the demo set (bench/demo_set.py) to a 3-minute 16 kHz recording and
        times one default `stemloop adapt` on it (one worker's throughput)
    python bench/bench_ops.py batch [--names cafe-fr radio-talk-en] [--set KEY=VALUE ...]
        recordings per hour of `stemloop adapt-batch` over demo-set mixtures with
        orchestration.concurrency 1 and 2 (threads of one process), and of the same
        recordings as separate `stemloop adapt` processes started together (what a
        process worker with two slots does); each in a fresh state folder

Prints JSON and writes it to bench/out/ops-<command>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
from scipy.signal import resample_poly

STEMLOOP = [sys.executable, "-m", "stemloop.flows.cli"]  # the command, this venv's

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sum(procs: list[psutil.Process], measure) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += measure(proc)
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss_mb(pid: int) -> float:
    """Summed RSS (MB) of a process and its children."""
    return _sum(_tree(pid), lambda p: p.memory_info().rss) / 2**20


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    return _sum(_tree(pid), lambda p: sum(p.cpu_times()[:2]))


class PeakSampler:
    """Peak summed RSS of each named process tree, sampled every 0.1 s in a thread."""

    def __init__(self, pids: dict[str, int]):
        self.pids, self.peak = pids, dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], tree_rss_mb(pid))
            time.sleep(0.1)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _tiny_library(tmp: Path) -> Path:
    library = tmp / "library"
    subprocess.run([*STEMLOOP, "library", "build", "--out", str(library),
                    "--hours", "0.002", "--seed", "3", "--set", "mixbus.library.composers=[bach]",
                    "--set", "mixbus.library.piece_max_s=6", "--set",
                    "mixbus.library.speech_clip_s=4"], cwd=ROOT, check=True,
                   env={**os.environ, "STEMLOOP_HOME": str(tmp / "state")},
                   stdout=subprocess.DEVNULL)
    return library


def cluster(args: argparse.Namespace) -> dict:

    from tests.postgres import postgres
    from tests.test_deploy import Cluster
    from tests.test_ops import tiny_model, tiny_recordings, tiny_sets

    tmp = Path(tempfile.mkdtemp(prefix="stemloop-ops-bench-"))
    library = _tiny_library(tmp)
    recordings = tiny_recordings(tmp / "recordings", args.runs)
    with postgres("prefect", "mlflow") as database:
        began = time.monotonic()
        nodes = Cluster(tmp, tmp / "state", database)
        result: dict = {"server_start_s": round(time.monotonic() - began, 1), "runs": []}
        sets = tiny_sets(tiny_model(tmp / "tiny.pt"), library, f"tracking.uri={nodes.mlflow}")
        _measure(nodes, recordings, sets, result)
    return result


def _measure(nodes, recordings: list[Path], sets: list[str], result: dict) -> None:
    import httpx

    try:
        nodes.prefect("work-pool", "create", "stemloop", "--type", "process")
        nodes.prefect("deploy", "--all")
        worker = nodes.spawn("worker-1", "worker", "start", "--pool", "stemloop")
        time.sleep(15)  # settle: first polls, imports
        result["idle_rss_mb"] = {"server": round(tree_rss_mb(nodes.server.pid)),
                                 "worker": round(tree_rss_mb(worker.pid))}
        deployment = nodes.http.get("/deployments/name/adapt-recording/default").json()["id"]
        with PeakSampler({"server": nodes.server.pid, "worker": worker.pid}) as peak:
            for path in recordings:
                params = {"recording": str(path), "config_path": "smoke", "overrides": sets}
                run = nodes.http.post(f"/deployments/{deployment}/create_flow_run",
                                      json={"parameters": params}).json()
                nodes.wait(lambda r=run["id"]: nodes.run_state(r) in ("COMPLETED", "FAILED",
                                                                       "CRASHED"), 600, "a run")
                result["runs"].append(_timings(nodes.http, run["id"]))
        result["peak_rss_mb_during_runs"] = {k: round(v) for k, v in peak.peak.items()}
    except httpx.HTTPError as exc:
        result["error"] = str(exc)
    finally:
        nodes.close()


def postgres_pid(database: str) -> int:
    """The postmaster serving ``database`` (found by its port)."""
    port = database.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("/postgres") and "-p" in cmd and port in cmd:
            return proc.pid
    raise SystemExit("no postmaster found")


def load(args: argparse.Namespace) -> dict:
    from tests.postgres import postgres
    from tests.test_deploy import Cluster
    from tests.test_ops import tiny_model, tiny_recordings, tiny_sets

    tmp = Path(tempfile.mkdtemp(prefix="stemloop-load-bench-"))
    library = _tiny_library(tmp)
    recordings = tiny_recordings(tmp / "recordings", args.runs)
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    with postgres("prefect", "mlflow") as database:
        nodes = Cluster(tmp, tmp / "state", database)
        sets = tiny_sets(tiny_model(tmp / "tiny.pt"), library, f"tracking.uri={nodes.mlflow}")
        result: dict = {"runs_triggered": len(recordings), "workers": args.workers}
        try:
            nodes.prefect("work-pool", "create", "stemloop", "--type", "process")
            nodes.prefect("deploy", "--all")
            workers = [nodes.spawn(f"worker-{n}", "worker", "start", "--pool", "stemloop",
                                   "--name", f"worker-{n}", "--limit", "1")
                       for n in range(1, args.workers + 1)]
            time.sleep(15)
            servers = {"prefect_server": nodes.server.pid, "postgresql": postgres_pid(database),
                       "mlflow_server": nodes.processes[1].pid}
            result["idle_rss_mb"] = {k: round(tree_rss_mb(v)) for k, v in servers.items()}
            deployment = nodes.http.get("/deployments/name/adapt-recording/default").json()["id"]
            began = time.monotonic()
            with PeakSampler(servers) as peak:
                ids = [nodes.http.post(f"/deployments/{deployment}/create_flow_run", json={
                    "parameters": {"recording": str(path), "config_path": "smoke",
                                   "overrides": sets}}).json()["id"] for path in recordings]
                nodes.wait(lambda: all(nodes.run_state(r) in final for r in ids), 3600,
                           "every run to end", every=2)
            wall = time.monotonic() - began
            runs = [_timings(nodes.http, r) for r in ids]
            attempts = [nodes.http.get(f"/flow_runs/{r}").json()["run_count"] for r in ids]
            reports = list((tmp / "state" / "runs").glob("*/run-*/report.json"))
            first_task = sorted(r["trigger_to_first_task_s"] for r in runs)
            result.update({
                "machine_load_after": [round(x, 2) for x in os.getloadavg()],
                "completed": sum(r["state"] == "COMPLETED" for r in runs),
                "runs_started_more_than_once": sum(a > 1 for a in attempts),
                "reports_written": len(reports),
                "wall_s": round(wall, 1),
                "recordings_per_hour": round(len(ids) / wall * 3600, 1),
                "trigger_to_first_task_s": {"median": first_task[len(first_task) // 2],
                                            "max": first_task[-1]},
                "flow_wall_s_median": sorted(r["flow_wall_s"] for r in runs)[len(runs) // 2],
                "peak_rss_mb_during_runs": {k: round(v) for k, v in peak.peak.items()},
                "cpu_s": {k: round(tree_cpu_s(v), 1) for k, v in servers.items()},
                "runs": runs})
            del workers
        finally:
            nodes.close()
    return result


def _timings(http, run_id: str) -> dict:
    """Seconds from the flow run's creation to its start and to its first task's start."""
    flow_run = http.get(f"/flow_runs/{run_id}").json()
    tasks = http.post("/task_runs/filter",
                      json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
    created = _ts(flow_run["created"])
    first = min(_ts(t["start_time"]) for t in tasks if t["start_time"])
    states = http.get("/flow_run_states/", params={"flow_run_id": run_id}).json()
    pending = min(_ts(st["timestamp"]) for st in states if st["type"] == "PENDING")
    return {"state": flow_run["state"]["type"],
            "trigger_to_worker_pickup_s": round(pending - created, 2),
            "trigger_to_flow_start_s": round(_ts(flow_run["start_time"]) - created, 2),
            "trigger_to_first_task_s": round(first - created, 2),
            "flow_wall_s": round(_ts(flow_run["end_time"]) - created, 2)}


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def three_minute(args: argparse.Namespace) -> dict:
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    recording = folder / "three-minutes.flac"
    pieces = []
    for mixture in sorted((ROOT / "bench" / "out" / "demo-set").glob("*/mixture.flac")):
        audio, rate = sf.read(mixture, dtype="float32")
        pieces.append(audio if rate == 16000 else resample_poly(audio, 320, 441)
                      if rate == 22050 else None)
    audio = np.concatenate([p for p in pieces if p is not None])[: 180 * 16000]
    if len(audio) < 180 * 16000:
        raise SystemExit("the demo set gives less than 3 minutes: run bench/demo_set.py")
    sf.write(recording, audio, 16000, subtype="PCM_24")
    env = {**os.environ, "STEMLOOP_HOME": str(folder / "state"), "OMP_NUM_THREADS": "1"}
    command = [*STEMLOOP, "adapt", str(recording),
               *(["--recipe", args.recipe] if args.recipe else []),
               *[a for s in args.overrides for a in ("--set", s)]]
    if args.profile:  # py-spy over the whole tree, 20 samples a second: folded stacks
        command = ["py-spy", "record", "-s", "-r", "20", "-f", "raw", "-o", args.profile,
                   "--", *command]
    began = time.monotonic()
    with open(folder / "adapt.log", "w") as log, open(folder / "memory.tsv", "w") as trace:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        tree_peak = 0.0
        trace.write("elapsed_s\tmain_rss_mb\ttree_pss_mb\tprocesses\n")
        while proc.poll() is None:  # the whole tree's memory, every 0.5 s
            procs = _tree(proc.pid)
            pss = _sum(procs, lambda p: p.memory_full_info().pss) / 2**20
            main = _sum(procs[:1], lambda p: p.memory_info().rss) / 2**20
            tree_peak = max(tree_peak, pss)
            trace.write(f"{time.monotonic() - began:.1f}\t{main:.0f}\t{pss:.0f}\t"
                        f"{len(procs)}\n")
            time.sleep(0.5)
    wall = time.monotonic() - began
    report = next((folder / "state" / "runs").glob("*/run-*/report.json"), None)
    details = json.loads(report.read_text()) if report else {}
    return {"command": " ".join(command), "exit": proc.returncode, "wall_s": round(wall, 1),
            "audio_s": 180.0, "iterations": len(details.get("iterations", [])),
            "stopped": details.get("stopped"), "stages_s": details.get("stages_s"),
            "steps": {name: {"iterations": len(step["iterations"]),
                             "delivered": step["best_iteration"], "stopped": step["stopped"]}
                      for name, step in details.get("steps", {}).items()},
            "recordings_per_hour_per_worker": round(3600 / wall, 2),
            # the largest waited-for child process (the adapt process itself; Linux: KiB)
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            # proportional set size: forked workers' shared pages counted once, not per process
            "tree_peak_pss_mb": round(tree_peak),
            "tail": (folder / "adapt.log").read_text()[-2000:] if proc.returncode else ""}


def _timed_trees(commands: list[list[str]], env: dict, logs: list[Path]
                 ) -> tuple[float, float, int]:
    """Start ``commands`` together; wall seconds until the last ends, peak PSS (MB) of all
    their trees together, the worst exit status."""
    began, peak, procs = time.monotonic(), 0.0, []
    for command, log in zip(commands, logs, strict=True):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    while any(proc.poll() is None for proc in procs):
        trees = [p for proc in procs for p in _tree(proc.pid)]
        peak = max(peak, _sum(trees, lambda p: p.memory_full_info().pss) / 2**20)
        time.sleep(0.5)
    return time.monotonic() - began, peak, max(proc.returncode for proc in procs)


def batch(args: argparse.Namespace) -> dict:
    folder = Path(args.out)
    inputs = folder / "recordings"
    inputs.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        source = ROOT / "bench" / "out" / "demo-set" / name / "mixture.flac"
        if not source.is_file():
            raise SystemExit(f"{source}: missing: run bench/demo_set.py")
        (inputs / f"{name}.flac").write_bytes(source.read_bytes())
    sets = [a for s in args.overrides for a in ("--set", s)]
    result: dict = {"recordings": args.names, "overrides": args.overrides, "ways": {}}
    ways = {f"threads-{c}": [[*STEMLOOP, "adapt-batch", str(inputs), *sets, "--set",
                              f"orchestration.concurrency={c}"]] for c in args.concurrency}
    # separate processes each take every core with train.threads auto: give each one
    # thread, as the config's comment tells a deployment with several flow runs at once
    ways["processes-2"] = [[*STEMLOOP, "adapt", str(inputs / f"{n}.flac"), *sets, "--set",
                            "train.threads=1"] for n in args.names]
    for way in args.ways or list(ways):
        commands, state = ways[way], folder / f"state-{way}"
        if state.exists():
            raise SystemExit(f"{state}: exists; remove it (every way starts from nothing)")
        env = {**os.environ, "STEMLOOP_HOME": str(state)}
        env.pop("OMP_NUM_THREADS", None)  # the defaults: train.threads auto decides
        logs = [folder / f"{way}-{i}.log" for i in range(len(commands))]
        server = None
        if way.startswith("processes"):  # separate processes share one Prefect API, as
            # a deployment's process worker does; a temporary one each would share a database
            server = subprocess.Popen([*STEMLOOP, "server"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not (state / "prefect" / "server.json").exists():
                time.sleep(0.5)
        try:
            wall, peak, status = _timed_trees(commands, env, logs)
        finally:
            if server:
                server.send_signal(signal.SIGTERM)  # SIGINT: ignored in a background job
                server.wait()
        result["ways"][way] = {"exit": status, "wall_s": round(wall, 1),
                               "recordings_per_hour": round(len(args.names) * 3600 / wall, 2),
                               "peak_pss_mb": round(peak)}
        print(way, result["ways"][way], flush=True)
    ways_done = result["ways"]
    if "threads-1" in ways_done:
        base = ways_done["threads-1"]["recordings_per_hour"]
        for row in ways_done.values():
            row["vs_threads_1"] = round(row["recordings_per_hour"] / base, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("cluster")
    cmd.add_argument("--runs", type=int, default=3)
    cmd = sub.add_parser("load")
    cmd.add_argument("--runs", type=int, default=20)
    cmd.add_argument("--workers", type=int, default=2)
    cmd = sub.add_parser("three-minute")
    cmd.add_argument("--out", default=str(OUT / "ops-three-minute"))
    cmd.add_argument("--recipe", help="adapt with this recipe (e.g. archive: four stems)")
    cmd.add_argument("--set", dest="overrides", action="append", default=[])
    cmd.add_argument("--profile", metavar="RAW", help="also record a py-spy profile (folded "
                                                      "stacks) of the whole process tree")
    cmd = sub.add_parser("batch")
    cmd.add_argument("--out", default=str(OUT / "ops-batch"))
    cmd.add_argument("--names", nargs="+", default=["cafe-fr", "radio-talk-en"])
    cmd.add_argument("--concurrency", nargs="+", type=int, default=[1, 2])
    cmd.add_argument("--ways", nargs="+", help="a subset: threads-1 threads-2 processes-2")
    cmd.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    result = {"cluster": cluster, "load": load, "three-minute": three_minute,
              "batch": batch}[args.command](args)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"ops-{args.command}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
