"""The search loop: ask Optuna for a trial, launch it as one Hydra job, tell Optuna how it ended
(`OptunaSearch`, behind the Hydra plugin `hydra_plugins/sweeplab_sweepers/optuna_sweeper.py`).

Steady state: up to `n_jobs` trials are in flight, and a new one is asked for as soon as any
of them ends (the official plugin waits for a whole batch). Each trial is launched as its own
one-job batch from a worker thread, so any launcher that runs jobs out of this process (joblib,
submitit) keeps `n_jobs` busy. Hydra's basic launcher runs a job inside this process (it changes
the working directory and Hydra's global state), so with it trials run one at a time.

The study lives in storage (sweeplab.sweep.study.storage_url) under the sweep id: launching
the same command again continues toward `n_trials`, and a trial left RUNNING by a launch that
died is marked FAIL and its parameters queued again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import statistics
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import optuna
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweeplab.sweep.placement import choose_joblib_jobs, concurrent_jobs, cpu_cores
from sweeplab.sweep.search import check_search_settings
from sweeplab.sweep.seeds import seed_values
from sweeplab.sweep.space import SearchError, as_list, search_space
from sweeplab.sweep.study import (
    display_url,
    instantiate_pruner,
    log_results,
    open_storage,
    storage_url,
    study_name,
)
from sweeplab.track import tracking
from sweeplab.track.store import process_alive
from sweeplab.track.tags import PARENT_ENV, PRUNED_TAG

log = logging.getLogger(__name__)
# Trial user attributes:
OWNER = "sweeplab.owner"  # host:pid of the launch that asked for a trial
REQUEUED = "sweeplab.requeued_from"  # on a trial queued again: the number of the one it replaces
OVER_BUDGET = "sweeplab.over_budget"  # asked for after other launches used up n_trials: not run
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def counted(trials: list[FrozenTrial], before: int | None = None) -> list[FrozenTrial]:
    """The trials that use up the budget, by any launch: ended or running, except those failed
    by a dead launch (another trial was queued in their place) and those over budget."""
    replaced = {t.user_attrs[REQUEUED] for t in trials if REQUEUED in t.user_attrs}
    return [
        t
        for t in trials
        if t.state in ENDED
        and t.number not in replaced
        and not t.user_attrs.get(OVER_BUDGET)
        and (before is None or t.number < before)
    ]


class OptunaSearch:
    def __init__(
        self,
        sampler,
        pruner,
        direction,
        storage,
        study_name,
        n_trials,
        n_jobs,
        max_failure_rate,
        params,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.directions = as_list(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.max_failure_rate, self.params = float(max_failure_rate), params

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        choose_joblib_jobs(config, cpu_cores())  # before the launcher reads its n_jobs
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # --- the study -----------------------------------------------------------------------

    def objectives(self) -> list[str]:
        """The metric names the jobs return, one per direction (`optimized_metric`)."""
        return as_list(self.config.get("optimized_metric"))

    def open_study(self) -> optuna.Study:
        """The study (created, or continued by a relaunch); check_search has already refused
        one made with other directions or another space."""
        self.url = storage_url(self.storage, self.config.tracking)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log says what happens
        study = optuna.create_study(
            study_name=study_name(self.config, self.study_name),
            storage=open_storage(self.url),
            load_if_exists=True,
            directions=self.directions,
            pruner=instantiate_pruner(self.pruner_cfg),
        )
        with warnings.catch_warnings():  # experimental in Optuna; names axes in the dashboard
            warnings.simplefilter("ignore")
            study.set_metric_names(self.objectives())
        return study

    def requeue_interrupted(self, study: optuna.Study) -> int:
        """Trials left RUNNING by a launch on this host whose process is gone: FAIL, and their
        parameters queued again (a trial's job may be resumed from its last.pt)."""
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            host, _, pid = str(t.user_attrs.get(OWNER, "")).rpartition(":")
            if host != socket.gethostname() or process_alive(pid):
                continue  # another live launch's trial (or another machine's): leave it
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={REQUEUED: t.number})
            log.warning(
                "trial %d was left RUNNING by a dead launch: FAIL, parameters queued again",
                t.number,
            )
            n += 1
        return n

    def sampler_for(self, study: optuna.Study):
        """The configured sampler, seeded with trainer.seed + trials so far: a continued study
        does not replay the random start-up trials it already ran."""
        cfg = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        if "seed" in cfg:
            base = cfg["seed"] if cfg["seed"] is not None else self.config.trainer.get("seed")
            cfg["seed"] = None if base is None else int(base) + len(study.trials)
        return instantiate(cfg)

    def counted(self, study: optuna.Study, before: int | None = None) -> int:
        return len(counted(study.get_trials(deepcopy=False), before))

    def failed(self, study: optuna.Study) -> list[FrozenTrial]:
        return [t for t in counted(study.get_trials(deepcopy=False)) if t.state == TrialState.FAIL]

    # --- the loop --------------------------------------------------------------------------

    def slots(self) -> int:
        """Trials in flight at once: n_jobs, capped by what the launcher can run in parallel."""
        launcher = OmegaConf.to_container(self.config.hydra.launcher, resolve=True)
        target = str(launcher.get("_target_", ""))
        if target.endswith("BasicLauncher"):
            if self.n_jobs > 1:
                log.warning(
                    "hydra.sweeper.n_jobs=%d: the basic launcher runs one job at a time "
                    "in this process; use hydra/launcher=joblib or submitit_local to run "
                    "trials in parallel",
                    self.n_jobs,
                )
            return 1
        if "joblib" in target:
            return min(self.n_jobs, concurrent_jobs(launcher, cpu_cores()))
        return self.n_jobs

    def sweep(self, arguments: list[str]) -> None:
        check_search_settings(  # done by sweeplab's callback already; here for any other use
            *(self.config, self.directions, self.n_trials, self.n_jobs, self.max_failure_rate),
            *(self.study_name, self.params, arguments, self.storage),
        )
        space, fixed = search_space(self.params, arguments)
        study = self.open_study()
        requeued = self.requeue_interrupted(study)
        study.sampler = self.sampler_for(study)
        slots = self.slots()
        log.info(
            "study %s (%s): %d of %d trials done or running%s, %d in flight at a time",
            *(study.study_name, display_url(self.url), self.counted(study), self.n_trials),
            f", {requeued} queued again" if requeued else "",
            slots,
        )
        pool = ThreadPoolExecutor(slots, thread_name_prefix="trial") if slots > 1 else None
        try:
            self.run_trials(study, space, fixed, slots, pool)
        except SearchError as e:  # too many jobs failed: one line; the sweep summary follows
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:  # on Ctrl-C, do not wait for trials still running: a relaunch requeues them
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            self.finish(study)

    def run_trials(self, study, space: dict, fixed: dict, slots: int, pool) -> None:
        """Keep `slots` trials in flight until the budget is used. The budget is read from the
        study before every trial: other launches of the same study (another shell, another
        machine) take their share of n_trials."""
        in_flight: dict[Future, optuna.Trial] = {}
        while in_flight or self.counted(study) < self.n_trials:
            while len(in_flight) < slots and self.counted(study) < self.n_trials:
                trial = study.ask(space)
                if self.counted(study, before=trial.number) >= self.n_trials:
                    # another launch asked for the last trials between our count and ask
                    trial.set_user_attr(OVER_BUDGET, True)
                    study.tell(trial, state=TrialState.FAIL)
                    break
                in_flight[self.start(trial, fixed, pool)] = trial
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in finished:
                self.tell(study, in_flight.pop(future), future)
            failed = self.failed(study)
            if len(failed) > self.max_failure_rate * self.n_trials:
                wait(list(in_flight))  # let the running ones end and be told
                for future, trial in list(in_flight.items()):
                    self.tell(study, trial, future)
                raise SearchError(
                    f"search stopped: {len(failed)} of {self.n_trials} trials failed "
                    f"(max_failure_rate={self.max_failure_rate}); last: "
                    f"{failed[-1].user_attrs.get('sweeplab.error', '?')}"
                )

    def start(self, trial: optuna.Trial, fixed: dict, pool) -> Future:
        """The trial's job(s), in a worker thread, or here with the basic launcher."""
        trial.set_user_attr(OWNER, f"{socket.gethostname()}:{os.getpid()}")
        overrides = [
            *(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()),
            *(f"sweep.study={trial.study.study_name}", f"sweep.trial={trial.number}"),
        ]
        shown = " ".join(f"{k}={v}" for k, v in trial.params.items())
        log.info("trial %d started: %s", trial.number, shown)
        if pool is not None:
            return pool.submit(self.launch, trial, overrides)
        future = Future()  # basic launcher: the job runs here, in this thread
        future.set_result(self.launch(trial, overrides))
        return future

    def launch(self, trial: optuna.Trial, overrides: list[str]) -> list:
        """The trial's job, or with sweep.seeds=N its N jobs (one per seed) as one batch. Job
        folders are numbered from trial number x N: unique across launches of the study."""
        n = int(self.config.sweep.get("seeds", 1))
        if n == 1:
            return self.launcher.launch([overrides], initial_job_idx=trial.number)
        seeds = seed_values(int(self.config.trainer.seed), n)
        batch = [[*overrides, f"trainer.seed={s}"] for s in seeds]
        return self.launcher.launch(batch, initial_job_idx=trial.number * n)

    def tell(self, study: optuna.Study, trial: optuna.Trial, future: Future) -> None:
        """COMPLETE with the job's value(s); PRUNED if the job was pruned; FAIL if it raised or
        returned NaN (the search goes on). With sweep.seeds, a failed seed fails the trial."""
        state, values, why = TrialState.COMPLETE, None, ""
        try:
            returned = [job.return_value for job in future.result()]  # raises a job's error
            (told,) = study.get_trials(deepcopy=False)[trial.number : trial.number + 1]
            if PRUNED_TAG in told.user_attrs:  # set by the job's TrialReporter
                state = TrialState.PRUNED  # Optuna keeps the last reported value
            else:  # with sweep.seeds=N, the mean over the seeds
                per_seed = [self.values(v) for v in returned]
                values = [statistics.fmean(v) for v in zip(*per_seed, strict=True)]
        except Exception as e:
            state, values, why = TrialState.FAIL, None, f"{type(e).__name__}: {e}"[:500]
            trial.set_user_attr("sweeplab.error", why)
        study.tell(trial, values=values, state=state)
        seconds = time.time() - trial.datetime_start.timestamp()
        shown = f"{values[0] if len(values) == 1 else values}" if values else why or "pruned"
        log.info("trial %d %s after %.1fs: %s", trial.number, state.name, seconds, shown)

    def values(self, value) -> list[float]:
        values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if len(values) != len(self.directions):
            raise ValueError(f"{len(values)} values for {len(self.directions)} directions")
        if any(math.isnan(v) for v in values):
            raise ValueError(f"the job returned NaN for {self.config.optimized_metric}")
        return values

    def finish(self, study: optuna.Study) -> None:
        parent = os.environ.get(PARENT_ENV)
        uri = self.config.tracking.uri
        run = tracking.Run(tracking.client(uri), parent) if parent else tracking.NullRun()
        try:
            results = log_results(
                study, run, self.url, self.config.hydra.sweep.dir, self.objectives()
            )
        except Exception as e:  # the trials are in the study and MLflow whatever happens here
            log.error("search results not logged: %s: %s", type(e).__name__, e)
            return
        finally:
            run.flush(), run.close()
        if "best_value" in results:
            metric = self.config.optimized_metric
            best = (results["best_trial"], metric, results["best_value"], results["best_params"])
            log.info("best trial %d: %s = %s, %s", *best)
        elif "solutions" in results:
            log.info("Pareto front: trials %s", [s["trial"] for s in results["solutions"]])
