"""Optuna search, the parts both sides of a trial share: where the study lives, the job's side of
a trial (report each epoch, stop when the pruner says so) and the search's results on the
sweep's parent run. The sweeper itself (ask / tell, `n_jobs` trials in flight, resume) is the
Hydra plugin in `hydra_plugins/sweeplab_sweepers`.

A job learns its trial from two overrides the sweeper adds, `sweep.study=<name>` and
`sweep.trial=<number>`; the storage URL it derives from its own config exactly as the sweeper
does (so a database password never travels on a command line or into a tag).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from omegaconf import DictConfig, OmegaConf

from sweeplab.errors import SweeplabError
from sweeplab.track import sqlite_db
from sweeplab.track.tracking import PRUNED_TAG, is_local, resolve_uri
from sweeplab.train.hooks import Hook

if TYPE_CHECKING:  # annotations only: the Hydra plugin imports this module at start-up
    from sweeplab.train.trainer import Trainer

log = logging.getLogger("sweeplab")

STUDY_FILE = "optuna.db"  # under tracking.root for a local tracking store


class SearchError(SweeplabError):
    """The search cannot go on (storage unset or unreachable, too many failed trials)."""


def storage_url(storage: str | None, tracking: DictConfig) -> str:
    """`hydra.sweeper.storage` if set; else beside the tracking store: a sqlite file under
    tracking.root, or `tracking.study_storage` (the server's database) for a tracking server."""
    if storage:
        return resolve_uri(str(storage)) if str(storage).startswith("sqlite:") else str(storage)
    if tracking.get("study_storage"):
        return str(tracking.study_storage)
    if is_local(str(tracking.uri)):
        return f"sqlite:///{os.path.join(str(tracking.root), STUDY_FILE)}"
    raise SearchError(
        f"an Optuna search with tracking.uri={tracking.uri} needs a study storage the jobs can "
        "reach: set tracking.study_storage (e.g. the server's postgresql://… database, or "
        "$SWEEPLAB_STUDY_STORAGE) or hydra.sweeper.storage"
    )


def open_storage(url: str):
    """Optuna's RDB storage; sqlite waits for a busy file instead of failing at once (jobs
    report while the sweeper asks and tells)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    try:
        create_study_file(url)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:
        cause = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise SearchError(
            f"cannot open the Optuna study storage {display_url(url)}: {cause}"
        ) from None


def create_study_file(url: str) -> None:
    """A sqlite study file that does not exist yet is made whole (sweeplab.track.sqlite_db), under a
    lock beside it, so an interrupted first search leaves no half-made optuna.db."""
    import optuna

    path = sqlite_db.sqlite_path(url)
    if path is None or (path.exists() and path.stat().st_size > 0):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        sqlite_db.remove_temporaries(path)
        if not path.exists() or path.stat().st_size == 0:
            make = lambda tmp: optuna.storages.RDBStorage(tmp).engine.dispose()  # noqa: E731
            sqlite_db.create_whole(path, make, replace=path.exists())


def display_url(url: str) -> str:
    """The URL as it may be shown or logged: password masked, paths relative to the launch dir."""
    from sweeplab.config.redact import redact_override
    from sweeplab.config.schema import launch_dir
    from sweeplab.track.params import relativize_paths

    return relativize_paths(redact_override(f"url={url}").split("=", 1)[1], launch_dir())


def distribution(override: Override) -> Any:
    """An Optuna distribution for a sweep override (the official plugin's syntax), or the
    plain value of a fixed one. `range` follows Hydra (stop excluded)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(values[0], values[-1], step=value.step)
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise SearchError(f"{override.input_line}: not a search space Optuna can sample")


def search_space(params: dict | None, arguments: list[str]) -> tuple[dict, dict]:
    """({key: distribution}, {key: fixed value}) from hydra.sweeper.params and the command line."""
    from optuna.distributions import BaseDistribution

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        try:
            value = distribution(override)
        except ValueError as e:  # Optuna: low > high, log with low <= 0, ...
            raise SearchError(f"{override.input_line}: {e}") from None
        target = space if isinstance(value, BaseDistribution) else fixed
        key = override.get_key_element()
        space.pop(key, None), fixed.pop(key, None)  # the command line wins over params
        target[key] = value
    return space, fixed


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


def study_name(config: DictConfig, pinned: str | None) -> str:
    """hydra.sweeper.study_name, else the sweep id: the same command continues its study."""
    from sweeplab.config.identity import sweep_id
    from sweeplab.track.tracking import SWEEP_ID_ENV

    return str(pinned or os.environ.get(SWEEP_ID_ENV) or sweep_id(config))


def check_study(storage, name: str, directions: list[str], space: dict, pinned: bool) -> None:
    """An existing study is continued only with its own directions and search space: mixed
    trials would make "best trial" compare configurations from two different searches."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return  # a new study
    how = "set hydra.sweeper.study_name=<new name>" if pinned else "set hydra.sweeper.study_name"
    had = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if had != directions:
        raise SearchError(
            f"study {name} exists with directions {had}, not {directions}: {how} to start "
            "another study"
        )
    changed = set()
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        for key, old in trial.distributions.items():
            if key not in space or space[key] != old:
                changed.add(f"{key}: {_shown(old)} -> {_shown(space.get(key))}")
        changed.update(
            f"{k}: none -> {_shown(d)}"
            for k, d in space.items()
            if trial.distributions and k not in trial.distributions
        )
    if changed:
        raise SearchError(
            f"study {name} was searched over another space ({'; '.join(sorted(changed)[:4])}): "
            f"continuing it would mix trials of both; {how} to start another study"
        )


def _shown(d) -> str:
    if d is None:
        return "none"
    fields = ", ".join(f"{k}={v}" for k, v in vars(d).items() if v is not None and v is not False)
    return f"{type(d).__name__.removesuffix('Distribution')}({fields})"


def instantiate_pruner(node: Any):
    from hydra.utils import instantiate

    return instantiate(node) if node else None


def is_listed(value: Any) -> bool:
    return OmegaConf.is_list(value) or isinstance(value, (list, tuple))


def as_list(value: Any) -> list[str]:
    """`optimized_metric` / `direction`: one name, or a list of them (multi-objective)."""
    return [str(v) for v in (value if is_listed(value) else [value])]


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
        from sweeplab.config.schema import in_multirun

        if cfg.sweep.get("trial") is None or not in_multirun():  # e.g. a job's saved config
            return cls()
        import optuna
        from hydra.core.hydra_config import HydraConfig

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


# --- results on the parent run ---------------------------------------------------------------


def log_results(study, parent_run, storage: str, sweep_dir: str, objectives: list[str]) -> dict:
    """Best parameters and value (or the Pareto front), Optuna's history and importance plots
    and the storage URL, on the sweep's parent run (a NullRun outside sweeplab's callback);
    also optimization_results.yaml in the sweep folder."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    results: dict[str, Any] = {
        "name": "optuna",
        "study": study.study_name,
        "storage": display_url(storage),
    }
    tags = {
        "optuna.study": study.study_name,
        "optuna.storage": display_url(storage),
        "sweeplab.objectives": ",".join(objectives),
    }
    if done and len(study.directions) == 1:
        best = study.best_trial
        results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
        parent_run.log_params({f"best.{k}": v for k, v in best.params.items()})
        parent_run.log_metrics({"best_value": best.value, "best_trial": best.number}, step=0)
    elif done:
        front = study.best_trials
        results["solutions"] = [
            {"trial": t.number, "params": t.params, "values": t.values} for t in front
        ]
        tags["sweeplab.pareto_trials"] = ",".join(str(t.number) for t in front)
    parent_run.set_tags(tags)
    path = os.path.join(sweep_dir, "optimization_results.yaml")
    OmegaConf.save(OmegaConf.create(results), path)
    parent_run.log_artifact(path, "optuna")
    for png in _plots(study, done, sweep_dir):
        parent_run.log_artifact(png, "optuna")
    return results


def _plots(study, done: list, sweep_dir: str) -> list[str]:
    """Optuna's own matplotlib plots; importance needs two finished trials with varied params."""
    import warnings

    from optuna.visualization import matplotlib as ov

    from sweeplab.train.metrics import pyplot

    if not done:  # nothing to plot (Optuna would only warn "There are no complete trials")
        return []
    plt = pyplot(Path(sweep_dir) / "optuna.png")
    names = {"optimization_history": ov.plot_optimization_history}
    if len(done) >= 2 and len(study.directions) == 1:
        names["param_importances"] = ov.plot_param_importances
    if len(study.directions) == 2:
        names = {"pareto_front": ov.plot_pareto_front}
    out = []
    for name, plot in names.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                ax = plot(study)
            path = os.path.join(sweep_dir, f"optuna_{name}.png")
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            out.append(path)
        except Exception as e:  # a plot must never cost the search its results
            log.warning("optuna %s plot skipped: %s: %s", name, type(e).__name__, e)
    return out
