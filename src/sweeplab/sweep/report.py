"""The end of a sweep: its report collected (sweep/leaderboard.py), drawn (sweep/render.py)
and logged to the sweep's parent run under `report/` (also written to the sweep directory),
the best model registered when asked, and the parent run's status.

The same report on demand: `sweeplab-report <experiment name | sweep id>` (sweeplab.cli.report).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from sweeplab.errors import SweeplabError
from sweeplab.sweep import render
from sweeplab.sweep.leaderboard import Row, Sweep, collect
from sweeplab.track import registry, tracking
from sweeplab.track import tags as t
from sweeplab.track.tracking import runs_where

log = logging.getLogger("sweeplab")


class ReportError(SweeplabError):
    """No such sweep or experiment in the tracking store."""


def report_sweep(client, parent, out: Path | None = None) -> Sweep:
    """Collect, print and log the report of the sweep whose parent run is `parent`."""
    sweep = collect(client, parent)
    run_id = parent.info.run_id
    with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as tmp:
        for f in render.write_report(sweep, out or Path(tmp)):
            client.log_artifact(run_id, str(f), "report")
    summary = {
        "jobs": len(sweep.rows),
        "jobs_failed": sum(not r.ok for r in sweep.rows),
        "jobs_pruned": sum(bool(r.pruned_epoch) for r in sweep.rows),
    }
    if sweep.best is not None:
        summary["best_val_acc"] = sweep.best.best_val_acc
        client.set_tag(run_id, t.BEST_RUN_ID, sweep.best.run_id)
    for key, value in summary.items():
        client.log_metric(run_id, key, value)
    print(render.console(sweep), flush=True)
    return sweep


def register(uri: str, sweep: Sweep, name: str):
    """The sweep's best run's model as a new version of `name` (alias @best), announced."""
    version = registry.register_best(uri, sweep.sweep_id, sweep.best, name)
    alias = registry.BEST_ALIAS
    print(f"registered models:/{name}/{version.version}, alias models:/{name}@{alias}")
    return version


def finish_sweep(
    uri: str, parent_id: str, sweep_dir: str | None, register_as: str | None = None
) -> list[Row]:
    """When a sweep's launching process ends: report, register the best model when asked
    (`sweep.register_best`), then the parent run's status."""
    client = tracking.client(uri)
    sweep = report_sweep(client, client.get_run(parent_id), Path(sweep_dir) if sweep_dir else None)
    if register_as:
        try:
            register(uri, sweep, register_as)
        except SweeplabError as e:  # said loudly; the sweep's own results stand
            log.error("sweep.register_best=%s: %s", register_as, e)
    client.set_terminated(parent_id, status=sweep_status(sweep.rows))
    return sweep.rows


def sweep_status(rows: list[Row]) -> str:
    if any(r.status == "FAILED" for r in rows):
        return "FAILED"
    if not rows or not all(r.ok for r in rows):
        return "KILLED"  # interrupted (KILLED / still RUNNING) or nothing ran
    return "FINISHED"


def find_parent(client, target: str):
    """`target` is a sweep id (any experiment) or an experiment name (its latest sweep)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    by_id = runs_where(client, experiments, {t.ROLE_TAG: "sweep", t.SWEEP_ID: target})
    if by_id:
        return by_id[0]
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        raise ReportError(f"{target!r} is neither a sweep id nor an experiment in this store")
    latest = runs_where(client, [experiment.experiment_id], {t.ROLE_TAG: "sweep"}, max_results=1)
    if not latest:
        raise ReportError(f"experiment {target!r} has no sweep (launch one with -m)")
    return latest[0]


def print_error(e: SweeplabError) -> int:
    print(f"sweeplab-report: error: {e}", file=sys.stderr)
    return 2
