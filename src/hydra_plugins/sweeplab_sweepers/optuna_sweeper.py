"""sweeplab's Optuna sweeper as Hydra sees it: a thin shell around
sweeplab.sweep.optuna_search.OptunaSearch, which holds the search loop.

Hydra imports every plugin module at start-up (also for `--help`), so this module imports
nothing of sweeplab, Optuna or torch: the one seam is in `__init__`, as in Hydra's own plugins.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SweeplabOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # the seam: Optuna and sweeplab load only once a sweep is really made with this sweeper
        from sweeplab.sweep.optuna_search import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.search.sweep(arguments)
