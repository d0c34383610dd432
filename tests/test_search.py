"""sweeplab's Optuna sweeper: search-space syntax, storage, and the ask/tell loop driven by a
stand-in launcher (timings and outcomes chosen per trial), so scheduling, failures and resume
are checked exactly and fast. Real searches (processes, MNIST) are in test_search_e2e.py."""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from helpers.config import CONF
from hydra_plugins.sweeplab_sweepers.config import PRUNERS, SAMPLERS
from sweeplab.sweep.optuna_search import OWNER, REQUEUED, OptunaSearch
from sweeplab.sweep.search import optimized_values
from sweeplab.sweep.space import SearchError, distribution, search_space
from sweeplab.sweep.study import storage_url
from sweeplab.track.tags import PRUNED_TAG

# --- the search space: the official plugin's syntax on current Optuna -------------------------


def parsed(line: str):
    return distribution(OverridesParser.create().parse_overrides([line])[0])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("lr=interval(0.001, 0.1)", FloatDistribution(0.001, 0.1)),
        ("lr=tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("n=interval(1, 8)", FloatDistribution(1, 8)),  # Hydra reads interval bounds as floats
        ("n=int(interval(1, 8))", IntDistribution(1, 8)),
        ("n=tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
        ("n=range(1, 5)", IntDistribution(1, 4)),  # Hydra's range: stop excluded
        ("n=range(0, 10, 3)", IntDistribution(0, 9, step=3)),
        ("x=range(0, 1, 0.25)", FloatDistribution(0, 0.75, step=0.25)),
        ("opt=choice(sgd, adam)", CategoricalDistribution(["sgd", "adam"])),
        ("opt=sgd,adam", CategoricalDistribution(["sgd", "adam"])),
        ("opt=adam", "adam"),  # not a sweep: a fixed value for every trial
    ],
)
def test_search_space_syntax_matches_the_official_plugin(line, expected):
    assert parsed(line) == expected


def test_the_command_line_wins_over_the_config_params():
    space, fixed = search_space(
        {"optimizer": "choice(sgd, adam)", "lr": "interval(0.1, 1)"},
        ["optimizer=adam", "model=lenet,simple_cnn"],
    )
    assert space == {
        "lr": FloatDistribution(0.1, 1),
        "model": CategoricalDistribution(["lenet", "simple_cnn"]),
    }
    assert fixed == {"optimizer": "adam"}


# --- storage and what a job returns ------------------------------------------------------------


def test_the_study_lives_beside_the_tracking_store(tmp_path):
    local = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/mlflow.db", "root": str(tmp_path)})
    assert storage_url(None, local) == f"sqlite:///{tmp_path}/optuna.db"
    assert storage_url("postgresql://u@h/db", local) == "postgresql://u@h/db"
    server = OmegaConf.create(
        {"uri": "http://127.0.0.1:5000", "root": str(tmp_path), "study_storage": None}
    )
    with pytest.raises(SearchError, match="tracking.study_storage"):
        storage_url(None, server)
    server.study_storage = "postgresql://u@h/db"
    assert storage_url(None, server) == "postgresql://u@h/db"


def test_a_job_returns_its_optimised_metrics():
    metrics = {"best_val_acc": 0.9, "train_time_s": 3.0, "test_macro_f1": 0.5}
    assert optimized_values(metrics, "best_val_acc") == 0.9
    assert optimized_values(metrics, ["best_val_acc", "train_time_s"]) == [0.9, 3.0]
    with pytest.raises(SearchError, match=r"\['val_acc'\].*best_val_acc.*test_macro_f1"):
        optimized_values(metrics, "val_acc")
    pruned = {"best_val_acc": 0.2, PRUNED_TAG: 2}  # pruned: no test metrics, NaN for them
    assert math.isnan(optimized_values(pruned, "test_acc"))


# --- every sampler and pruner option builds on the installed Optuna ---------------------------


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_sampler_and_pruner_option_composes_and_builds(sampler, pruner):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        choose = [f"hydra/sweeper/sampler={sampler}", f"hydra/sweeper/pruner={pruner}"]
        cfg = compose("train", ["hparams_search=optuna", *choose], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("SweeplabOptunaSweeper")
    assert sweeper.params["optimizer.lr"] == "tag(log, interval(1e-4, 1e-1))"
    built = instantiate({**OmegaConf.to_container(sweeper.sampler), "seed": 1})
    assert isinstance(built, optuna.samplers.BaseSampler)
    assert type(built).__name__.lower().startswith(sampler[:3])
    assert isinstance(instantiate(sweeper.pruner), optuna.pruners.BasePruner)


# --- the ask / tell loop, with a stand-in launcher ---------------------------------------------


class StandInLauncher:
    """Runs each 'job' in the calling thread: sleeps, then returns what `outcome(params)` says
    (a value, a list, NaN, or an exception to fail with); records start and end times."""

    def __init__(self, outcome):
        self.outcome, self.events, self.jobs, self.lock = outcome, [], [], threading.Lock()

    def launch(self, job_overrides, initial_job_idx):
        return [self.job(overrides) for overrides in job_overrides]

    def job(self, overrides):
        params = dict(o.split("=", 1) for o in overrides)
        start = time.monotonic()
        seconds, value = self.outcome(params)
        time.sleep(seconds)
        with self.lock:
            self.events.append((int(params["sweep.trial"]), start, time.monotonic()))
            self.jobs.append(params)
        if isinstance(value, Exception):
            return JobReturn(status=JobStatus.FAILED, _return_value=value)
        return JobReturn(status=JobStatus.COMPLETED, _return_value=value)


def make_sweeper(
    tmp_path,
    outcome,
    n_trials=4,
    n_jobs=2,
    direction="maximize",
    params=None,
    max_failure_rate=0.5,
    metric="best_val_acc",
    seeds=1,
):
    sweeper = OptunaSearch(
        sampler=OmegaConf.create({**SAMPLERS["random"]}),
        pruner=OmegaConf.create(PRUNERS["none"]),
        direction=direction,
        storage=f"sqlite:///{tmp_path}/optuna.db",
        study_name="s",
        n_trials=n_trials,
        n_jobs=n_jobs,
        max_failure_rate=max_failure_rate,
        params=OmegaConf.create(params or {"x": "interval(0, 1)"}),
    )
    sweeper.config = OmegaConf.create(
        {
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "root": str(tmp_path)},
            "trainer": {"seed": 0},
            "optimized_metric": metric,
            "sweep": {"seeds": seeds},
            "hydra": {"launcher": {"_target_": "StandInLauncher"}, "sweep": {"dir": str(tmp_path)}},
        }
    )
    sweeper.launcher = StandInLauncher(outcome)
    return sweeper


def study_of(tmp_path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")


def test_a_freed_slot_takes_the_next_trial_before_a_long_one_ends(tmp_path):
    # trial 0 is long; trials 1, 2, 3 are short: with 2 in flight, 2 and 3 run in trial 1's
    # slot while trial 0 still runs (a batch-synchronous sweeper would wait for trial 0).
    sweeper = make_sweeper(tmp_path, lambda p: (1.5 if p["sweep.trial"] == "0" else 0.2, 0.5))
    sweeper.sweep([])
    span = {n: (start, end) for n, start, end in sweeper.launcher.events}
    assert span[2][0] >= span[1][1] and span[3][0] >= span[2][1]  # one slot, reused in turn
    assert span[3][1] < span[0][1]  # ...all before the long trial ended
    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all(t.user_attrs[OWNER] == f"{socket.gethostname()}:{os.getpid()}" for t in trials)


def test_failed_and_nan_trials_are_fail_and_the_search_goes_on(tmp_path):
    outcomes = {"1": ValueError("loss became NaN"), "2": math.nan}
    sweeper = make_sweeper(
        tmp_path, lambda p: (0.01, outcomes.get(p["sweep.trial"], 0.7)), n_trials=5, n_jobs=1
    )
    sweeper.sweep([])
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["sweeplab.error"] == "ValueError: loss became NaN"
    assert "returned NaN for best_val_acc" in trials[2].user_attrs["sweeplab.error"]
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.best_value == 0.7 and results.study == "s"
    assert study_of(tmp_path).metric_names == ["best_val_acc"]  # axes named in dashboards


def test_too_many_failures_stop_the_search_with_the_reason(tmp_path, capsys):
    sweeper = make_sweeper(
        tmp_path,
        lambda p: (0.01, RuntimeError("CUDA out of memory")),
        n_trials=10,
        n_jobs=1,
        max_failure_rate=0.2,
    )
    with pytest.raises(SystemExit) as stopped:  # one line and exit 1, as a grid with failures
        sweeper.sweep([])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "Traceback" not in err
    assert re.fullmatch(
        r"error: search stopped: 3 of 10 trials failed \(max_failure_rate=0.2\); "
        r"last: RuntimeError: CUDA out of memory",
        line,
    )
    assert len(study_of(tmp_path).trials) == 3  # stopped once 3 > 0.2 * 10


def test_a_pruned_job_is_told_pruned(tmp_path):
    def outcome(p):  # the job of trial 1 marks itself pruned in the study, as TrialReporter does
        if p["sweep.trial"] == "1":
            study = study_of(tmp_path)
            trial = optuna.trial.Trial(study, study.trials[1]._trial_id)
            trial.report(0.1, step=1)
            trial.set_user_attr(PRUNED_TAG, 1)
        return 0.01, 0.1

    make_sweeper(tmp_path, outcome, n_trials=3, n_jobs=1).sweep([])
    states = [t.state.name for t in study_of(tmp_path).trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert study_of(tmp_path).trials[1].value == 0.1  # the last reported value


def test_a_relaunch_continues_to_n_trials_and_requeues_a_dead_launchs_trial(tmp_path):
    make_sweeper(tmp_path, lambda p: (0.01, float(p["x"])), n_trials=2, n_jobs=1).sweep([])
    study = study_of(tmp_path)
    orphan = study.ask({"x": FloatDistribution(0, 1)})  # as if its launch had been SIGKILLed
    dead = 2**22 + 12345  # no such pid (pid_max is at most 2**22)
    orphan.set_user_attr(OWNER, f"{socket.gethostname()}:{dead}")
    live = study.ask({"x": FloatDistribution(0, 1)})  # another launch, still running: left alone
    live.set_user_attr(OWNER, f"{socket.gethostname()}:{os.getpid()}")

    relaunch = make_sweeper(tmp_path, lambda p: (0.01, float(p["x"])), n_trials=5, n_jobs=1)
    relaunch.sweep([])
    trials = study_of(tmp_path).trials
    by_state = {s: [t.number for t in trials if t.state == s] for s in TrialState}
    assert by_state[TrialState.FAIL] == [2]  # failed, and not counted: queued again below
    assert by_state[TrialState.RUNNING] == [3]
    requeued = [t for t in trials if t.user_attrs.get(REQUEUED) == 2]
    assert len(requeued) == 1 and requeued[0].params == trials[2].params  # same point again
    ended = by_state[TrialState.COMPLETE] + by_state[TrialState.FAIL]
    assert len(ended) == 5  # 2 + the dead one + 2 more: n_trials in all


def test_a_continued_study_does_not_replay_its_random_start(tmp_path):
    make_sweeper(tmp_path, lambda p: (0.0, float(p["x"])), n_trials=3, n_jobs=1).sweep([])
    make_sweeper(tmp_path, lambda p: (0.0, float(p["x"])), n_trials=6, n_jobs=1).sweep([])
    xs = [t.params["x"] for t in study_of(tmp_path).trials]
    assert len(xs) == 6 and len(set(xs)) == 6


def test_multi_objective_search_writes_its_pareto_front(tmp_path):
    def outcome(p):  # accuracy grows with x, and so does time: every trial is on the front
        return 0.0, [float(p["x"]), 10 * float(p["x"])]

    sweeper = make_sweeper(
        tmp_path,
        outcome,
        n_trials=3,
        n_jobs=1,
        direction=["maximize", "minimize"],
        metric=["best_val_acc", "train_time_s"],
    )
    sweeper.sweep([])
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert sorted(s.trial for s in results.solutions) == [0, 1, 2]
    assert (tmp_path / "optuna_pareto_front.png").stat().st_size > 0


def test_directions_must_match_the_optimised_metrics(tmp_path):
    sweeper = make_sweeper(tmp_path, lambda p: (0, 0.0), direction=["maximize", "minimize"])
    with pytest.raises(SearchError, match="one per entry of optimized_metric"):
        sweeper.sweep([])


def test_with_seeds_each_trial_runs_once_per_seed_and_scores_their_mean(tmp_path):
    def outcome(p):  # seed 5 scores x, seed 6 scores x + 0.2
        return 0.0, float(p["x"]) + (0.2 if p["trainer.seed"] == "6" else 0.0)

    sweeper = make_sweeper(tmp_path, outcome, n_trials=2, n_jobs=1, seeds=2)
    sweeper.config.trainer.seed = 5
    sweeper.sweep([])
    jobs = sweeper.launcher.jobs
    assert [(j["sweep.trial"], j["trainer.seed"]) for j in jobs] == [
        ("0", "5"),
        ("0", "6"),
        ("1", "5"),
        ("1", "6"),
    ]
    for t in study_of(tmp_path).trials:
        assert t.value == pytest.approx(t.params["x"] + 0.1)


def test_the_grid_sweeper_adds_the_seeds_and_is_the_default(monkeypatch):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", ["sweep.seeds=3", "trainer.seed=7"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("SweeplabBasicSweeper")
    sweeper = instantiate(cfg.hydra.sweeper)
    captured = []
    grid = type(sweeper).__mro__[1]  # Hydra's BasicSweeper, as Hydra's plugin scan loaded it
    assert grid.__name__ == "BasicSweeper"
    monkeypatch.setattr(grid, "setup", lambda self, **kw: setattr(self, "config", kw["config"]))
    monkeypatch.setattr(grid, "sweep", lambda self, arguments: captured.append(arguments))
    sweeper.setup(hydra_context=None, task_function=None, config=cfg)
    sweeper.sweep(["optimizer=sgd,adam"])
    assert captured == [["optimizer=sgd,adam", "trainer.seed=7,8,9"]]


def test_two_launches_of_one_study_run_exactly_n_trials_together(tmp_path):
    """Reliability 20: the finished count was read once at start, so two launches of the same
    search started together ran n_trials each. The budget is now read before every trial."""
    sweepers = [
        make_sweeper(tmp_path, lambda p: (0.3, 0.5), n_trials=3, n_jobs=1) for _ in range(2)
    ]
    threads = [threading.Thread(target=s.sweep, args=([],)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    trials = study_of(tmp_path).trials
    ran = [t for t in trials if not t.user_attrs.get("sweeplab.over_budget")]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 3
    assert sum(len(s.launcher.jobs) for s in sweepers) == 3
    assert all(len(s.launcher.jobs) >= 1 for s in sweepers)  # both took a share


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"x": "interval(0.1, 0.001)"}, r"^x=interval\(0.1, 0.001\): .*low"),
        ({"x": "tag(log, interval(0, 1))"}, r"^x=tag\(log, interval\(0, 1\)\): .*log"),
    ],
)
def test_a_space_optuna_cannot_sample_is_one_search_error(tmp_path, params, message):
    with pytest.raises(SearchError, match=message):
        make_sweeper(tmp_path, lambda p: (0, 0.0), params=params).sweep([])
    assert not (tmp_path / "optuna.db").exists()  # refused before the study was made


def test_a_budget_of_zero_trials_is_refused(tmp_path):
    with pytest.raises(SearchError, match=r"n_trials=0 and n_jobs=2 must be >= 1"):
        make_sweeper(tmp_path, lambda p: (0, 0.0), n_trials=0).sweep([])


def test_a_pinned_study_relaunched_with_another_space_is_refused_by_name(tmp_path):
    make_sweeper(tmp_path, lambda p: (0.0, 0.5), n_trials=2, n_jobs=1).sweep([])
    before = [(t.number, t.state) for t in study_of(tmp_path).trials]
    changes = [
        ({"x": "choice(0, 1)"}, "x: Float(low=0.0, high=1.0) -> Categorical"),
        ({"x": "interval(0, 1)", "y": "interval(0, 1)"}, "y: none ->"),
    ]
    for params, said in changes:
        again = make_sweeper(tmp_path, lambda p: (0.0, 0.5), n_trials=4, n_jobs=1, params=params)
        with pytest.raises(SearchError, match=r"study s was searched over another space") as e:
            again.sweep([])
        assert said in str(e.value) and "hydra.sweeper.study_name=<new name>" in str(e.value)
    with pytest.raises(SearchError, match=r"study s exists with directions \['maximize'\]"):
        make_sweeper(tmp_path, lambda p: (0, 0.0), direction="minimize").sweep([])
    assert [(t.number, t.state) for t in study_of(tmp_path).trials] == before  # none RUNNING


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_study_file_is_one_line(tmp_path, damage):
    make_sweeper(tmp_path, lambda p: (0.0, 0.5), n_trials=1, n_jobs=1).sweep([])
    path = tmp_path / "optuna.db"
    data = path.read_bytes()
    path.write_bytes(b"not a database\n" * 500 if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(SearchError) as e:
        make_sweeper(tmp_path, lambda p: (0.0, 0.5), n_trials=2, n_jobs=1).sweep([])
    assert str(e.value).startswith("cannot open the Optuna study storage") or "optuna.db" in str(
        e.value
    )
    assert "\n" not in str(e.value) and e.value.__cause__ is None
