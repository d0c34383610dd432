"""Reading what runs and sweeps left in an MLflow store."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from mlflow import MlflowClient


def store_client(root: Path):
    """An MlflowClient on the sqlite store under `root` (tracking.root)."""
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


def job_runs(client, experiment_id: str, query: str = "") -> list:
    """The runs of jobs in an experiment: a sweep's parent run (tag sweeplab.role) left out."""
    runs = client.search_runs([experiment_id], query)
    return [r for r in runs if r.data.tags.get("sweeplab.role") != "sweep"]


def per_class(client, run_id: str) -> dict[str, list]:
    """A run's per-class test table (logged with log_table) as {column: values}."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "metrics/test_per_class.json", tmp)
        table = json.loads(Path(path).read_text())
    return {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}


def parent_and_children(root: Path, experiment: str = "synthetic"):
    client = store_client(root)
    exp = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sweeplab.role` = 'sweep'")
    children = job_runs(client, exp.experiment_id)
    return client, parent, children


def report_csv(client, parent) -> list[dict]:
    path = client.download_artifacts(parent.info.run_id, "report/report.csv")
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))
