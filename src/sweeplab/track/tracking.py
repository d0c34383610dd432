"""MLflow runs: the store client, what a run is tagged with, one run's lifecycle and status.

Uses `MlflowClient` with explicit run ids rather than the fluent `mlflow.start_run` API, so no
"active run" is global state that could leak from one job into the next in the same process.
Every tag a run carries is assembled here (`run_tags`, `sweep_tags`, `failed_job_tags`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking._tracking_service import utils  # private: see fluent_uri
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from sweeplab.config.resolvers import abspath
from sweeplab.errors import SweeplabError
from sweeplab.track.tags import RESUMED, error_tag

log = logging.getLogger(__name__)

BATCH = 100  # params/tags per log_batch call


class TrackingError(SweeplabError):
    """The tracking store cannot be used (unreachable, not writable, unknown run)."""


def client(uri: str):
    """An MlflowClient for `uri` (relative local stores resolved from the launch dir)."""

    return MlflowClient(tracking_uri=resolve_uri(uri))


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def resolve_uri(uri: str) -> str:
    """Relative local stores -> absolute from the launch dir: one store, whatever the job's cwd."""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = uri[len(prefix) :]
            return uri if os.path.isabs(path) else prefix + abspath(path)
    return abspath(uri) if "://" not in uri else uri


def default_uri() -> str:
    """The store a command outside a Hydra run uses: $MLFLOW_TRACKING_URI, else ./mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlruns').resolve()}/mlflow.db"


class Run:
    """One MLflow run, addressed by id: everything a training job logs goes through here."""

    def __init__(self, client, run_id: str, experiment_id: str | None = None):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        # Metric writes go through one background thread (in order), so the training loop never
        # waits for the store. (MLflow's own synchronous=False costs ~0.5 s per run at
        # set_terminated: its logger thread is joined while it polls a queue every second.)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-metrics")
        self.pending: list = []

    def log_params(self, params: dict[str, str]) -> None:

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:

        items = [RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + BATCH])

    def log_metrics(
        self, metrics: dict[str, float], step: int, model_id: str | None = None, dataset=None
    ) -> None:
        """All values of one step in one batch, written by this run's own background thread
        (see __init__) so the training loop does not wait for the store; `flush()` waits for
        them before the run ends. `model_id` / `dataset` (an MLflow dataset entity) link the
        values to a logged model and to the data they were computed on."""

        now = int(time.time() * 1000)
        on = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset else {}
        items = [
            Metric(k, float(v), now, step, model_id=model_id, **on) for k, v in metrics.items()
        ]
        for i in range(0, len(items), 1000):
            chunk = items[i : i + 1000]
            self.pending.append(self._writer.submit(self.client.log_batch, self.run_id, chunk))

    def flush(self) -> None:
        """Wait for every background write; raises if one of them failed."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def metric_history(self, key: str) -> list:
        return self.client.get_metric_history(self.run_id, key)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, table: dict[str, list], artifact_file: str) -> None:
        self.client.log_table(self.run_id, table, artifact_file)

    def log_inputs(self, datasets: list, attempts: int = 3) -> None:
        """Link the run to its datasets. MLflow's SQL store looks for an existing (experiment,
        name, digest) row and then inserts one: parallel jobs on the same data can both miss
        and the second insert fails on the unique key (sqlite, PostgreSQL; seen in CI). The
        call is idempotent, so another try finds the winner's row and links it."""

        for attempt in range(1, attempts + 1):
            try:
                return self.client.log_inputs(self.run_id, datasets=datasets)
            except MlflowException as e:
                if attempt == attempts:
                    raise
                log.debug("log_inputs attempt %d failed (%s); retrying", attempt, str(e)[:200])
                time.sleep(0.05 * attempt)

    def delete_artifact(self, artifact_path: str) -> None:
        """Remove one artifact from the run's artifact store (local folder or server)."""

        uri = self.client.get_run(self.run_id).info.artifact_uri
        # mlflow-artifacts:/ URIs name no host: the server is this client's tracking URI
        repo = get_artifact_repository(uri, tracking_uri=self.client.tracking_uri)
        repo.delete_artifacts(artifact_path)


def tag_filter(tags: dict[str, str], status: str | None = None) -> str:
    """An MLflow search filter: every tag equal to its value (and the run's status). Values are
    sweeplab's own (hashes, ids, "true"): a quote in one is refused, not escaped."""
    if any("'" in str(v) for v in tags.values()):
        raise ValueError(f"a quote in a tag value to search for: {tags}")
    parts = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    return " and ".join([*parts, *([f"attributes.status = '{status}'"] if status else [])])


def runs_where(
    client, experiment_ids: list[str], tags: dict, status: str | None = None, max_results=50_000
) -> list:
    """The runs whose tags have these values (and status), newest first."""
    return client.search_runs(
        experiment_ids,
        tag_filter(tags, status),
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


@contextlib.contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI (read by fluent calls such as `log_model` and
    `load_model`) at `uri` for a block, then put back both it and $MLFLOW_TRACKING_URI, which
    `set_tracking_uri` also writes (MLflow's own `_use_tracking_uri` would unset a user's)."""
    # Private: MLflow has no public way to tell "never set" (None here) from its default,
    # which `get_tracking_uri()` returns in both cases (checked against mlflow 3.17.2).
    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(resolve_uri(uri))
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


class NullRun:
    """Stands in for a Run where nothing may be logged (DDP ranks other than 0)."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def run_to_end(
    uri: str,
    experiment_id: str,
    run_name: str | None,
    tags: dict[str, str],
    body: Callable[[Run], tuple[Any, str]],
    resume_run_id: str | None = None,
    system_metrics_interval: float | None = None,
) -> tuple[Any, Run]:
    """Create (or reopen, to resume) a run and call `body(run)`, which returns (its result,
    the status the run ends with: FINISHED, or KILLED for a pruned trial); returns (that
    result, the run). If it raises, the
    run ends FAILED (KILLED on Ctrl-C / SIGTERM) with the traceback logged and the error is
    raised again: a normal error never leaves it RUNNING. With `system_metrics_interval`
    (seconds), MLflow's monitor logs CPU / memory / disk / network (and GPU with
    nvidia-ml-py) as `system/*` metrics meanwhile."""
    store = client(uri)
    if resume_run_id is None:
        created = store.create_run(experiment_id, run_name=run_name, tags=tags)
        run = Run(store, created.info.run_id, experiment_id)
    else:
        store.update_run(resume_run_id, status="RUNNING")
        run = Run(store, resume_run_id, experiment_id)
        run.set_tags({**tags, RESUMED: "true"})
    monitor = None
    if system_metrics_interval:
        monitor = system_monitor(uri, run.run_id, system_metrics_interval, resume_run_id)
    try:
        result, status = body(run)
        run.flush()
    except BaseException as e:
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED"
        with contextlib.suppress(Exception):  # never mask the original error
            run.flush()
            run.set_tags(error_tag(e))
            run.log_text(traceback.format_exc(), "error/traceback.txt")
        _end(run, monitor, status)
        log.error("run %s ended %s: %s: %s", run.run_id, status, type(e).__name__, e)
        raise
    _end(run, monitor, status)
    return result, run


def _end(run: Run, monitor, status: str) -> None:
    run.close()
    if monitor is not None:
        monitor.finish()
    run.client.set_terminated(run.run_id, status=status)


def system_monitor(uri: str, run_id: str, interval: float, resumed: str | None):
    """MLflow's own system-metrics monitor for a run we created by id (not a fluent run)."""
    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=interval,
        resume_logging=resumed is not None,
        tracking_uri=resolve_uri(uri),
    )
    monitor.start()
    return monitor
