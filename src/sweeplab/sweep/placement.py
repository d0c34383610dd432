"""Where a sweep's jobs run: how many share this machine, threads per job, GPU per job, and
a joblib launcher left at its defaults on a small machine."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from sweeplab.config.resolvers import in_multirun

log = logging.getLogger("sweeplab")


@dataclass
class Placement:
    threads: int | None  # torch.set_num_threads; None = leave torch's default
    gpu: int | None  # CUDA index for device auto/cuda; None = the default device
    parallel: int  # jobs of this sweep sharing this machine


def concurrent_jobs(launcher: dict, cores: int, sweeper: dict | None = None) -> int:
    """How many jobs of the sweep run at once on this machine, from the launcher's config (and
    the Optuna sweeper's n_jobs, which keeps that many trials in flight)."""
    if sweeper and "sweeplab_optuna" in str(sweeper.get("_target_", "")):
        return min(int(sweeper.get("n_jobs") or 1), concurrent_jobs(launcher, cores))
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n = int(launcher.get("n_jobs") or -1)
        return max(1, n if n > 0 else cores + 1 + n)  # joblib: -1 = all cores, -2 = all but one
    if target.endswith("LocalLauncher") and launcher.get("cpus_per_task"):
        return max(1, cores // int(launcher["cpus_per_task"]))
    return 1  # basic launcher (one job at a time) or a cluster job with its own allocation


def placement(
    launcher: dict,
    job_num: int,
    cores: int,
    n_gpus: int,
    env=os.environ,
    sweeper: dict | None = None,
) -> Placement:
    """Split this machine between the jobs that share it: cores // k threads each (so k jobs
    do not fight over cores), and job i on GPU i mod n_gpus (k jobs per GPU allowed)."""
    if env.get("SLURM_CPUS_PER_TASK"):  # a SLURM allocation: use what it granted, no more
        return Placement(int(env["SLURM_CPUS_PER_TASK"]), None, 1)
    k = concurrent_jobs(launcher, cores, sweeper)
    if k == 1:
        return Placement(None, None, 1)
    gpu = job_num % n_gpus if n_gpus > 1 else None
    return Placement(max(1, cores // k), gpu, k)


# Below this many cores, two 1-thread jobs train no faster than one job on every core, and each
# joblib worker costs a few seconds to start (docs/benchmarks.md, "Parallel sweep"): a joblib
# sweep left at its default n_jobs then runs its jobs one at a time.
MIN_CORES_FOR_PARALLEL = 3


def choose_joblib_jobs(config: DictConfig, cores: int) -> int | None:
    """For `hydra/launcher=joblib` with n_jobs left at its default (-1: one job per core) and the
    threads left to sweeplab: 1 on a machine with fewer than MIN_CORES_FOR_PARALLEL cores (the
    config is changed so the jobs see it too, and the log says so), else None (leave it)."""
    launcher = config.hydra.launcher
    chosen = [o for o in config.hydra.overrides.hydra if o.startswith("hydra.launcher.n_jobs=")]
    if "joblib" not in str(launcher.get("_target_", "")) or chosen:
        return None
    if cores >= MIN_CORES_FOR_PARALLEL or config.trainer.get("num_threads"):
        return None
    with read_write(config), open_dict(config):
        launcher.n_jobs = 1
        # jobs recompose their config from these overrides (Hydra's load_sweep_config)
        config.hydra.overrides.hydra.append("hydra.launcher.n_jobs=1")
    log.warning(
        "hydra/launcher=joblib on %d cores: one job at a time (each already trains on every "
        "core, and parallel 1-thread jobs measured no faster here); hydra.launcher.n_jobs=2 "
        "trainer.num_threads=1 runs two at a time",
        cores,
    )
    return 1


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def job_placement() -> Placement:
    """`placement` for the running Hydra job (a no-op outside a parallel sweep)."""
    if not in_multirun():
        return Placement(None, None, 1)
    hc = HydraConfig.get()
    cores = cpu_cores()
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return placement(dict(hc.launcher), int(hc.job.num), cores, n_gpus, sweeper=dict(hc.sweeper))
