"""The sqlite store file and MLflow's schema in it: recognised (a damaged or foreign file stops
the launch with one line), created whole, upgraded on a copy, never left half-made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sqlite3
from pathlib import Path

import mlflow.db
import mlflow.store.db_migrations
from alembic.script import ScriptDirectory

from sweeplab.config.resolvers import launch_dir
from sweeplab.track import sqlite_db
from sweeplab.track.params import relativize_paths
from sweeplab.track.tracking import TrackingError, resolve_uri

log = logging.getLogger(__name__)


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
