"""The tracking store: checked, created and its experiment made once, before any job trains.

Local stores are sqlite files under `tracking.root`; set-up runs under a file lock because
sqlite schema creation is not race-safe. A damaged store file or a deleted experiment stops
the launch with one clear line; nothing is ever overwritten.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import tempfile
from pathlib import Path

from filelock import FileLock

from sweeplab import tracking
from sweeplab.params import relativize_paths
from sweeplab.redact import redact_uri
from sweeplab.schema import abspath, launch_dir
from sweeplab.tracking import TrackingError, is_local, resolve_uri


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
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise TrackingError(
            f"tracking server {redact_uri(uri)} is unreachable ({type(e).__name__}); start it, "
            "or point tracking.uri at a reachable server or a local sqlite:/// store"
        ) from None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store (absolute, from the launch dir), else None."""
    db = resolve_uri(uri)
    return Path(db[len("sqlite:///") :]) if db.startswith("sqlite:///") else None


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


def store_lock(root: Path) -> FileLock:
    """Serialise store/experiment creation across processes (sqlite set-up is not race-safe)."""
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".sweeplab.lock"))


def prepare_store(uri: str, root: str, experiment: str) -> str:
    """Check the store, create it and the experiment if needed (once, under a lock); its id."""
    from mlflow.exceptions import MlflowException

    check_store(uri, root)
    local = is_local(uri)
    root_path = Path(abspath(root))
    with store_lock(root_path) if local else contextlib.nullcontext():
        db = sqlite_file(uri)
        if db is not None:  # sqlite makes the file, not its folder
            db.parent.mkdir(parents=True, exist_ok=True)
        client = tracking.client(uri)
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


# --- runs left RUNNING by a dead process ------------------------------------------------------


def mark_stale_runs(uri: str, experiment_id: str, config_hash: str) -> list[str]:
    """End as KILLED the RUNNING runs of this config whose process (on this host) is gone."""
    client = tracking.client(uri)
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
