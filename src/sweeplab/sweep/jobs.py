"""Sweeps: the Hydra callback around a sweep (store, parent run, report), and what a job of a
re-launched sweep does (where each job runs: sweep/placement.py).

Each run carries a `sweeplab.config_hash` tag (identity.config_hash). When a sweep is launched
again, every job looks up the runs of its own configuration in the experiment:

- a FINISHED run  -> skip: return that run's metrics (unless sweep.rerun_finished=true);
- a KILLED / FAILED / dead-RUNNING run with a checkpoints/last.pt -> resume it, same MLflow run;
- otherwise (nothing yet, or failed before its first epoch ended) -> run from scratch.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import sys
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from sweeplab.config.identity import SEED, sweep_id
from sweeplab.config.redact import redact_override, redacted_overrides, typed_overrides
from sweeplab.config.resolvers import abspath, in_multirun
from sweeplab.config.schema import ConfigError
from sweeplab.sweep import report
from sweeplab.sweep.cluster import check_launcher
from sweeplab.sweep.search import OPTUNA_SWEEPER, check_search
from sweeplab.track import store, tracking
from sweeplab.track.params import relativize_paths
from sweeplab.track.tags import (
    COMMAND,
    CONFIG_HASH,
    LAUNCHES,
    PARENT_ENV,
    PRUNED_TAG,
    ROLE_TAG,
    SWEEP_ID,
    SWEEP_ID_ENV,
    SWEPT,
    SWEPT_KEYS_ENV,
    process_tags,
    sweep_tags,
)
from sweeplab.track.tracking import runs_where
from sweeplab.train.data import fetch_dataset_files

log = logging.getLogger("sweeplab")


@dataclass
class Plan:
    action: str  # "run" | "skip" | "resume"
    run_id: str | None = None
    metrics: dict | None = None
    experiment_id: str | None = None  # set when planning already prepared the store
    result: dict | None = None  # the job is done without training: train() returns this

    def describe(self) -> str:
        return self.action if self.run_id is None else f"{self.action} {self.run_id}"


def plan_for(cfg: DictConfig, config_hash: str) -> Plan:
    """What this job does. A sweep job (or a dry run) looks at what the store already holds
    for its config: skip a FINISHED run, resume an interrupted one, else run. A single run,
    or one given `trainer.resume`, just runs."""
    if cfg.trainer.resume or not (in_multirun() or cfg.sweep.dry_run):
        return Plan("run")
    t = cfg.tracking
    experiment_id = store.prepare_store(t.uri, t.root, t.experiment)
    plan = plan_job(t.uri, experiment_id, config_hash, cfg.sweep.rerun_finished)
    plan.experiment_id = experiment_id
    if cfg.sweep.dry_run:
        log.info("dry run: this job would %s", plan.describe())
        plan.result = {
            "planned": plan.action,
            "run_id": plan.run_id,
            "history": [],
            cfg.optimized_metric: float("nan"),
        }
    elif plan.action == "skip":
        tracking.Run(tracking.client(t.uri), plan.run_id).set_tags(sweep_tags(run_is_new=False))
        log.info(
            "skipped: run %s already FINISHED this config (sweep.rerun_finished=true to "
            "train it again)",
            plan.run_id,
        )
        plan.result = {**plan.metrics, "run_id": plan.run_id, "history": [], "skipped": True}
    elif plan.action == "resume":
        log.info("resuming interrupted run %s of this config", plan.run_id)
    return plan


def plan_job(uri: str, experiment_id: str, config_hash: str, rerun_finished: bool) -> Plan:
    for stale in store.mark_stale_runs(uri, experiment_id, config_hash):
        log.warning("run %s of this config was left RUNNING by a dead process: KILLED", stale)
    client = tracking.client(uri)
    runs = runs_where(client, [experiment_id], {CONFIG_HASH: config_hash})
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished and not rerun_finished:
        return Plan("skip", finished[0].info.run_id, dict(finished[0].data.metrics))
    for run in runs:
        if run.data.tags.get(PRUNED_TAG):  # pruned by a search: ended on purpose, not resumed
            continue
        if run.info.status in ("KILLED", "FAILED") and _has_last_checkpoint(client, run):
            return Plan("resume", run.info.run_id)
    return Plan("run")


def _has_last_checkpoint(client, run) -> bool:
    try:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    except Exception:  # an unreadable artifact store: treat as no checkpoint, run again
        return False
    return "checkpoints/last.pt" in names


# --- the parent run of a sweep ------------------------------------------------------------


def open_parent(uri: str, experiment_id: str, sid: str, name: str, tags: dict) -> str:
    """The sweep's parent run: created on first launch, reopened (RUNNING) on a re-launch."""
    client = tracking.client(uri)
    found = runs_where(client, [experiment_id], {SWEEP_ID: sid, ROLE_TAG: "sweep"})
    tags = {**tags, ROLE_TAG: "sweep", SWEEP_ID: sid, **process_tags()}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        launches = int(found[0].data.tags.get(LAUNCHES, "1")) + 1
        tracking.Run(client, run_id).set_tags({**tags, LAUNCHES: str(launches)})
        return run_id
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


# --- a run's or sweep's start and end, in the launching process (sweep/callback.py) ----------


class SweepLifecycle:
    """What sweeplab's Hydra callback does once the config is valid: set up store and
    experiment once, and download the dataset if it is missing, before any job of a run or
    sweep; for a sweep also its parent run, and the report when the sweep ends (even if jobs
    failed). Bad input raises SweeplabError before anything is created."""

    def __init__(self) -> None:
        self.parent_id: str | None = None  # a sweep's parent run, once it exists
        self.finished = False

    def prepare(self, config: DictConfig, output_dir: str, multirun: bool = False) -> str:
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        if multirun:
            check_launcher(config)  # a cluster that cannot be reached: before anything exists
        if multirun and sweeper.endswith(OPTUNA_SWEEPER):
            check_search(config)  # before the parent run: a mistake creates nothing
        store.ensure_writable(abspath(output_dir), "hydra output dir")
        if not config.sweep.dry_run:  # one download, here, not one per job
            fetch_dataset_files(config.dataset)
        t = config.tracking
        return store.prepare_store(t.uri, t.root, t.experiment)

    def on_run_start(self, config: DictConfig) -> None:
        self.prepare(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig) -> None:
        keys = swept_keys(typed_overrides(config.hydra.overrides.task))
        keys += [str(k) for k in (config.hydra.sweeper.get("params") or {}) if str(k) not in keys]
        if config.sweep.seeds > 1:  # the sweeper adds trainer.seed=s,s+1,...: one more swept key
            if SEED in keys:
                raise ConfigError(
                    f"sweep.seeds={config.sweep.seeds} runs every configuration "
                    f"with that many seeds: do not also sweep {SEED}"
                )
            keys.append(SEED)
        experiment_id = self.prepare(config, config.hydra.sweep.dir, multirun=True)
        # Jobs name their runs after the swept keys only; workers inherit the environment.
        os.environ[SWEPT_KEYS_ENV] = ",".join(keys)
        if config.sweep.dry_run:
            return
        sid = sweep_id(config)
        command = " ".join(["python", *(shlex.quote(redact_override(a)) for a in sys.argv)])
        command = relativize_paths(command, abspath("."))
        tags = {
            COMMAND: command,
            SWEPT: ",".join(keys),
            "hydra.sweep_dir": relativize_paths(abspath(config.hydra.sweep.dir), abspath(".")),
            "hydra.sweeper": str(config.hydra.sweeper.get("_target_")).rsplit(".", 1)[-1],
            "hydra.launcher": str(config.hydra.launcher.get("_target_")).rsplit(".", 1)[-1],
        }
        swept = [o for o in redacted_overrides(config.hydra.overrides.task) if "," in o]
        name = "sweep " + (" ".join(swept) or sid)
        self.uri, self.register = config.tracking.uri, config.sweep.register_best
        self.parent_id = open_parent(self.uri, experiment_id, sid, name, tags)
        self.sweep_dir = abspath(config.hydra.sweep.dir)
        os.environ[PARENT_ENV], os.environ[SWEEP_ID_ENV] = self.parent_id, sid
        log.info("sweep %s: parent run %s", sid, self.parent_id)
        # Hydra skips on_multirun_end when a job failed: atexit runs in every case but SIGKILL.
        atexit.register(self.finish)

    def finish(self) -> bool:
        """Report, failed-job summary and parent status; once, whichever comes first (the
        callback's on_multirun_end or atexit). True when jobs failed."""
        if self.finished or self.parent_id is None:
            return False
        self.finished = True
        try:  # jobs that failed before their run existed have a FAILED run (job.train)
            rows = report.finish_sweep(self.uri, self.parent_id, self.sweep_dir, self.register)
        except Exception as e:  # a broken report must never hide the sweep's own outcome
            log.error("sweep report failed: %s: %s", type(e).__name__, e)
            return False
        failed = [(r.overrides, r.status, r.error) for r in rows if not r.ok]
        if failed:
            lines = [f"sweep summary: {len(failed)} of {len(rows)} jobs failed"]
            lines += [f"  {st:8s}  {over}  ->  {err}" for over, st, err in failed]
            print("\n".join(lines), file=sys.stderr)
        return bool(failed)


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys a sweep varies (`optimizer=sgd,adam`, `lr=range(...)`), from its overrides."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]
