"""The deployments for real, on loopback, as README's "Beyond one machine" runs them: a
private PostgreSQL (started by the test), a Prefect server and an MLflow server on it (the
MLflow server writing artifacts to the shared state folder), the process work pool,
``prefect deploy --all`` from prefect.yaml, the crash-detection automation and two workers.
Four tiny recordings run through ``adapt-recording/default``; the worker running the first
is killed (SIGKILL to it and its flow-run process, as when a machine dies) during
fine-tuning; the automation marks the silent run Crashed; ``prefect flow-run retry``
reruns it on the surviving worker with the finished steps served from the cache and its
fine-tuning resumed from its checkpoint. All four deliver stems that sum to their
recording; MLflow holds one finished parent per recording with its iterations nested
under it; no SQLite database is made anywhere.

The victim dies only after the server has stored two of its heartbeats (each opens a fresh
window for the crash automation, so the test does not hinge on one event)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.postgres import postgres
from tests.test_ops import assert_stems_sum_to_input, tiny_model, tiny_recordings, tiny_sets

ROOT = Path(__file__).resolve().parent.parent
PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_tree(process: subprocess.Popen | psutil.Process) -> None:
    """SIGKILL one process we started and every process below it (by pid)."""
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


class Cluster:
    """A Prefect server, an MLflow server and workers on loopback, each a process of its
    own, both servers on the PostgreSQL at ``database``."""

    def __init__(self, tmp: Path, state: Path, database: str):
        port, tracking = free_port(), free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.mlflow = f"http://127.0.0.1:{tracking}"
        self.env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"),
                    "PREFECT_API_URL": self.api, "STEMLOOP_HOME": str(state),
                    "PREFECT_API_DATABASE_CONNECTION_URL": database.replace(
                        "postgresql://", "postgresql+asyncpg://") + "/prefect",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "PREFECT_LOGGING_LEVEL": "INFO"}
        self.logs = tmp
        self.processes: list[subprocess.Popen] = []
        self.server = self.spawn("server", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port))
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the lock has psycopg2
        self.spawn("mlflow", "server", "--backend-store-uri",
                   database.replace("postgresql://", "postgresql+psycopg2://") + "/mlflow",
                   "--artifacts-destination", str(state / "mlartifacts"), "--workers", "1",
                   "--host", "127.0.0.1", "--port", str(tracking),
                   command=[sys.executable, "-m", "mlflow"])
        self.http = httpx.Client(base_url=self.api, timeout=30)
        self.wait(lambda: self.http.get("/health").status_code == 200, 120, "server start")
        self.wait(lambda: httpx.get(f"{self.mlflow}/health").status_code == 200, 120,
                  "MLflow server start", show=lambda: (tmp / "mlflow.log").read_text())

    def spawn(self, log: str, *args: str, command: list[str] = PREFECT) -> subprocess.Popen:
        with (self.logs / f"{log}.log").open("w") as out:
            process = subprocess.Popen([*command, *args], cwd=ROOT, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def prefect(self, *args: str) -> str:
        done = subprocess.run([*PREFECT, "--no-prompt", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def run_state(self, run_id: str) -> str:
        return self.http.get(f"/flow_runs/{run_id}").json()["state"]["type"]

    def events(self, run_id: str, *names: str) -> list[str]:
        """The names of the events the server stored for one flow run, oldest first."""
        body = {"filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]},
                           **({"event": {"name": list(names)}} if names else {}),
                           "order": "ASC"}, "limit": 50}
        page = self.http.post("/events/filter", json=body)
        page.raise_for_status()
        return [event["event"] for event in page.json()["events"]]

    def server_trouble(self) -> str:
        """The server log's error and warning lines (what a failed wait shows)."""
        lines = (self.logs / "server.log").read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if "| ERROR" in line or "| WARNING" in line)

    def task_states(self, run_id: str) -> list[tuple[str, str]]:
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        runs = self.http.post("/task_runs/filter", json=body).json()
        return [(run["name"], run["state"]["name"]) for run in runs]

    @staticmethod
    def wait(check, seconds: float, what: str, every: float = 0.5, show=lambda: "") -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(every)
        raise AssertionError(f"timed out after {seconds} s waiting for {what}\n{show()}")

    def tail(self, lines: int = 30) -> str:
        """The end of every worker log (what a failed assertion shows)."""
        return "\n".join(f"--- {log.name}\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-lines:])
            for log in sorted(self.logs.glob("worker-*.log")))

    def close(self) -> None:
        self.http.close()
        for process in reversed(self.processes):
            kill_tree(process)


def worker_running(workers: list[subprocess.Popen], run_id: str) -> subprocess.Popen | None:
    """The worker whose flow-run process runs ``run_id`` (from that process's environment)."""
    for worker in workers:
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                if child.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                    return worker
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return None


@pytest.mark.slow
def test_two_workers_one_killed_mid_run_then_retry_resumes_from_cache(tiny_library, tmp_path):
    with postgres("prefect", "mlflow") as database:
        _deployment_on_postgres(tiny_library, tmp_path, database)


def _deployment_on_postgres(tiny_library: Path, tmp_path: Path, database: str) -> None:
    state = tmp_path / "state"
    recordings = tiny_recordings(tmp_path / "recordings", 4)
    first = recordings[0]
    cluster = Cluster(tmp_path, state, database)
    sets = tiny_sets(tiny_model(tmp_path / "tiny.pt"), tiny_library,
                     f"tracking.uri={cluster.mlflow}")
    try:
        cluster.prefect("work-pool", "create", "stemloop", "--type", "process")
        deployed = cluster.prefect("deploy", "--all")
        for name in ("adapt-recording", "adapt-batch", "separate", "train-general"):
            assert f"Deployment '{name}/default' successfully created" in deployed
        cluster.prefect("automation", "create", "--from-file",
                        "configs/automations/crash-silent-runs.yaml")
        # --limit 1 (as the README advises): a worker never takes both runs, so killing the
        # victim's worker cannot also take the other run down before its first heartbeat.
        workers = [cluster.spawn(f"worker-{n}", "worker", "start", "--pool", "stemloop",
                                 "--name", f"worker-{n}", "--limit", "1") for n in (1, 2)]
        runs = {}
        # the first trains long enough to send two heartbeats (30 s apart) before it dies
        slow = ["train.steps=6000", "train.val_every=1000", "train.checkpoint_every=25",
                "train.early_stop_patience=0"]
        for path in recordings:
            extra = slow if path == first else ["train.steps=4"]
            params = json.dumps({"recording": str(path), "config_path": "smoke",
                                 "overrides": [*sets, *extra]})
            made = cluster.prefect("deployment", "run", "adapt-recording/default",
                                   "--params", params)
            runs[path] = next(line.split("UUID:")[1].strip() for line in made.splitlines()
                              if "UUID:" in line)
        victim_id = runs[first]
        checkpoints = state / "runs"
        cluster.wait(lambda: any(checkpoints.glob("scene-0-*/run-*/iter-001/model/train/"
                                                  "last.pt")), 300, "fine-tuning to start",
                     every=0.05)
        heartbeat = "prefect.flow-run.heartbeat"
        def trouble() -> str:
            return f"events {cluster.events(victim_id)}\n{cluster.server_trouble()}"
        cluster.wait(lambda: len(cluster.events(victim_id, heartbeat)) >= 2, 120,
                     "two heartbeats of the first run", every=1, show=trouble)
        assert cluster.run_state(victim_id) == "RUNNING", "the first run ended before its kill"
        victim = worker_running(workers, victim_id)
        assert victim is not None, "no worker runs the first recording"
        kill_tree(victim)  # the worker and its flow-run process: a machine gone
        cluster.wait(lambda: cluster.run_state(victim_id) == "CRASHED", 150,
                     "the automation to mark the silent run Crashed", every=2, show=trouble)
        for run_id in runs.values():
            if cluster.run_state(run_id) == "CRASHED":
                cluster.prefect("flow-run", "retry", run_id)
        final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        for run_id in runs.values():
            cluster.wait(lambda r=run_id: cluster.run_state(r) in final, 300,
                         f"flow run {run_id} to end", every=1,
                         show=lambda: f"states {[cluster.run_state(r) for r in runs.values()]}\n"
                                      + cluster.tail())
            assert cluster.run_state(run_id) == "COMPLETED", cluster.tail()
        # The server ingests task-run states from events after the flow run ends: poll.
        def cached() -> list[str]:
            return [name for name, st in cluster.task_states(victim_id) if st == "Cached"]
        cluster.wait(lambda: all(any(name.startswith(task) for name in cached())
                                 for task in ("separate-file", "score-iteration")), 60,
                     "iteration 0's stages to show as Cached in the retried run",
                     show=lambda: str(cluster.task_states(victim_id)))
        reports = [json.loads(p.read_text()) for p in checkpoints.glob("*/run-*/report.json")]
        names = sorted(path.name for path in recordings)
        assert sorted(Path(r["recording"]).name for r in reports) == names
        for report in reports:
            assert len(report["iterations"]) == 2
            assert_stems_sum_to_input(report)
        from mlflow import MlflowClient

        from stemloop.flows.review import runs_table

        client = MlflowClient(cluster.mlflow)
        table = runs_table(client, "stemloop")
        # the retry reopened the crashed run's MLflow parent: one finished parent each,
        # with its two iterations nested under it
        assert sorted(table["recording"]) == names, table
        assert set(table["status"]) == {"FINISHED"}, table
        for report in reports:
            parent = client.get_run(report["mlflow_run_id"])
            children = client.search_runs([parent.info.experiment_id],
                                          f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
            assert len(children) == 2, [c.data.tags.get("mlflow.runName") for c in children]
        assert any((state / "mlartifacts").rglob("*.json"))  # artifacts in the shared folder
        assert not [p for p in tmp_path.rglob("*") if p.suffix in (".db", ".sqlite")]
    finally:
        cluster.close()
