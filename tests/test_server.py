"""`tracking=server`: a 2-job parallel sweep into a real MLflow server on PostgreSQL.

The server (and its PostgreSQL cluster) is started once for the module on 127.0.0.1 with the
helpers in helpers/servers.py; each test logs into its own experiment. The URI reaches sweeplab
once as a `tracking.uri=` override and once through `MLFLOW_TRACKING_URI`, the two documented
ways.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers.config import TRAIN_SCRIPT
from helpers.servers import (
    REQUIRE_SERVICES_ENV,
    MlflowServer,
    Postgres,
    missing_service,
    mlflow_server_running,
    postgres_running,
)

EPOCHS = 2
SWEEP = [
    "-m",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "tracking=server",
    "dataset=synthetic",
    "dataset.num_train=320",
    "dataset.num_test=100",
    f"trainer.epochs={EPOCHS}",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "trainer.num_threads=1",
    "optimizer=sgd,adam",
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """One fresh PostgreSQL cluster for the module (each test has its own experiment)."""
    with postgres_running() as pg:
        yield pg


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """An MLflow server on that PostgreSQL, serving artifacts from a temp dir of its own."""
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_running(postgres.uri, workdir, artifacts=workdir / "artifacts") as server:
        yield server


def run_sweep(cwd: Path, args: list[str], tracking_uri_env: str | None) -> None:
    # The variable is removed unless the test sets it: an outer MLFLOW_TRACKING_URI must not
    # decide which way the URI arrived.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking_uri_env is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri_env
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *SWEEP, f"hydra.sweep.dir={cwd / 'multirun'}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("uri_from", ["override", "env"])
def test_parallel_sweep_logs_into_server_on_postgres(uri_from, mlflow_server, postgres, tmp_path):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    experiment = f"server-{uri_from}-{uuid.uuid4().hex[:6]}"
    args = [f"tracking.experiment={experiment}"]
    if uri_from == "override":
        args.append(f"tracking.uri={mlflow_server.url}")
    run_sweep(tmp_path, args, mlflow_server.url if uri_from == "env" else None)

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    # Artifacts go through the server (proxied), not to a path only this machine can see.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    # The sweep's own parent run (tag sweeplab.role=sweep) is not a job.
    runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("sweeplab.role") != "sweep"
    ]
    assert sorted(r.info.run_name for r in runs) == ["optimizer=adam", "optimizer=sgd"]
    # A value read from the environment is logged masked (README): so the URI came that way.
    logged_uri = mlflow_server.url if uri_from == "override" else "***"
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["tracking.uri"] == logged_uri
        assert {"best_val_acc", "test_acc"} <= run.data.metrics.keys()
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))

        best = download_artifacts(
            run_id=run.info.run_id,
            artifact_path="checkpoints/best.pt",
            dst_path=str(tmp_path / run.info.run_id),
            tracking_uri=mlflow_server.url,
        )
        checkpoint = torch.load(best, weights_only=True)
        assert checkpoint["val_acc"] == pytest.approx(run.data.metrics["best_val_acc"])
        assert checkpoint["model"]  # a non-empty state_dict
        # the logged model went through the server too, and the resume state is gone from it
        (output,) = run.outputs.model_outputs
        assert client.get_logged_model(output.model_id).status == "READY"
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
            "checkpoints/best.pt"
        ]
        assert len(run.inputs.dataset_inputs) == 3

    # The runs really are rows in PostgreSQL, with one val_acc row per epoch in `metrics`.
    ids = {r.info.run_id for r in runs}
    rows = postgres.query(
        "SELECT run_uuid, status FROM runs WHERE run_uuid = ANY(%s)", (list(ids),)
    )
    assert dict(rows) == dict.fromkeys(ids, "FINISHED")
    for run_id in ids:
        (count,) = postgres.query(
            "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val_acc'", (run_id,)
        )[0]
        assert count == EPOCHS
    # ... and the checkpoints are files in the server's artifact directory.
    stored = {p.parent.parent.parent.name for p in mlflow_server.artifacts.rglob("best.pt")}
    assert ids <= stored

    # Nothing fell back to a local store in the launch directory.
    assert list(tmp_path.rglob("*.db")) == []
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_an_optuna_search_keeps_its_study_in_postgres(mlflow_server, postgres, tmp_path):
    """tracking=server: the study goes to the database in $SWEEPLAB_STUDY_STORAGE, a database of
    its own beside MLflow's (both keep an alembic_version table); jobs in joblib workers report
    their epochs to it."""
    import optuna
    import psycopg2

    conn = psycopg2.connect(postgres.dsn)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("CREATE DATABASE studies")
    storage = postgres.uri.rsplit("/", 1)[0] + "/studies"
    experiment = f"server-optuna-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["SWEEPLAB_STUDY_STORAGE"] = storage
    args = [
        *SWEEP[:-1],
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        f"tracking.uri={mlflow_server.url}",
        f"tracking.experiment={experiment}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # from the jobs
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sweeplab.role` = 'sweep'")
    assert parent.data.tags["optuna.study"] == summary.study_name
    assert parent.data.tags["optuna.storage"] == storage  # no password here to mask
    assert not (tmp_path / "mlruns").exists()  # nothing fell back to a local store


class _AuthWall(http.server.BaseHTTPRequestHandler):
    """What an MLflow server with basic auth answers a client without credentials: /health is
    open, every API call is 401."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/health"):
            self._reply(200, b"OK")
        else:
            self._reply(401, b'{"error_code": "UNAUTHENTICATED", "message": "not authenticated"}')

    do_POST = do_GET

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


def test_a_server_that_refuses_requests_fails_before_any_job(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthWall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = subprocess.run(
            [sys.executable, str(TRAIN_SCRIPT), *SWEEP, f"tracking.uri={uri}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refused the request" in proc.stderr and "MLFLOW_TRACKING_USERNAME" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs" / "multiruns").exists() or not any(
        (tmp_path / "outputs" / "multiruns").rglob("*.pt")
    )  # no job trained


@pytest.mark.parametrize(("required", "outcome"), [(None, "skip"), ("1", "fail")])
def test_a_missing_service_skips_on_a_newcomers_machine_and_fails_in_ci(
    required, outcome, monkeypatch
):
    if required is None:
        monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_SERVICES_ENV, required)
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected, match="postgresql.*not found; install: apt-get install -y pg"):
        missing_service("postgresql", "apt-get install -y pg")
