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
import shlex
import socket
import sqlite3
import tempfile
from pathlib import Path

import mlflow.db
import mlflow.store.db_migrations
import requests
from alembic.script import ScriptDirectory
from filelock import FileLock
from mlflow.exceptions import MlflowException

from sweeplab.config.redact import redact_uri
from sweeplab.config.schema import abspath, launch_dir
from sweeplab.track import sqlite_db, tracking
from sweeplab.track.params import relativize_paths
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


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store (absolute, from the launch dir), else None."""
    return sqlite_db.sqlite_path(resolve_uri(uri))


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


# --- the store file's schema: created whole, upgraded on a copy, never half-made ---------------

# Rows a store has before anyone logs anything: MLflow's Default experiment (id 0) and default
# workspace, and the schema version. A store with nothing else loses nothing when rebuilt.
EMPTY_STORE_ROWS = {
    "alembic_version": None,
    "sqlite_sequence": None,
    "experiments": "select count(*) from experiments where experiment_id != 0",
    "workspaces": "select count(*) from workspaces where name != 'default'",
}


def mlflow_head() -> tuple[str, set[str]]:
    """The installed MLflow's schema revision (alembic head) and every revision it knows."""

    scripts = ScriptDirectory(os.path.dirname(mlflow.store.db_migrations.__file__))
    return scripts.get_current_head(), {r.revision for r in scripts.walk_revisions()}


def mlflow_tables(url: str) -> None:
    """MLflow's tables at the installed version in the database at `url`: all of them on an
    empty database, the missing migrations on an older one (what `mlflow db upgrade` does)."""

    mlflow.db.upgrade.callback(url)


def schema_problem(db: Path) -> tuple[str, str | None]:
    """('current' | 'older' | 'newer' | 'incomplete', what is wrong) of an existing store file,
    read without writing to it."""
    found = sqlite_db.tables(db)
    head, known = mlflow_head()
    version = (
        sqlite_db.scalar(db, "select version_num from alembic_version")
        if ("alembic_version" in found)
        else None
    )
    leftovers = sorted(t for t in found if t.startswith("_alembic_tmp_"))
    if leftovers:
        return "incomplete", f"leftover tables of an interrupted migration: {', '.join(leftovers)}"
    if version is None:
        return "incomplete", "no MLflow schema version (its creation was interrupted)"
    if version == head:
        return "current", None
    if version not in known:
        return "newer", f"schema version {version}, unknown to the installed MLflow"
    return "older", f"schema version {version}, the installed MLflow's is {head}"


def holds_data(db: Path) -> bool:
    """Whether anything beyond an empty store's own rows is in the file (any run, experiment,
    model, trace, or a half-copied table of one)."""
    for table, has_rows in sqlite_db.tables(db).items():
        if has_rows and table not in EMPTY_STORE_ROWS:
            return True
        query = EMPTY_STORE_ROWS.get(table)
        if has_rows and query and sqlite_db.scalar(db, query):
            return True
    return False


def ensure_mlflow_schema(db: Path) -> None:
    """Under the store lock: the store file exists at the installed MLflow's schema, or the
    launch stops with one line. Only a store with nothing in it is ever rebuilt."""
    db.parent.mkdir(parents=True, exist_ok=True)  # sqlite makes the file, not its folder
    if stale := sqlite_db.remove_temporaries(db):
        log.info("removed %d temporary file(s) of an interrupted store creation", stale)
    state, problem = "incomplete", "another process kept replacing it while it was checked"
    for _ in range(3):  # a second process may create or change the file between two looks
        if not db.exists() or db.stat().st_size == 0:
            if db.exists():  # an empty file: sqlite may be about to write its first page
                sqlite_db.wait_until_still(db)
            if sqlite_db.create_whole(db, mlflow_tables, replace=db.exists()):
                return
            continue  # another process made it meanwhile: look at theirs
        state, problem = schema_problem(db)
        if state == "current":
            return
        if state == "newer":
            break
        # Another MLflow client (`mlflow ui`, a notebook) may be creating or upgrading it this
        # moment, in place: wait until the file is still, then look again.
        sqlite_db.wait_until_still(db)
        state, problem = schema_problem(db)
        if state == "current":
            return
        if state == "older":
            try:  # the upgrade runs on a copy: an interruption leaves the original as it was
                sqlite_db.create_whole(db, lambda url: _upgraded_copy(db, url), replace=True)
                log.info("store %s upgraded to the installed MLflow's schema", db)
                return
            except Exception as e:  # what a half-made schema does to a migration
                problem = f"{problem}; its upgrade fails: {str(e).splitlines()[0][:200]}"
        if state != "newer" and not holds_data(db):
            sqlite_db.create_whole(db, mlflow_tables, replace=True)
            log.warning(
                "the store file %s had an incomplete schema (%s) and held no runs: made it anew",
                db,
                problem,
            )
            return
        break
    shown = relativize_paths(str(db), launch_dir())
    if state == "newer":
        raise TrackingError(
            f"tracking.uri: the store file {shown} was made by a newer MLflow ({problem}); "
            "sweeplab leaves it untouched: upgrade MLflow (pip install -U mlflow) to use it, "
            "or point tracking.root / tracking.uri at another store"
        )
    quoted = shlex.quote(shown)
    raise TrackingError(
        f"tracking.uri: the store file {shown} is not usable ({problem}); it holds runs, so "
        "sweeplab leaves it untouched: restore it from a backup, or move it aside and start a "
        f"new store: `mv {quoted} {shlex.quote(shown + '.broken')}`"
    )


def _upgraded_copy(db: Path, url: str) -> None:
    sqlite_db.copy_into(db, url)
    mlflow_tables(url)
    state, problem = schema_problem(sqlite_db.sqlite_path(url))
    if state != "current":
        raise TrackingError(problem or state)


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
    query = f"tags.`sweeplab.config_hash` = '{config_hash}' and attributes.status = 'RUNNING'"
    stale = []
    for run in client.search_runs([experiment_id], query):
        tags = run.data.tags
        if tags.get("sweeplab.host") != socket.gethostname() or process_alive(
            tags.get("sweeplab.pid")
        ):
            continue
        client.set_tag(run.info.run_id, "sweeplab.stale", "process gone; marked KILLED")
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
