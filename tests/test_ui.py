"""What a user sees in the MLflow UI after a sweep, clicked through in a real headless Chromium.

A 2-job sweep logs into a local sqlite store and `mlflow ui` serves it. Playwright drives
Debian's `chromium` (`.ci/run` installs it) from the experiment's plain URL, with a fresh
profile and no view settings, and does what README's "first five minutes" tells a user to do:

1. the plain URL opens MLflow 3's GenAI page (MLflow 3.17 ignores the experiment's
   `mlflow.experimentKind` tag and follows the "GenAI / Model training" switch, stored per
   browser), so: click "Model training" (and "Got it" on the GenAI tip if it pops up first);
2. "Columns": tick best_val_acc and test_acc (a fresh browser shows no metric columns);
3. expand the sweep's row (its jobs are nested under it); close the Assistant panel.

Then the jobs' names and their best_val_acc / test_acc values must be in view, and their
Dataset (the training split, by name and digest) and Models (the logged model) cells filled.
Clicking a job's model opens its page in a new tab: it must list the final metrics linked to
the model, each with the dataset it was computed on. Refresh README's screenshot with:

    SWEEPLAB_UI_SCREENSHOT=docs/mlflow_ui.png SWEEPLAB_DATA_DIR=../shared/data \\
        pytest tests/test_ui.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.config import TRAIN_SCRIPT
from helpers.servers import missing_service, mlflow_server_running

SWEEP = [
    "-m",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "dataset=synthetic",
    "dataset.num_train=320",
    "dataset.num_test=100",
    "trainer.epochs=3",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "trainer.num_threads=1",
    "optimizer=sgd,adam",
    "tracking.experiment=ui-sweep",
]
# Root may not use Chromium's sandbox; the rest keeps it from phoning home on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
METRICS = ["best_val_acc", "test_acc"]
TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1600, "height": 640}


def in_view(locator) -> None:
    """The element is rendered and inside the window, not only somewhere in the DOM."""
    locator.wait_for()
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["y"] >= 0
    assert box["x"] + box["width"] <= VIEWPORT["width"], box
    assert box["y"] + box["height"] <= VIEWPORT["height"], box


def js_number(value: float) -> str:
    """How the UI prints a metric (JavaScript's Number#toString) for values like accuracies."""
    return str(int(value)) if value.is_integer() else repr(value)


def row_of(page, run):
    """A run's row in the runs table. The grid draws a row in two parts (pinned name,
    scrolling cells) with the same aria-rowindex."""
    link = page.get_by_role("link", name=run.info.run_name, exact=True)
    index = page.get_by_role("row").filter(has=link).get_attribute("aria-rowindex")
    return page.locator(f'[role=row][aria-rowindex="{index}"]')


def digest_of(run, context: str) -> str:
    """The digest of the run's train / val / test dataset input."""
    return next(d.dataset.digest for d in run.inputs.dataset_inputs if d.tags[0].value == context)


def run_sweep(cwd: Path, store: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            *SWEEP,
            f"tracking.root={store}",
            f"hydra.sweep.dir={cwd / 'multirun'}",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_a_user_finds_the_sweeps_runs_and_metrics_from_the_plain_experiment_url(tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:  # before the sweep: no browser, nothing to look with
        missing_service("chromium", "sudo apt-get install -y chromium (or run bash .ci/run)")
    store = tmp_path / "mlruns"
    run_sweep(tmp_path, store)
    with mlflow_server_running(f"sqlite:///{store}/mlflow.db", tmp_path / "ui", command="ui") as s:
        client = MlflowClient(tracking_uri=s.url)
        exp = client.get_experiment_by_name("ui-sweep")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        jobs = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'optimizer=%'")
        assert sorted(r.info.run_name for r in jobs) == ["optimizer=adam", "optimizer=sgd"]

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(TIMEOUT_MS)
            # The GenAI page's "Detect Issues" tip covers the page when it pops up: dismiss it.
            page.add_locator_handler(page.get_by_role("button", name="Got it"), lambda b: b.click())
            page.goto(f"{s.url}/#/experiments/{exp.experiment_id}")
            # As a user does, click once the GenAI overview it opens on has drawn: a click that
            # came while the page was still loading left it there (one CI run, under load)
            page.get_by_role("button", name="Detect Issues").wait_for()
            page.get_by_text("Model training", exact=True).click()  # 1.
            page.get_by_text("matching runs").wait_for()
            page.get_by_role("button", name="Columns", exact=True).click()  # 2.
            columns = page.get_by_role("dialog")
            for metric in METRICS:
                columns.get_by_text(metric, exact=True).click()
            page.keyboard.press("Escape")
            sweep_row = page.get_by_role("gridcell").filter(has_text="sweep ").first
            sweep_row.locator("button").first.click()  # 3. expand the sweep
            page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').click()
            for run in jobs:
                in_view(page.get_by_role("link", name=run.info.run_name, exact=True))
                row = row_of(page, run)
                for metric in METRICS:
                    in_view(page.get_by_role("columnheader").filter(has_text=metric).first)
                    in_view(row.get_by_text(js_number(run.data.metrics[metric]), exact=True))
                in_view(row.get_by_text(f"synthetic ({digest_of(run, 'train')})", exact=True))
                in_view(row.get_by_role("link", name="simple_cnn", exact=True))
            shot = tmp_path / "mlflow_ui.png"
            page.screenshot(path=str(shot))

            # a job's model: its page lists the metrics linked to it, with their datasets
            run = jobs[0]
            with page.context.expect_page() as opened:
                row_of(page, run).get_by_role("link", name="simple_cnn", exact=True).click()
            model_page = opened.value
            model_page.set_default_timeout(TIMEOUT_MS)
            model_page.get_by_text("Metrics (8)").wait_for()
            metric = model_page.get_by_role("row").filter(
                has=model_page.get_by_text("test_acc", exact=True)
            )
            in_view(metric.get_by_text(js_number(run.data.metrics["test_acc"]), exact=True))
            in_view(metric.get_by_text(f"synthetic (#{digest_of(run, 'test')}", exact=False))
            model_page.screenshot(path=str(tmp_path / "model_page.png"))
            browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("SWEEPLAB_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SWEEPLAB_UI_SCREENSHOT"])
