"""Optuna search, the parts around a trial: everything about a search checked before it
starts, what a job returns to the sweeper, and the job's side of a trial (report each epoch,
stop when the pruner says so). The ask / tell loop is sweep/optuna_search.py, behind the
Hydra plugin in `hydra_plugins/sweeplab_sweepers`.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweeplab.config.resolvers import in_multirun
from sweeplab.sweep.space import SearchError, as_list, is_listed, search_space
from sweeplab.sweep.study import (
    check_study,
    instantiate_pruner,
    open_storage,
    storage_url,
    study_name,
)
from sweeplab.track import sqlite_db
from sweeplab.track.tags import PRUNED_TAG
from sweeplab.train.hooks import Hook
from sweeplab.train.trainer import Trainer

log = logging.getLogger("sweeplab")


# --- a search checked before anything is created ----------------------------------------------

OPTUNA_SWEEPER = "SweeplabOptunaSweeper"


def check_search(config: DictConfig) -> None:
    """check_search_settings for the sweep `config` describes (sweeplab's callback)."""
    s = config.hydra.sweeper
    check_search_settings(
        config,
        as_list(s.direction),
        s.n_trials,
        s.n_jobs,
        s.max_failure_rate,
        s.get("study_name"),
        s.get("params"),
        list(config.hydra.overrides.task),
        s.get("storage"),
    )


def check_search_settings(
    config: DictConfig,
    directions: list[str],
    n_trials,
    n_jobs,
    rate,
    pinned,
    params,
    arguments: list[str],
    storage,
) -> None:
    """Everything about an Optuna search that can be wrong before it starts, as one
    SearchError: directions, budget, the space (each distribution built), the study storage
    and, for a study that exists, that it was made with the same directions and space. The
    sweep's callback calls this before its parent run exists, so a mistake creates nothing."""
    metrics = as_list(config.get("optimized_metric"))
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad or len(metrics) != len(directions):
        raise SearchError(
            f"hydra.sweeper.direction={directions}: give maximize or minimize, one per entry "
            f"of optimized_metric={metrics}"
        )
    if int(n_trials) < 1 or int(n_jobs) < 1 or not 0 <= float(rate) <= 1:
        raise SearchError(
            f"hydra.sweeper: n_trials={n_trials} and n_jobs={n_jobs} must be >= 1, "
            f"max_failure_rate={rate} in [0, 1]"
        )
    if pinned and not re.fullmatch(r"[\w.-]+", str(pinned)):
        raise SearchError(f"hydra.sweeper.study_name={pinned!r}: letters, digits, _.-")
    space, _ = search_space(params, arguments)
    url = storage_url(storage, config.tracking)
    if (path := sqlite_db.sqlite_path(url)) is not None and not path.exists():
        return  # no study file yet, so no study to continue (and nothing made by a check)
    check_study(open_storage(url), study_name(config, pinned), directions, space, bool(pinned))


def optimized_values(metrics: dict, names: Any) -> float | list[float]:
    """What the job returns to a sweeper: the value of `optimized_metric`, or a list of values
    for a list of names. A pruned run has no test metrics: NaN there (the sweeper tells PRUNED)."""
    listed, wanted = is_listed(names), as_list(names)
    unknown = [n for n in wanted if n not in metrics]
    if unknown and metrics.get(PRUNED_TAG) is None:
        known = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise SearchError(f"optimized_metric {unknown} is not a metric of the run; one of {known}")
    values = [float(metrics.get(n, math.nan)) for n in wanted]
    return values if listed else values[0]


# --- the job's side of a trial --------------------------------------------------------------


class TrialReporter(Hook):
    """A hook of `Trainer.fit`: reports the optimised metric after each epoch to this job's
    trial, and stops training when the pruner says so (`pruned_epoch` is then set). A no-op
    for jobs that are not trials of a search."""

    def __init__(self, trial=None, metric: str = ""):
        self.trial, self.metric = trial, metric
        self.pruned_epoch: int | None = None

    @classmethod
    def for_job(cls, cfg: DictConfig) -> TrialReporter:
        if cfg.sweep.get("trial") is None or not in_multirun():  # e.g. a job's saved config
            return cls()
        sweeper = HydraConfig.get().sweeper
        storage = open_storage(storage_url(sweeper.get("storage"), cfg.tracking))
        study = optuna.load_study(
            study_name=str(cfg.sweep.study),
            storage=storage,
            pruner=instantiate_pruner(sweeper.get("pruner")),
        )
        study_id = storage.get_study_id_from_name(str(cfg.sweep.study))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(cfg.sweep.trial))
        if storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
            log.info("trial %s is no longer running: not reporting to it", cfg.sweep.trial)
            return cls()
        if len(study.directions) > 1:  # Optuna prunes single-objective studies only
            return cls()
        return cls(optuna.trial.Trial(study, trial_id), str(cfg.optimized_metric))

    def on_fit_start(self, trainer: Trainer) -> None:
        """A resumed job's earlier epochs, so the pruner compares this trial at every epoch."""
        best = -math.inf
        for row in trainer.progress.history:
            best = max(best, row["val_acc"])
            self._report(row, best)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], improved: bool) -> bool:
        """Report this epoch's value of the optimised metric; True when the trial is pruned."""
        best_val_acc = trainer.progress.best_acc
        if not self._report(row, best_val_acc) or not self.trial.should_prune():
            return False
        epoch = self.pruned_epoch = int(row["epoch"])
        self.trial.set_user_attr(PRUNED_TAG, epoch)  # the sweeper tells PRUNED on seeing it
        log.info(
            "pruned by %s at epoch %d (%s %.4f)",
            type(self.trial.study.pruner).__name__,
            epoch,
            self.metric,
            best_val_acc,
        )
        return True

    def _report(self, row: dict[str, float], best_val_acc: float) -> bool:
        """trial.report(value at this epoch); False when there is nothing to report to."""
        if self.trial is None:
            return False
        value = best_val_acc if self.metric == "best_val_acc" else row.get(self.metric)
        if value is None or math.isnan(value):
            return False
        self.trial.report(float(value), step=int(row["epoch"]))
        return True
