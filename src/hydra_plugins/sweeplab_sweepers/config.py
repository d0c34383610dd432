"""The sweeper's config, and the sampler and pruner options, registered with Hydra's
ConfigStore when Hydra scans its plugins (this module must stay cheap to import)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SweeplabBasicConf:
    """Hydra's grid sweeper plus `sweep.seeds` (sweeplab's default sweeper, conf/train.yaml)."""

    _target_: str = "hydra_plugins.sweeplab_sweepers.basic_sweeper.SweeplabBasicSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


@dataclass
class SweeplabOptunaConf:
    _target_: str = "hydra_plugins.sweeplab_sweepers.optuna_sweeper.SweeplabOptunaSweeper"
    _recursive_: bool = False  # sampler and pruner stay configs: seeded / rebuilt in each job
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING  # seed null = the config's trainer.seed
    pruner: Any = MISSING
    # "maximize" / "minimize", or a list of them, one per entry of the list `optimized_metric`
    direction: Any = "maximize"
    storage: str | None = (
        None  # null: beside the tracking store (sweeplab.sweep.search.storage_url)
    )
    study_name: str | None = None  # null: the sweep id, so launching again continues the study
    n_trials: int = 20  # finished + pruned + failed trials the study ends with
    n_jobs: int = 1  # trials in flight at once (needs a parallel launcher: joblib, submitit)
    max_failure_rate: float = 0.5  # stop once more than this fraction of n_trials failed
    params: dict[str, str] | None = None  # key: choice(...) / interval(a,b) / tag(log, ...) / range


SAMPLERS = {
    "tpe": {
        "_target_": "optuna.samplers.TPESampler",
        "seed": None,
        "n_startup_trials": 10,
        "multivariate": False,
    },
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "n_startup_trials": 1},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol"},
}
PRUNERS = {
    # Stop a trial whose best value by an epoch is below the median of the finished trials at
    # that epoch. Steps are epochs (1, 2, ...) and Optuna judges step >= n_warmup_steps: 2 never
    # judges epoch 1, whose accuracy hardly predicts the end (docs/benchmarks.md, Optuna search).
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 2,
        "interval_steps": 1,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        "min_resource": "auto",
        "reduction_factor": 4,
        "min_early_stopping_rate": 0,
    },
    "none": {"_target_": "optuna.pruners.NopPruner"},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="sweeplab_basic", node=SweeplabBasicConf, provider="sweeplab")
cs.store(
    group="hydra/sweeper", name="sweeplab_optuna", node=SweeplabOptunaConf, provider="sweeplab"
)
for name, node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="sweeplab")
for name, node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="sweeplab")
