"""MLflow: store set-up, one run's lifecycle and status, metrics, tags and artifacts.

Uses `MlflowClient` with explicit run ids rather than the fluent `mlflow.start_run` API, so no
"active run" is global state that could leak from one job into the next in the same process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sqlite3
import tempfile
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sweeplab.errors import SweeplabError
from sweeplab.params import MAX_PARAM_VALUE, relativize_paths
from sweeplab.redact import redact_uri
from sweeplab.schema import abspath, launch_dir

log = logging.getLogger(__name__)

BATCH = 100  # params/tags per log_batch call


class TrackingError(SweeplabError):
    """The tracking store cannot be used (unreachable, not writable, unknown run)."""


def _client(uri: str):
    from mlflow import MlflowClient

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


def ensure_writable(path: str | Path, what: str) -> None:
    """Write a probe file in `path`, or raise one clear error before training. Folders made
    for the probe are removed again: a launch that fails later leaves nothing behind."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".sweeplab-probe-"):
            pass
    except OSError as e:
        raise TrackingError(f"{what}={path} is not writable: {e.strerror or e}") from None
    finally:
        for folder in made:  # deepest first; another process may have filled one meanwhile
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_store(uri: str, root: str) -> None:
    """Fail fast: a local store must be writable, a server must answer."""
    if is_local(uri):
        ensure_writable(root, "tracking.root")
        db = resolve_uri(uri)
        if db.startswith("sqlite:///"):
            ensure_writable(Path(db[len("sqlite:///") :]).parent, "tracking.uri")
            check_sqlite_file(Path(db[len("sqlite:///") :]))
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise TrackingError(
            f"tracking server {redact_uri(uri)} is unreachable ({type(e).__name__}); start it, "
            "or point tracking.uri at a reachable server or a local sqlite:/// store"
        ) from None


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(path: Path) -> None:
    """An existing store file must be an intact SQLite database. Anything else (a truncated
    copy, a wrong file) ends here with one line, before MLflow's migrations could touch it."""
    if not path.is_file() or path.stat().st_size == 0:  # absent or empty: MLflow creates it
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(100)
    problem = None
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        problem = "is not an SQLite database"
    else:
        # The header's page count is valid when its "version valid for" matches the change
        # counter; a -wal file may hold pages the main file does not have yet.
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        counted = header[92:96] == header[24:28] and not Path(f"{path}-wal").exists()
        if counted and page_size * pages > size:
            problem = f"is truncated ({size} of its {page_size * pages} bytes)"
        else:
            try:
                with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as c:
                    c.execute("select count(*) from sqlite_master").fetchone()
            except sqlite3.DatabaseError as e:
                problem = f"cannot be read as an SQLite database ({e})"
    if problem:
        raise TrackingError(
            f"tracking.uri: the store file {path} {problem}. sweeplab leaves it untouched: "
            "restore it from a backup, or point tracking.root / tracking.uri at another store"
        )


@contextlib.contextmanager
def _store_lock(root: Path):
    """Serialise store/experiment creation across processes (sqlite set-up is not race-safe)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".sweeplab.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_store(uri: str, root: str, experiment: str) -> str:
    """Check the store, create it and the experiment if needed (once, under a lock); its id."""
    from mlflow.exceptions import MlflowException

    check_store(uri, root)
    local = is_local(uri)
    root_path = Path(abspath(root))
    with _store_lock(root_path) if local else contextlib.nullcontext():
        db = resolve_uri(uri)
        if db.startswith("sqlite:///"):  # sqlite makes the file, not its folder
            Path(db[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        client = _client(uri)
        try:
            found = client.get_experiment_by_name(experiment)
        except MlflowException as e:  # /health answers even without credentials: ask for real
            raise TrackingError(
                f"tracking server {redact_uri(uri)} refused the request: {str(e)[:300]} "
                "(with basic auth set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
            ) from None
        if found is not None and found.lifecycle_stage == "deleted":
            typed_uri = relativize_paths(redact_uri(resolve_uri(uri)), launch_dir())
            raise TrackingError(
                f"tracking.experiment={experiment!r} is deleted (experiment id "
                f"{found.experiment_id}); restore it with `MLFLOW_TRACKING_URI="
                f"{typed_uri} mlflow experiments restore --experiment-id "
                f"{found.experiment_id}`, or log into another one with "
                "tracking.experiment=<name> (`mlflow gc` frees a deleted name for good)"
            )
        if found is not None:
            return found.experiment_id
        artifacts = (
            (root_path / "artifacts" / _safe_dirname(experiment)).as_uri() if local else None
        )
        try:
            return client.create_experiment(experiment, artifact_location=artifacts, tags=KIND)
        except MlflowException:  # another host created it first (server stores)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id


# The experiment kind MLflow 3's UI writes for model training (its "Custom model development"
# choice). MLflow 3.17's UI ignores it and follows its own GenAI / Model training switch
# instead (README, "first five minutes"), but the tag still says what the experiment is.
KIND = {"mlflow.experimentKind": "custom_model_development"}


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name) or "experiment"


# --- one run ---------------------------------------------------------------------------------


class Run:
    """One MLflow run, addressed by id: everything a training job logs goes through here."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        # Metric writes go through one background thread (in order), so the training loop never
        # waits for the store. (MLflow's own synchronous=False costs ~0.5 s per run at
        # set_terminated: its logger thread is joined while it polls a queue every second.)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-metrics")
        self.pending: list = []

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_PARAM_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All values of one step in one batch, written by MLflow's background logger so the
        training loop does not wait for the store; `flush()` waits before the run ends."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
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


class NullRun:
    """Stands in for a Run where nothing may be logged (DDP ranks other than 0)."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def tracked_run(
    uri: str,
    experiment_id: str,
    run_name: str | None,
    tags: dict[str, str],
    resume_run_id: str | None = None,
) -> Iterator[Run]:
    """Create (or reopen, to resume) a run; end it FINISHED, or FAILED / KILLED with the
    traceback logged, re-raising. A normal error never leaves it RUNNING."""
    client = _client(uri)
    if resume_run_id is None:
        run = Run(
            client, client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        )
    else:
        client.update_run(resume_run_id, status="RUNNING")
        run = Run(client, resume_run_id)
        run.set_tags({**tags, "sweeplab.resumed": "true"})
    try:
        yield run
        run.flush()
    except BaseException as e:
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED"
        with contextlib.suppress(AttributeError):  # tells train() this error has its run
            e.sweeplab_run_id = run.run_id
        with contextlib.suppress(Exception):  # never mask the original error
            run.flush()
            run.set_tags({"error": f"{type(e).__name__}: {e}"[:500]})
            run.log_text(traceback.format_exc(), "error/traceback.txt")
        run.close()
        client.set_terminated(run.run_id, status=status)
        log.error("run %s ended %s: %s: %s", run.run_id, status, type(e).__name__, e)
        raise
    run.close()
    client.set_terminated(run.run_id, status="FINISHED")


def process_tags() -> dict[str, str]:
    """Who runs this job: lets a later launch tell a dead RUNNING run from a live one."""
    return {"sweeplab.host": socket.gethostname(), "sweeplab.pid": str(os.getpid())}


def mark_stale_runs(uri: str, experiment_id: str, config_hash: str) -> list[str]:
    """End as KILLED the RUNNING runs of this config whose process (on this host) is gone."""
    client = _client(uri)
    query = f"tags.`sweeplab.config_hash` = '{config_hash}' and attributes.status = 'RUNNING'"
    stale = []
    for run in client.search_runs([experiment_id], query):
        tags = run.data.tags
        if tags.get("sweeplab.host") != socket.gethostname() or _alive(tags.get("sweeplab.pid")):
            continue
        client.set_tag(run.info.run_id, "sweeplab.stale", "process gone; marked KILLED")
        client.set_terminated(run.info.run_id, status="KILLED")
        stale.append(run.info.run_id)
    return stale


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
