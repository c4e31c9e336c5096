"""Operations figures: Prefect server and worker memory, time from trigger to first task,
and recordings per hour per worker.

    python bench/bench_ops.py cluster [--runs 3]
        a Prefect server on 127.0.0.1 (temp home), the process pool, `prefect deploy` of
        adapt-recording, one worker; RSS of the server and worker trees idle and during
        tiny deployment runs (sampled every 0.1 s), and per run the seconds from trigger
        (flow run created) to the worker picking it up (Pending), to the flow starting
        (Running, after the flow-run process imported its code) and to its first task
    python bench/bench_ops.py three-minute [--out DIR] [--set KEY=VALUE ...]
        concatenates the demo set (bench/demo_set.py) to a 3-minute 16 kHz recording and
        times one default `stemloop adapt` on it (one worker's throughput)

Prints JSON and writes it to bench/out/ops-<command>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def tree_rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


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


def cluster(args: argparse.Namespace) -> dict:
    import httpx

    from tests.test_deploy import Cluster
    from tests.test_ops import tiny_model, tiny_recordings, tiny_sets

    tmp = Path(tempfile.mkdtemp(prefix="stemloop-ops-bench-"))
    library = tmp / "library"
    subprocess.run([sys.executable, "-m", "flows.cli", "library", "build", "--out", str(library),
                    "--hours", "0.002", "--seed", "3", "--set", "mixbus.library.composers=[bach]",
                    "--set", "mixbus.library.piece_max_s=6", "--set",
                    "mixbus.library.speech_clip_s=4"], cwd=ROOT, check=True,
                   env={**os.environ, "STEMLOOP_HOME": str(tmp / "state")},
                   stdout=subprocess.DEVNULL)
    recordings = tiny_recordings(tmp / "recordings", args.runs)
    sets = tiny_sets(tiny_model(tmp / "tiny.pt"), library)
    began = time.monotonic()
    nodes = Cluster(tmp, tmp / "state")
    result: dict = {"server_start_s": round(time.monotonic() - began, 1), "runs": []}
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
    command = [sys.executable, "-m", "flows.cli", "adapt", str(recording),
               *[a for s in args.overrides for a in ("--set", s)]]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - began
    report = next((folder / "state" / "runs").glob("*/run-*/report.json"), None)
    details = json.loads(report.read_text()) if report else {}
    return {"command": " ".join(command), "exit": done.returncode, "wall_s": round(wall, 1),
            "audio_s": 180.0, "iterations": len(details.get("iterations", [])),
            "stopped": details.get("stopped"), "stages_s": details.get("stages_s"),
            "recordings_per_hour_per_worker": round(3600 / wall, 2),
            # the largest waited-for child process (the adapt process itself; Linux: KiB)
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "tail": done.stderr[-2000:] if done.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("cluster")
    cmd.add_argument("--runs", type=int, default=3)
    cmd = sub.add_parser("three-minute")
    cmd.add_argument("--out", default=str(OUT / "ops-three-minute"))
    cmd.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    result = {"cluster": cluster, "three-minute": three_minute}[args.command](args)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"ops-{args.command}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
