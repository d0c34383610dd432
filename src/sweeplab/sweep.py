"""Sweeps: the Hydra callback that prepares a sweep, and what a job of a re-launched sweep does.

Each run carries a `sweeplab.config_hash` tag (resume.config_hash). When a sweep is launched
again, every job looks up the runs of its own configuration in the experiment:

- a FINISHED run  -> skip: return that run's metrics (unless sweep.rerun_finished=true);
- a KILLED / FAILED / dead-RUNNING run with a checkpoints/last.pt -> resume it, same MLflow run;
- otherwise (nothing yet, or failed before its first epoch ended) -> run from scratch.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab import tracking
from sweeplab.errors import SweeplabError
from sweeplab.schema import abspath

log = logging.getLogger("sweeplab")


@dataclass
class Plan:
    action: str  # "run" | "skip" | "resume"
    run_id: str | None = None
    metrics: dict | None = None

    def describe(self) -> str:
        return self.action if self.run_id is None else f"{self.action} {self.run_id}"


def plan_job(uri: str, experiment_id: str, config_hash: str, rerun_finished: bool) -> Plan:
    for stale in tracking.mark_stale_runs(uri, experiment_id, config_hash):
        log.warning("run %s of this config was left RUNNING by a dead process: KILLED", stale)
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


# --- Hydra callback: once per run or sweep, in the launching process ----------------------


class PrepareStoreCallback(Callback):
    """Hydra callback: set up store and experiment once, before any job of a run or sweep.

    The config is validated first, so bad input ends with one message and creates nothing.
    """

    def _prepare(self, config: DictConfig, output_dir: str) -> None:
        from sweeplab.schema import validate

        try:
            validate(config)
            tracking.ensure_writable(abspath(output_dir), "hydra output dir")
            t = config.tracking
            tracking.prepare_store(t.uri, t.root, t.experiment)
        except SweeplabError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config, config.hydra.sweep.dir)
        self.jobs: list[tuple[str, str, str]] = []
        # Jobs name their runs after the swept keys only; workers inherit the environment.
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(list(config.hydra.overrides.task)))
        import atexit

        atexit.register(self._summary)  # runs even when Hydra exits 1 after a failed job

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if hasattr(self, "jobs"):
            status = job_return.status.name
            error = ""
            if status == "FAILED":
                e = job_return._return_value
                error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            self.jobs.append((" ".join(job_return.overrides), status, error))

    def _summary(self) -> None:
        failed = [j for j in self.jobs if j[1] != "COMPLETED"]
        if not failed:
            return
        lines = [f"sweep summary: {len(failed)} of {len(self.jobs)} jobs failed"]
        lines += [f"  FAILED  {overrides}  ->  {error}" for overrides, _, error in failed]
        print("\n".join(lines), file=sys.stderr)


SWEPT_KEYS_ENV = "SWEEPLAB_SWEPT_KEYS"


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys a sweep varies (`optimizer=sgd,adam`, `lr=range(...)`), from its overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]
