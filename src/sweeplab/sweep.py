"""Re-runnable sweeps: what a job of a re-launched sweep should do with its configuration.

Each run carries a `sweeplab.config_hash` tag (resume.config_hash). When a sweep is launched
again, every job looks up the runs of its own configuration in the experiment:

- a FINISHED run  -> skip: return that run's metrics (unless sweep.rerun_finished=true);
- a KILLED / FAILED / dead-RUNNING run with a checkpoints/last.pt -> resume it, same MLflow run;
- otherwise (nothing yet, or failed before its first epoch ended) -> run from scratch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sweeplab import tracking

log = logging.getLogger("sweeplab")


@dataclass
class Plan:
    action: str  # "run" | "skip" | "resume"
    run_id: str | None = None
    metrics: dict | None = None

    def describe(self) -> str:
        return self.action if self.run_id is None else f"{self.action} {self.run_id}"


def plan_job(uri: str, experiment_id: str, config_hash: str, rerun_finished: bool) -> Plan:
    tracking.mark_stale_runs(uri, experiment_id, config_hash)
    client = tracking._client(uri)
    runs = client.search_runs(
        [experiment_id],
        f"tags.`sweeplab.config_hash` = '{config_hash}'",
        order_by=["attributes.start_time DESC"],
    )
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished and not rerun_finished:
        return Plan("skip", finished[0].info.run_id, dict(finished[0].data.metrics))
    for run in runs:
        if run.info.status in ("KILLED", "FAILED") and _has_last_checkpoint(client, run):
            return Plan("resume", run.info.run_id)
    return Plan("run")


def _has_last_checkpoint(client, run) -> bool:
    try:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    except Exception:  # an unreadable artifact store: treat as no checkpoint, run again
        return False
    return "checkpoints/last.pt" in names
