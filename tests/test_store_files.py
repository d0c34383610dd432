"""Store files that are never half-made (reliability scenario 16): the MLflow store and the
Optuna study file are created whole, stores left incomplete by someone else are rebuilt when
empty and refused when not, and older stores are upgraded on a copy.

Interruptions come at exact moments: the N-th SQL statement of a creation (SQLAlchemy's event
API), in this process or, through tests/helpers/interrupt_sql, as a real Ctrl-C to a real
`python src/train.py`.
"""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import event

from helpers.config import REPO, TRAIN_SCRIPT
from helpers.runs import store_client
from sweeplab.sweep import study
from sweeplab.track import sqlite_db, store_schema
from sweeplab.track.tracking import TrackingError

HELPERS = REPO / "tests" / "helpers"
TINY = [
    "dataset=synthetic",
    "dataset.num_train=96",
    "dataset.num_test=32",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "tracking.log_model=false",
]


class Statements:
    """Counts SQL statements sent to files whose name contains `name`; at the `at`-th, calls
    `then` (default: raise KeyboardInterrupt, which is what Ctrl-C is in Python)."""

    def __init__(self, name: str, at: int | None = None, then=None):
        self.name, self.at, self.then, self.n = name, at, then, 0

    def __enter__(self):
        event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        if self.name not in str(conn.engine.url):
            return
        self.n += 1
        if self.n == self.at:
            if self.then is None:
                raise KeyboardInterrupt
            self.then()


def state(db: Path) -> str:
    return store_schema.schema_problem(db)[0]


# --- created whole --------------------------------------------------------------------------


def test_16_a_new_store_is_complete_and_nothing_else_is_left(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    with Statements(".creating-") as seen:
        store_schema.ensure_mlflow_schema(db)
    assert seen.n > 100  # it was built under the temporary name, not in place
    assert state(db) == "current" and not store_schema.holds_data(db)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize("at", [1, 100, 500, 1000, 1500])
def test_16_creation_interrupted_at_any_moment_leaves_no_store_then_the_next_succeeds(at, tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    with Statements(".creating-", at), pytest.raises(KeyboardInterrupt):
        store_schema.ensure_mlflow_schema(db)
    assert list(db.parent.iterdir()) == []  # no store, no temporary file, no journal
    store_schema.ensure_mlflow_schema(db)
    assert state(db) == "current"
    client = store_client(db.parent)
    client.create_experiment("after")
    assert client.get_experiment_by_name("after") is not None


def test_16_temporaries_of_a_killed_creation_are_removed_at_the_next_start(tmp_path):
    db = tmp_path / "mlflow.db"
    leftover = tmp_path / f".mlflow.db{sqlite_db.CREATING}4242-abcd"
    leftover.write_bytes(b"SQLite format 3\x00" + bytes(200))  # what SIGKILL leaves
    Path(f"{leftover}-journal").write_bytes(b"x")
    store_schema.ensure_mlflow_schema(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.mark.slow
@pytest.mark.parametrize("at", [300, 1200])
def test_16_ctrl_c_during_the_first_launch_then_a_launch_that_succeeds(at, tmp_path):
    """A real process and a real SIGINT at the `at`-th statement of the store's creation."""
    env = {
        **os.environ,
        "PYTHONPATH": str(HELPERS / "interrupt_sql"),
        "SWEEPLAB_TEST_SIGINT_AT_STATEMENT": str(at),
        "SWEEPLAB_TEST_SQL_FILE": "mlflow.db",
    }
    first = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 130, first.stderr[-3000:]
    mlruns = tmp_path / "mlruns"
    assert not (mlruns / "mlflow.db").exists()
    second = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr and "Callback" not in second.stderr
    client = store_client(mlruns)
    (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    assert run.info.status == "FINISHED"


# --- a second MLflow client at the same time ---------------------------------------------------


OTHER_CLIENT = (
    "import sys; from mlflow import MlflowClient; "
    "MlflowClient(tracking_uri=sys.argv[1]).create_experiment(sys.argv[2])"
)


def other_client(db: Path, experiment: str, **env) -> subprocess.Popen:
    """Another process (as an `mlflow ui` or a notebook would) opening the store at `db`."""
    env = {**os.environ, "PYTHONPATH": str(HELPERS / "interrupt_sql"), **env}
    return subprocess.Popen(
        [sys.executable, "-c", OTHER_CLIENT, f"sqlite:///{db}", experiment],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_16_a_second_client_opening_the_store_while_sweeplab_creates_it(tmp_path):
    """Another process opens mlflow.db half-way through sweeplab's creation: it finds no file
    and makes its own (in place, MLflow's way); sweeplab's finished copy is not linked over
    it, and both end with one complete store."""
    db = tmp_path / "mlflow.db"
    others = []

    def open_it_now():
        others.append(other_client(db, "made-by-the-other-client"))
        assert others[0].wait(120) == 0, others[0].stderr.read()[-2000:]

    with Statements(".creating-", 700, open_it_now):
        store_schema.ensure_mlflow_schema(db)
    assert others and state(db) == "current"
    assert store_client(tmp_path).get_experiment_by_name("made-by-the-other-client")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_16_a_store_another_client_is_creating_in_place_is_waited_for(tmp_path):
    """MLflow's own creation (another process) is in progress when sweeplab looks: it waits
    until the file is still, finds it complete and neither rebuilds nor refuses it."""
    db, mark = tmp_path / "mlflow.db", tmp_path / "halfway"
    other = other_client(
        db,
        "theirs",
        SWEEPLAB_TEST_MARK_AT_STATEMENT="300",
        SWEEPLAB_TEST_MARK=str(mark),
        SWEEPLAB_TEST_SQL_FILE="mlflow.db",
    )
    deadline = time.monotonic() + 120
    while not mark.exists() and other.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists() and state(db) != "current"  # looked at while half-made
    store_schema.ensure_mlflow_schema(db)
    assert other.wait(120) == 0, other.stderr.read()[-2000:]
    assert state(db) == "current"
    assert store_client(tmp_path).get_experiment_by_name("theirs") is not None


# --- stores left incomplete by others: rebuilt when empty, refused when not -------------------


def mlflow_in_place(db: Path, at: int) -> None:
    """MLflow's own creation, in place, stopped at its `at`-th statement: the half-made file
    every launch used to trip over."""
    with Statements(db.name, at), pytest.raises(KeyboardInterrupt):
        store_schema.mlflow_tables(f"sqlite:///{db}")


@pytest.mark.parametrize("at", [50, 600, 1300])
def test_16_an_empty_half_made_store_is_rebuilt_or_finished_with_one_log_line(at, tmp_path, caplog):
    """Where the interrupted creation's migrations can be finished (on a copy) they are;
    otherwise the empty store is made anew. Either way one line says so."""
    caplog.set_level(logging.INFO, logger="sweeplab.track.store_schema")
    db = tmp_path / "mlflow.db"
    mlflow_in_place(db, at)
    assert state(db) != "current"
    store_schema.ensure_mlflow_schema(db)
    assert state(db) == "current"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sweeplab.track.store_schema"]
    assert "held no runs: made it anew" in line or "upgraded to the installed" in line
    store_client(tmp_path).create_experiment("works")


def store_with_a_run(root: Path) -> tuple[Path, str]:
    client = store_client(root)
    run = client.create_run(client.create_experiment("kept"))
    client.log_metric(run.info.run_id, "val_acc", 0.5)
    return root / "mlflow.db", run.info.run_id


@pytest.mark.parametrize("damage", ["alembic_tmp_table", "version_behind_its_tables"])
def test_16_a_half_migrated_store_with_runs_is_refused_and_the_printed_repair_works(
    damage, tmp_path, monkeypatch
):
    db, run_id = store_with_a_run(tmp_path / "mlruns")
    with sqlite3.connect(db) as c:
        if damage == "alembic_tmp_table":  # what an interrupted batch migration leaves
            c.execute("create table _alembic_tmp_latest_metrics as select * from latest_metrics")
        else:  # the migrations ran, the version stamp did not (an interrupted upgrade)
            c.execute("update alembic_version set version_num = 'cbc13b556ace'")
    content = db.read_bytes()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingError) as e:
        store_schema.ensure_mlflow_schema(db)
    message = str(e.value)
    assert "holds runs, so sweeplab leaves it untouched" in message and "\n" not in message
    assert db.read_bytes() == content
    repair = message.split("`")[1]
    assert repair == "mv mlruns/mlflow.db mlruns/mlflow.db.broken"
    subprocess.run(shlex.split(repair), cwd=tmp_path, check=True)
    store_schema.ensure_mlflow_schema(db)
    assert state(db) == "current"
    # the new store is empty; the file moved aside keeps the run's rows
    assert sqlite_db.scalar(db, "select count(*) from runs") == 0
    moved = Path(f"{db}.broken")
    assert sqlite_db.scalar(moved, f"select count(*) from runs where run_uuid = '{run_id}'") == 1


def test_16_a_store_of_a_newer_mlflow_is_refused(tmp_path):
    db, _ = store_with_a_run(tmp_path)
    with sqlite3.connect(db) as c:
        c.execute("update alembic_version set version_num = 'ffffffffffff'")
    with pytest.raises(TrackingError, match=r"unknown to the installed MLflow.*pip install -U"):
        store_schema.ensure_mlflow_schema(db)


def older_store(db: Path, revision: str) -> None:
    """A store as an older MLflow left it: MLflow's initial tables, migrated up to `revision`
    (alembic's public API over MLflow's migration scripts), with one experiment in it."""
    import mlflow.store.db_migrations
    from alembic import command
    from alembic.config import Config
    from mlflow.store.tracking.dbmodels.initial_models import Base

    url = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    config = Config()
    config.set_main_option("script_location", os.path.dirname(mlflow.store.db_migrations.__file__))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, revision)
    with sqlite3.connect(db) as c:
        c.execute(
            "insert into experiments (name, artifact_location, lifecycle_stage) "
            "values ('from-an-older-mlflow', 'file:///nowhere', 'active')"
        )


@pytest.mark.slow
def test_16_an_older_store_is_upgraded_on_a_copy_and_keeps_its_experiments(tmp_path):
    db = tmp_path / "mlflow.db"
    older_store(db, "cbc13b556ace")
    assert state(db) == "older"
    inode = db.stat().st_ino
    store_schema.ensure_mlflow_schema(db)
    assert state(db) == "current" and db.stat().st_ino != inode  # a new file, moved in place
    assert store_client(tmp_path).get_experiment_by_name("from-an-older-mlflow") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.mark.slow
def test_16_an_interrupted_upgrade_leaves_the_older_store_as_it_was(tmp_path):
    db = tmp_path / "mlflow.db"
    older_store(db, "cbc13b556ace")
    content = db.read_bytes()
    with Statements(".creating-", 400), pytest.raises(KeyboardInterrupt):
        store_schema.ensure_mlflow_schema(db)
    assert db.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == [
        "mlflow.db"
    ]
    store_schema.ensure_mlflow_schema(db)
    assert state(db) == "current"


# --- the Optuna study file ---------------------------------------------------------------------


@pytest.mark.parametrize("at", [1, 10, 30, 45])
def test_16_study_file_creation_interrupted_leaves_none_then_opens(at, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with Statements(".creating-", at), pytest.raises(KeyboardInterrupt):
        study.open_storage(url)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".optuna.db.lock"]
    made = optuna.create_study(storage=study.open_storage(url), study_name="s")
    made.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(made.trials) == 2


def test_16_study_file_opened_by_another_process_during_its_creation(tmp_path):
    import optuna

    path = tmp_path / "optuna.db"

    def other():
        code = "import optuna, sys; optuna.create_study(storage=sys.argv[1], study_name='theirs')"
        subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True)

    with Statements(".creating-", 20, other):
        storage = study.open_storage(f"sqlite:///{path}")
    assert optuna.get_all_study_names(storage) == ["theirs"]
