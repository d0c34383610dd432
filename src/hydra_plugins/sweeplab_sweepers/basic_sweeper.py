"""Hydra's grid sweeper, plus `sweep.seeds=N`: every configuration of the grid once per seed
(trainer.seed, +1, ..., +N-1), so the sweep report can show each one's mean and spread; and a
joblib launcher left at its defaults runs one job at a time where parallel would be slower
(sweeplab.sweep.placement.choose_joblib_jobs).
"""

from __future__ import annotations

# Hydra has no public base class for a grid sweeper: BasicSweeper is its default sweeper's own
# class, under hydra._internal (checked against hydra-core 1.3.2 and 1.3.8; pinned <1.4).
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class SweeplabBasicSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        # the seam (Hydra imports plugins at start-up, so sweeplab loads only for a sweep)
        from sweeplab.sweep import grid

        self.grid = grid
        grid.prepare(config)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]):
        return super().sweep([*arguments, *self.grid.seed_arguments(self.config)])
