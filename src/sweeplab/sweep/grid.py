"""The grid sweeper's side (hydra_plugins/sweeplab_sweepers/basic_sweeper.py): what it adds to
Hydra's own grid sweep."""

from __future__ import annotations

from omegaconf import DictConfig

from sweeplab.sweep.placement import choose_joblib_jobs, cpu_cores
from sweeplab.sweep.seeds import seeds_override


def prepare(config: DictConfig) -> None:
    """Before the launcher reads its n_jobs: one job at a time where parallel would be slower."""
    choose_joblib_jobs(config, cpu_cores())


def seed_arguments(config: DictConfig) -> list[str]:
    """`trainer.seed=s,s+1,...` for sweep.seeds=N > 1 (sweeplab's callback has already refused
    sweep.seeds > 1 with a swept trainer.seed)."""
    return seeds_override(int(config.trainer.seed), int(config.sweep.get("seeds", 1)))
