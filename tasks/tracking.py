"""MLflow tracking with explicit run ids (the active run is thread-local; tasks run elsewhere).

One ``Tracker`` per process; every call names the run it writes to. With
``tracking.enabled: false`` every call is a no-op, so flows never branch on it.
The store is ``tracking.uri`` or ``sqlite:///<state dir>/mlflow.db``, artifacts
under ``<state dir>/mlartifacts``.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stemloop.config import Config
from stemloop.tasks.state import tracking_uri

# MLflow 3's UI opens an experiment with this tag in its model-training view (runs, metrics,
# charts) instead of the GenAI one (traces, evaluations)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class Tracker:
    def __init__(self, config: Config, state: Path):
        self.enabled = config.tracking.enabled
        self.experiment_name = config.tracking.experiment
        self.uri = tracking_uri(state, config)
        self.artifacts = (state / "mlartifacts").as_uri()
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            with _store_lock(self.uri):  # the client creates (migrates) a new store
                self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client
            with _store_lock(self.uri):
                found = client.get_experiment_by_name(self.experiment_name)
                if found and found.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                    client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND,
                                              MODEL_TRAINING)
                self._experiment_id = found.experiment_id if found else (
                    client.create_experiment(self.experiment_name, self.artifacts,
                                             tags={EXPERIMENT_KIND: MODEL_TRAINING}))
        return self._experiment_id

    def start(self, name: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None, parent: str | None = None,
              resume: str | None = None) -> str | None:
        """A new run (nested under ``parent`` when given); returns its id, None if disabled.

        With ``resume`` (a key such as the run folder), an unfinished run with the same key
        and parent (one a crash or a killed worker left RUNNING or FAILED) is reopened
        instead, so a rerun or ``prefect flow-run retry`` continues one MLflow record.
        """
        if not self.enabled:
            return None
        tags = dict(tags or {})
        if parent:
            tags["mlflow.parentRunId"] = parent
        if resume is not None:
            tags["stemloop.resume_key"] = resume
            found = self._unfinished(resume, parent)
            if found:
                self.client.update_run(found, "RUNNING")
                return found
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags)
        if params:
            self.params(run.info.run_id, params)
        return run.info.run_id

    def _unfinished(self, key: str, parent: str | None) -> str | None:
        quoted = key.replace("'", "\\'")
        runs = self.client.search_runs(
            [self.experiment_id()], f"tags.`stemloop.resume_key` = '{quoted}'",
            order_by=["attributes.start_time DESC"], max_results=20)
        for run in runs:
            if (run.info.status != "FINISHED"
                    and run.data.tags.get("mlflow.parentRunId") == parent):
                return run.info.run_id
        return None

    def params(self, run_id: str | None, params: dict[str, Any]) -> None:
        if run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def metrics(self, run_id: str | None, metrics: dict[str, float], step: int) -> None:
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # six significant digits: what MLflow's tables show (no 15-decimal noise in dB)
        items = [Metric(k.replace("@", "_"), float(f"{float(v):.6g}"), now, step)
                 for k, v in metrics.items() if v == v and abs(float(v)) != float("inf")]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def artifact(self, run_id: str | None, path: Path, folder: str | None = None) -> None:
        if run_id is not None:
            self.client.log_artifact(run_id, str(path), folder)

    @contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None, parent: str | None = None,
            resume: str | None = None) -> Iterator[str | None]:
        """``start`` a run (see there) for the block; it ends FINISHED, or FAILED when the
        block raises (Ctrl-C included)."""
        run_id = self.start(name, params, tags, parent, resume)
        try:
            yield run_id
        except BaseException:
            self.end(run_id, "FAILED")
            raise
        self.end(run_id)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self.client.set_terminated(run_id, status)

    def register(self, run_id: str | None, folder: str, name: str, alias: str,
                 description: str = "") -> str | None:
        """Register the run's artifact ``folder`` as a new version of ``name`` with ``alias``."""
        if run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # already registered: add a version
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{folder}"
        version = self.client.create_model_version(name, source, run_id=run_id,
                                                   description=description)
        self.client.set_registered_model_alias(name, alias, version.version)
        return version.version


def config_params(config: Config, sections: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    """MLflow parameters: ``extra``, then each key of the config ``sections`` as
    ``section.key``."""
    return {**extra, **{f"{section}.{key}": value for section in sections
                        for key, value in getattr(config, section).model_dump(mode="json").items()}}


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating a local SQLite store and its experiment across processes: two
    workers starting on a fresh state dir otherwise race in MLflow's migrations ("table
    _alembic_tmp_experiments already exists")."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    lock = Path(uri[len(prefix):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
