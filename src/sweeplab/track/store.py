"""The tracking store: checked, created and its experiment made once, before any job trains.

Local stores are sqlite files under `tracking.root`; set-up runs under a file lock because
sqlite schema creation is not race-safe. A damaged store file or a deleted experiment stops
the launch with one clear line; nothing is ever overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
from pathlib import Path

import requests
from filelock import FileLock
from mlflow.exceptions import MlflowException

from sweeplab.config.redact import redact_uri
from sweeplab.config.resolvers import abspath, launch_dir
from sweeplab.track import tracking
from sweeplab.track.params import relativize_paths
from sweeplab.track.store_schema import check_sqlite_file, ensure_mlflow_schema, sqlite_file
from sweeplab.track.tags import CONFIG_HASH, HOST, PID, STALE
from sweeplab.track.tracking import TrackingError, is_local, resolve_uri

log = logging.getLogger(__name__)


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
        db = sqlite_file(uri)
        if db is not None:
            ensure_writable(db.parent, "tracking.uri")
            check_sqlite_file(db)
        return

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise TrackingError(
            f"tracking server {redact_uri(uri)} is unreachable ({type(e).__name__}); start it, "
            "or point tracking.uri at a reachable server or a local sqlite:/// store"
        ) from None


def store_lock(root: Path) -> FileLock:
    """Serialise store/experiment creation across processes (sqlite set-up is not race-safe)."""
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".sweeplab.lock"))


def prepare_store(uri: str, root: str, experiment: str) -> str:
    """Check the store, create it and the experiment if needed (once, under a lock); its id."""

    check_store(uri, root)
    local = is_local(uri)
    root_path = Path(abspath(root))
    with store_lock(root_path) if local else contextlib.nullcontext():
        db = sqlite_file(uri)
        if db is not None:
            ensure_mlflow_schema(db)
        client = tracking.client(uri)
        try:  # /health answers even without credentials or a working database: ask for real
            with contextlib.nullcontext() if local else few_retries():
                found = client.get_experiment_by_name(experiment)
        except MlflowException as e:  # its text holds the request's URL, credentials and all
            said = redact_uri(str(e).splitlines()[0])[:300]
            raise TrackingError(
                f"tracking server {redact_uri(uri)} refused the request: {said} (with basic "
                "auth set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
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


RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


@contextlib.contextmanager
def few_retries(n: int = 2):
    """MLflow retries a failing request 7 times with exponential backoff (4 minutes against a
    server that answers 500) before it says anything. The one check before a launch retries
    `n` times, unless the user has set the variable."""
    if RETRIES_ENV in os.environ:
        yield
        return
    os.environ[RETRIES_ENV] = str(n)
    try:
        yield
    finally:
        os.environ.pop(RETRIES_ENV, None)


# The experiment kind MLflow 3's UI writes for model training (its "Custom model development"
# choice). MLflow 3.17's UI ignores it and follows its own GenAI / Model training switch
# instead (README, "first five minutes"), but the tag still says what the experiment is.
KIND = {"mlflow.experimentKind": "custom_model_development"}


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name) or "experiment"


# --- runs left RUNNING by a dead process ------------------------------------------------------


def mark_stale_runs(uri: str, experiment_id: str, config_hash: str) -> list[str]:
    """End as KILLED the RUNNING runs of this config whose process (on this host) is gone."""
    client = tracking.client(uri)
    stale = []
    for run in tracking.runs_where(client, [experiment_id], {CONFIG_HASH: config_hash}, "RUNNING"):
        host, pid = run.data.tags.get(HOST), run.data.tags.get(PID)
        if host != socket.gethostname() or process_alive(pid):
            continue
        client.set_tag(run.info.run_id, STALE, "process gone; marked KILLED")
        client.set_terminated(run.info.run_id, status="KILLED")
        stale.append(run.info.run_id)
    return stale


def process_alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
