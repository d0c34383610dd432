"""What a run says about itself: every tag name sweeplab writes, and the tags a job's run
starts with (`run_tags`, `failed_job_tags`), a sweep's members (`sweep_tags`) and the
environment variables through which a sweep's jobs find their sweep.
"""

from __future__ import annotations

import os
import shlex
import socket
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweeplab.config import identity
from sweeplab.config.identity import override_key, semantic_overrides
from sweeplab.config.redact import env_sourced_keys, redact_flat, redacted_overrides
from sweeplab.config.resolvers import in_multirun, launch_dir
from sweeplab.track import environment
from sweeplab.track.params import git_state, relativize_paths

# Run tags (every name sweeplab writes on an MLflow run; the MLflow UI can show each as a column)
CONFIG_HASH = "sweeplab.config_hash"  # which configuration a run is: skip / resume / group
SWEEP_ID = "sweeplab.sweep_id"  # on a sweep's parent run and the runs it created
SWEPT = "sweeplab.swept"  # parent run: the keys the sweep varies
COMMAND = "sweeplab.command"  # parent run: the launch command, secrets masked
LAUNCHES = "sweeplab.launches"  # parent run: how many times the sweep was launched
BEST_RUN_ID = "sweeplab.best_run_id"  # parent run: the report's best FINISHED run
OBJECTIVES = "sweeplab.objectives"  # parent run of a search: the optimised metric(s)
PARETO_TRIALS = "sweeplab.pareto_trials"  # parent run of a multi-objective search
HOST, PID = "sweeplab.host", "sweeplab.pid"  # the process running the job (or the sweep)
STALE = "sweeplab.stale"  # a RUNNING run whose process was gone, marked KILLED
RESUMED = "sweeplab.resumed"  # a run reopened to continue from its last.pt
OVERRIDES = "sweeplab.overrides"  # the job's overrides, secrets masked
REPRODUCE = "sweeplab.reproduce"  # the command that runs the job again
SOURCE_RUN_ID = "sweeplab.source_run_id"  # a re-run: the run it re-ran
MODEL_ERROR = "sweeplab.model_error"  # the best model could not be logged: why
ROLE_TAG = "sweeplab.role"  # "sweep" on a sweep's parent run; job runs do not carry it
# Jobs find their sweep through the environment, which joblib / submitit workers inherit.
SWEPT_KEYS_ENV = "SWEEPLAB_SWEPT_KEYS"
PARENT_ENV = "SWEEPLAB_PARENT_RUN_ID"
SWEEP_ID_ENV = "SWEEPLAB_SWEEP_ID"


# The same for every seed of one configuration: group by it (report, MLflow UI) to average.
SEEDLESS_TAG = "sweeplab.config_hash_without_seed"
# An Optuna search's job: its trial number, and the epoch a pruned one stopped at (run KILLED).
TRIAL_TAG = "sweeplab.trial"
PRUNED_TAG = "sweeplab.pruned_epoch"
# Overrides the sweeper adds to a trial's job; a re-run of the job must not report to the trial.
TRIAL_KEYS = ("sweep.study", "sweep.trial")


# SLURM: which allocation ran the job (what `squeue` / `scontrol show job` would name), and how
# often SLURM requeued it (preemption, time limit, `scontrol requeue`).
SLURM_ENV_TAGS = {
    "SLURM_JOB_ID": "sweeplab.slurm_job_id",
    "SLURM_ARRAY_JOB_ID": "sweeplab.slurm_array_job_id",
    "SLURM_ARRAY_TASK_ID": "sweeplab.slurm_array_task_id",
    "SLURMD_NODENAME": "sweeplab.slurm_node",
    "SLURM_JOB_PARTITION": "sweeplab.slurm_partition",
    "SLURM_CPUS_PER_TASK": "sweeplab.slurm_cpus_per_task",
    "SLURM_RESTART_COUNT": "sweeplab.slurm_restart_count",
}


def slurm_tags(env=os.environ) -> dict[str, str]:
    """The job's SLURM allocation as tags (none outside SLURM). An array task's job id is
    `<array job id>_<task id>`, as SLURM shows it."""
    tags = {tag: env[var] for var, tag in SLURM_ENV_TAGS.items() if env.get(var)}
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        tags["sweeplab.slurm_job_id"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return tags


def identity_tags(cfg: DictConfig, config_hash: str) -> dict[str, str]:
    """Which configuration a run is: exactly (skip / resume) and up to its seed (averaging)."""
    seedless = identity.config_hash(cfg, ignore=(identity.SEED,))
    return {CONFIG_HASH: config_hash, SEEDLESS_TAG: seedless}


def member_tag(sweep_id: str) -> str:
    """Tag put on every run a sweep counts, including runs it skipped because an earlier
    sweep had FINISHED them (a run has one MLflow parent but may belong to several sweeps)."""
    return f"sweeplab.in_sweep.{sweep_id}"


def process_tags() -> dict[str, str]:
    """Who runs this job: lets a later launch tell a dead RUNNING run from a live one."""
    return {HOST: socket.gethostname(), PID: str(os.getpid())}


def sweep_tags(run_is_new: bool) -> dict[str, str]:
    """Tags that tie a job's run to its sweep (empty outside a sweep)."""
    parent, sid = os.environ.get(PARENT_ENV), os.environ.get(SWEEP_ID_ENV)
    if not parent or not sid:
        return {}
    tags = {member_tag(sid): "true"}
    if run_is_new:  # resumed / skipped runs keep the parent they were created under
        tags.update({"mlflow.parentRunId": parent, SWEEP_ID: sid})
    return tags


def error_tag(error: BaseException) -> dict[str, str]:
    return {"error": f"{type(error).__name__}: {error}"[:500]}


def job_info(cfg: DictConfig) -> tuple[str, dict[str, str]]:
    """The job's run name and the tags that say how to find and reproduce it: overrides
    (secrets masked, interpolations unresolved), Hydra dirs, git state, re-run commands."""
    tags = {**git_state(launch_dir())}
    overrides: list[str] = []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = redacted_overrides(hc.overrides.task)
        tags["hydra.output_dir"] = relativize_paths(hc.runtime.output_dir, launch_dir())
        if in_multirun():
            tags["hydra.sweep_dir"] = relativize_paths(hc.sweep.dir, launch_dir())
            tags["hydra.job_num"] = str(hc.job.num)
    if cfg.tracking.source_run_id:
        tags[SOURCE_RUN_ID] = cfg.tracking.source_run_id
    if cfg.sweep.get("trial") is not None:
        tags.update({TRIAL_TAG: str(cfg.sweep.trial), "optuna.study": str(cfg.sweep.study)})
    tags[OVERRIDES] = " ".join(overrides)
    again = [o for o in overrides if override_key(o) not in TRIAL_KEYS]
    tags[REPRODUCE] = " ".join(["python", "src/train.py", *map(shlex.quote, again)])
    if "hydra.output_dir" in tags:  # the job's saved config, run again as it was
        tags["sweeplab.reproduce_config"] = (
            f"python src/train.py --config-path $PWD/{tags['hydra.output_dir']}/.hydra "
            "--config-name config"
        )
    return run_name(cfg, overrides, in_sweep="hydra.sweep_dir" in tags), tags


def run_name(cfg: DictConfig, overrides: list[str], in_sweep: bool) -> str:
    """`tracking.run_name`, else the overrides that change what the run computes (in a sweep,
    only the swept ones: `optimizer=adam,model=lenet`), else "defaults"."""
    if cfg.tracking.run_name:  # a name may be read from the environment: same secret rule
        flat = redact_flat({"tracking.run_name": cfg.tracking.run_name}, env_sourced_keys(cfg))
        return flat["tracking.run_name"][:250]
    semantic = semantic_overrides(overrides)
    swept = os.environ.get(SWEPT_KEYS_ENV, "").split(",")
    if in_sweep and any(swept):
        semantic = [o for o in semantic if o.split("=", 1)[0] in swept] or semantic
    return (",".join(semantic) or "defaults")[:250]


def run_tags(cfg: DictConfig, *, config_hash: str, device: Any, run_is_new: bool) -> tuple:
    """(run name, every tag a training run starts with)."""
    name, tags = job_info(cfg)
    tags.update(
        {
            **process_tags(),
            **identity_tags(cfg, config_hash),
            "sweeplab.threads": str(torch.get_num_threads()),
            "sweeplab.device": str(device),
            **environment.tags(),
            **slurm_tags(),
            **sweep_tags(run_is_new),
        }
    )
    return name, tags


def failed_job_tags(cfg: DictConfig, error: BaseException, config_hash: str) -> tuple:
    """(run name, tags) of the FAILED run recorded for a sweep job that failed before its run
    existed, so the sweep's report lists it."""
    name, tags = job_info(cfg)
    tags.update({**sweep_tags(run_is_new=True), **identity_tags(cfg, config_hash)})
    return name, {**tags, **error_tag(error)}
