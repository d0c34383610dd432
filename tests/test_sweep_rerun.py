"""Re-launching a sweep: FINISHED configs are skipped, an interrupted one resumes, the rest run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.config import TRAIN_SCRIPT
from helpers.processes import SLOW, reference_and_killed
from helpers.runs import job_runs, store_client

SWEEP = ["-m", *SLOW, "trainer.epochs=3", "dataset.num_train=600", "trainer.seed=1,2,3,4"]


def finals(root):
    client = store_client(root)
    exp = client.get_experiment_by_name("synthetic")
    runs = job_runs(client, exp.experiment_id)
    return client, {r.data.params["trainer.seed"]: r for r in runs}


@pytest.mark.slow
def test_relaunched_sweep_skips_resumes_and_runs(tmp_path):
    # killed once job 3 of 4 has started ("#2 : ") and checkpointed two epochs
    reference, ref_dir, cut_dir = reference_and_killed(SWEEP, tmp_path, "#2 : ", "epoch 2/3")
    assert reference.communicate(timeout=900)[0] and reference.returncode == 0

    def relaunch(*extra):
        return subprocess.run(
            [sys.executable, str(TRAIN_SCRIPT), *SWEEP, *extra],
            cwd=cut_dir,
            capture_output=True,
            text=True,
            timeout=900,
        )

    dry = relaunch("sweep.dry_run=true")
    assert dry.returncode == 0, dry.stderr[-3000:]
    plans = [line.split("would ")[1] for line in dry.stdout.splitlines() if "would " in line]
    assert [p.split()[0] for p in plans] == ["skip", "skip", "resume", "run"]

    again = relaunch()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped: run") == 2
    assert again.stdout.count("resuming interrupted run") == 1

    _, ref_runs = finals(ref_dir / "mlruns")
    client, cut_runs = finals(cut_dir / "mlruns")
    assert len(cut_runs) == 4  # the interrupted job continued in its own run: no extra runs
    assert {r.info.status for r in cut_runs.values()} == {"FINISHED"}
    assert cut_runs["3"].data.tags.get("sweeplab.resumed") == "true"
    ref_client = store_client(ref_dir / "mlruns")
    for seed, ref in ref_runs.items():
        cut = cut_runs[seed]
        assert cut.data.metrics["test_acc"] == ref.data.metrics["test_acc"], seed
        a = [(m.step, m.value) for m in ref_client.get_metric_history(ref.info.run_id, "val_loss")]
        b = [(m.step, m.value) for m in client.get_metric_history(cut.info.run_id, "val_loss")]
        assert sorted(a) == sorted(b), seed

    # The relaunch continued the sweep's parent run (same command, same sweep id), and its
    # report covers all four configurations: skipped, resumed and new alike.
    exp = client.get_experiment_by_name("synthetic")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sweeplab.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweeplab.launches"] == "2"  # the dry run opened no parent
    report = Path(client.download_artifacts(parent.info.run_id, "report/report.csv"))
    rows = list(csv.DictReader(report.open()))
    assert sorted(r["trainer.seed"] for r in rows) == ["1", "2", "3", "4"]
    assert {r["status"] for r in rows} == {"FINISHED"}
