"""The MLflow UI lists a sweep's runs with their metrics, checked in a real headless Chromium.

A 2-job sweep logs into a local sqlite store, `mlflow ui` serves it, and Chromium (Debian's
`chromium` package; `.ci/run` installs it) renders the experiment's runs page. The check reads
the DOM after the page has loaded; the screenshot is written too. Refresh docs/mlflow_ui.png with:

    SWEEPLAB_UI_SCREENSHOT=docs/mlflow_ui.png SWEEPLAB_DATA_DIR=../shared/data \\
        pytest tests/test_ui.py
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from servers import mlflow_server_running

from conftest import TRAIN_SCRIPT

SWEEP = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset=synthetic",
         "dataset.num_train=320", "dataset.num_test=100", "trainer.epochs=3",
         "trainer.batch_size=32", "trainer.device=cpu", "trainer.num_threads=1",
         "optimizer=sgd,adam", "tracking.experiment=ui-sweep"]  # fmt: skip
# Root may not use Chromium's sandbox; the rest keeps it from phoning home on a closed network
# (it stalls otherwise) and from touching any real profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1920,600"]  # fmt: skip
# Virtual time only advances while no request is pending, so the page gets this much idle
# time after its last fetch however slow the server is: the runs table is rendered by then.
VIRTUAL_TIME_MS = 30000
SHARE_KEY = "sweeplab"
COLUMNS = ["best_val_acc", "test_acc", "val_acc", "train_loss"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium not found; install: sudo apt-get install -y chromium (or .ci/run)")
    return found


def browse(url: str, *args: str) -> str:
    """Load `url` in a fresh headless Chromium profile; its stdout (the DOM for --dump-dom)."""
    with tempfile.TemporaryDirectory(prefix="sweeplab-chromium-") as profile:
        proc = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--virtual-time-budget={VIRTUAL_TIME_MS}", *args, url],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def visible_text(dom: str) -> list[str]:
    """The text pieces of the rendered page (one per element), without scripts and styles."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S | re.I)
    return [html.unescape(t).strip() for t in re.split(r"<[^>]*>", dom) if t.strip()]


def js_number(value: float) -> str:
    """How the UI prints a metric (JavaScript's Number#toString) for values like accuracies."""
    return str(int(value)) if value.is_integer() else repr(value)


def share_view(client, experiment_id: str) -> None:
    """Save a view of the runs table (the UI's own "Share" feature: an experiment tag read via
    ?viewStateShareKey=): the sweep's jobs, best first, with metric and optimizer columns.
    A fresh browser profile shows no metric columns, and the jobs folded under the sweep's
    parent run."""
    state = {
        "searchFilter": "attributes.run_name LIKE 'optimizer=%'",
        "orderByKey": "metrics.`best_val_acc`",
        "orderByAsc": False,
        "selectedColumns": [f"metrics.`{m}`" for m in COLUMNS]
        + ["params.`optimizer._target_`", "params.`optimizer.lr`"],
    }
    client.set_experiment_tag(
        experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(state)
    )


def run_sweep(cwd: Path, store: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *SWEEP, f"tracking.root={store}",
         f"hydra.sweep.dir={cwd / 'multirun'}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_mlflow_ui_lists_the_sweeps_runs_with_metrics(tmp_path):
    from mlflow import MlflowClient

    chromium()  # fail before the sweep if there is no browser
    store = tmp_path / "mlruns"
    run_sweep(tmp_path, store)
    backend = f"sqlite:///{store}/mlflow.db"
    with mlflow_server_running(backend, tmp_path / "ui", command="ui") as server:
        client = MlflowClient(tracking_uri=server.url)
        exp = client.get_experiment_by_name("ui-sweep")
        jobs = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'optimizer=%'")
        assert sorted(r.info.run_name for r in jobs) == ["optimizer=adam", "optimizer=sgd"]
        share_view(client, exp.experiment_id)
        url = f"{server.url}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey={SHARE_KEY}"

        text = visible_text(browse(url, "--dump-dom"))
        assert text[text.index("matching runs") - 1] == "2", text  # the footer: 2 matching runs
        assert set(COLUMNS) <= set(text), text  # the metric column headers
        for run in jobs:  # each run's name and its metric values, as cells of the table
            assert run.info.run_name in text, text
            for metric in ("best_val_acc", "test_acc"):
                assert js_number(run.data.metrics[metric]) in text, (metric, text)

        shot = tmp_path / "mlflow_ui.png"
        browse(url, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("SWEEPLAB_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SWEEPLAB_UI_SCREENSHOT"])
