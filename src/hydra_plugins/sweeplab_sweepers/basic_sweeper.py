"""Hydra's grid sweeper, plus `sweep.seeds=N`: every configuration of the grid once per seed
(trainer.seed, +1, ..., +N-1), so the sweep report can show each one's mean and spread; and a
joblib launcher left at its defaults runs one job at a time where parallel would be slower
(sweeplab.sweep.jobs.choose_joblib_jobs)."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class SweeplabBasicSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        from sweeplab.sweep.jobs import choose_joblib_jobs, cpu_cores

        choose_joblib_jobs(config, cpu_cores())  # before the launcher reads its n_jobs
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]):
        from sweeplab.sweep.seeds import seeds_override

        # sweeplab's callback has already refused sweep.seeds > 1 with a swept trainer.seed.
        n = int(self.config.sweep.get("seeds", 1))
        return super().sweep([*arguments, *seeds_override(int(self.config.trainer.seed), n)])
