"""An Optuna study: where it lives (a sqlite file beside a local tracking store, or the
server's database), checks before it is continued, and its results on the sweep's parent run.

A job finds its trial from two overrides the sweeper adds, `sweep.study=<name>` and
`sweep.trial=<number>`; the storage URL it derives from its own config exactly as the sweeper
does (so a database password never travels on a command line or into a tag).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.visualization import matplotlib as ov

from sweeplab.config.identity import sweep_id
from sweeplab.config.redact import redact_override
from sweeplab.config.resolvers import launch_dir
from sweeplab.sweep.space import SearchError, shown
from sweeplab.track import sqlite_db
from sweeplab.track.params import relativize_paths
from sweeplab.track.tags import OBJECTIVES, PARETO_TRIALS, SWEEP_ID_ENV
from sweeplab.track.tracking import is_local, resolve_uri

log = logging.getLogger("sweeplab")

STUDY_FILE = "optuna.db"  # under tracking.root for a local tracking store


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
    return relativize_paths(redact_override(f"url={url}").split("=", 1)[1], launch_dir())


def study_name(config: DictConfig, pinned: str | None) -> str:
    """hydra.sweeper.study_name, else the sweep id: the same command continues its study."""
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
                changed.add(f"{key}: {shown(old)} -> {shown(space.get(key))}")
        changed.update(
            f"{k}: none -> {shown(d)}"
            for k, d in space.items()
            if trial.distributions and k not in trial.distributions
        )
    if changed:
        raise SearchError(
            f"study {name} was searched over another space ({'; '.join(sorted(changed)[:4])}): "
            f"continuing it would mix trials of both; {how} to start another study"
        )


def instantiate_pruner(node: Any):
    return instantiate(node) if node else None


# --- results on the parent run ---------------------------------------------------------------


def log_results(study, parent_run, storage: str, sweep_dir: str, objectives: list[str]) -> dict:
    """Best parameters and value (or the Pareto front), Optuna's history and importance plots
    and the storage URL, on the sweep's parent run (a NullRun outside sweeplab's callback);
    also optimization_results.yaml in the sweep folder."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    results: dict[str, Any] = {
        "name": "optuna",
        "study": study.study_name,
        "storage": display_url(storage),
    }
    tags = {
        "optuna.study": study.study_name,
        "optuna.storage": display_url(storage),
        OBJECTIVES: ",".join(objectives),
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
        tags[PARETO_TRIALS] = ",".join(str(t.number) for t in front)
    parent_run.set_tags(tags)
    path = os.path.join(sweep_dir, "optimization_results.yaml")
    OmegaConf.save(OmegaConf.create(results), path)
    parent_run.log_artifact(path, "optuna")
    for png in _plots(study, done, sweep_dir):
        parent_run.log_artifact(png, "optuna")
    return results


def _plots(study, done: list, sweep_dir: str) -> list[str]:
    """Optuna's own matplotlib plots; importance needs two finished trials with varied params."""
    if not done:  # nothing to plot (Optuna would only warn "There are no complete trials")
        return []
    matplotlib.use("Agg")  # Optuna's plots draw through pyplot: files only, no window
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
