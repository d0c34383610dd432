"""Typed top-level config, and up-front validation of the composed config.

The top level and the `trainer`/`tracking`/`sweep` sections are dataclasses (Hydra checks them
while composing) that give types only: every value is written once, in conf/ (train.yaml,
trainer/default.yaml, tracking/default.yaml). The other groups are `_target_` + knobs;
`validate` checks their knobs against the target's own signature, so a schema can never drift
from the code that uses it.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from sweeplab.errors import SweeplabError


class ConfigError(SweeplabError, ValueError):
    """A config value is wrong; the message names the key and says what would be right."""


def option(value: enum.Enum | str) -> str:
    """An enum knob as its string: typed configs give the enum, a re-run's saved config a str."""
    return value.value if isinstance(value, enum.Enum) else str(value)


class Amp(enum.Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class Strategy(enum.Enum):
    single = "single"  # one process, one device
    ddp = "ddp"  # DistributedDataParallel, one process per device, launched by torchrun


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    seed: int = MISSING
    deterministic: bool = MISSING
    amp: Amp = MISSING
    label_smoothing: float = MISSING
    grad_clip: float | None = MISSING
    early_stopping: int = MISSING
    num_threads: int | None = MISSING
    resume: str | None = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    strategy: Strategy = MISSING


@dataclass
class TrackingConfig:
    root: str = MISSING
    uri: str = MISSING
    experiment: str = MISSING
    run_name: str | None = MISSING
    source_run_id: str | None = MISSING
    study_storage: str | None = MISSING  # Optuna storage URL; null: sqlite beside a local store
    log_model: bool = MISSING  # the best checkpoint as an MLflow logged model (logged_model.py)
    system_metrics: bool = MISSING  # MLflow's system/* metrics, sampled every ..._interval s
    system_metrics_interval: float = MISSING
    keep_last_checkpoint: bool = MISSING  # keep last.pt once a run has ended as intended


@dataclass
class SweepConfig:
    rerun_finished: bool = MISSING
    dry_run: bool = MISSING
    seeds: int = MISSING  # > 1: every configuration with seeds trainer.seed, +1, ... (mean +- std)
    study: str | None = MISSING  # set by the Optuna sweeper on each job: its study and trial
    trial: int | None = MISSING
    register_best: str | None = MISSING  # a registered model name: the sweep's best run's model


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    augmentation: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    output_dir: str = MISSING
    optimized_metric: Any = MISSING  # a metric name, or a list (multi-objective)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# --- validation -----------------------------------------------------------------------------

TARGET_GROUPS = ("dataset", "model", "optimizer", "scheduler", "augmentation")
# Arguments the code passes itself when it calls a group's target, so configs must not set them.
CALL_ARGS = {"params", "optimizer", "steps_per_epoch", "epochs", "device", "seed"}

# (key, check, what a valid value looks like)
RANGE_CHECKS = [
    ("optimizer.lr", lambda v: v > 0, "a number > 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, "a number >= 0"),
    ("trainer.epochs", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("trainer.grad_clip", lambda v: v is None or v > 0, "null or a number > 0"),
    ("trainer.early_stopping", lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    ("trainer.num_threads", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("dataset.val_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
    ("dataset.train_subset", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("augmentation.alpha", lambda v: v > 0, "a number > 0 (the Beta(alpha, alpha) of the mix)"),
    ("augmentation.hflip_p", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("sweep.seeds", lambda v: v >= 1, "an integer >= 1 (seeds per configuration)"),
    ("tracking.system_metrics_interval", lambda v: v > 0, "a number of seconds > 0"),
]


def validate(cfg: DictConfig) -> None:
    """Check the whole composed config before any work starts; raise ConfigError naming the key."""
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(
            "mandatory values not set (???): "
            + ", ".join(missing)
            + " — set them on the command line, e.g. "
            + f"{missing[0]}=<value>"
        )
    for group in TARGET_GROUPS:
        _check_against_target(group, cfg[group])
    for key, ok, expected in RANGE_CHECKS:
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>":
            continue
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")
    device = str(cfg.trainer.device)
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        raise ConfigError(
            f"trainer.device={device!r} is invalid: expected auto, cpu, cuda, cuda:N or mps"
        )
    channels = OmegaConf.select(cfg, "dataset.in_channels")
    for key in ("mean", "std"):  # one value per channel (else Normalize broadcasts silently)
        values = OmegaConf.select(cfg, f"dataset.{key}")
        if channels is not None and values is not None and len(values) != channels:
            raise ConfigError(
                f"dataset.{key} has {len(values)} values but dataset.in_channels={channels}: "
                f"give one per channel, e.g. dataset.{key}=[{', '.join(['0.5'] * channels)}]"
            )
    experiment = OmegaConf.select(cfg, "tracking.experiment")
    if experiment is not None and not str(experiment).strip():
        raise ConfigError(
            f"tracking.experiment={str(experiment)!r} is empty: give the experiment a name, or "
            "leave it out (the dataset's name is the default)"
        )
    if cfg.sweep.register_best and not cfg.tracking.log_model:
        raise ConfigError(
            f"sweep.register_best={cfg.sweep.register_best} registers the best run's logged "
            "model, but tracking.log_model=false logs none: drop one of the two"
        )


def _missing_keys(node: DictConfig | ListConfig) -> list[str]:
    """Keys still `???`, found without resolving interpolations (they may need Hydra)."""
    found = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "hydra" or key:
                    walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif value == "???":
            found.append(key)

    walk(OmegaConf.to_container(node, resolve=False), "")
    return found


def _check_against_target(group: str, node: DictConfig) -> None:
    target = node.get("_target_")
    if target is None:
        raise ConfigError(f"{group}: no _target_ (the function or class that builds it)")
    try:
        fn = get_object(target)
    except Exception as e:  # hydra wraps import problems in several exception types
        raise ConfigError(f"{group}._target_={target!r} cannot be imported: {e}") from None
    sig = inspect.signature(fn)
    params = dict(sig.parameters)
    params.pop("self", None)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = _type_hints(fn)
    for key in node:
        if str(key).startswith("_"):
            continue
        if key in CALL_ARGS:
            raise ConfigError(f"{group}.{key} is set by sweeplab itself; remove it")
        if key not in params:
            if takes_kwargs:
                continue
            valid = ", ".join(k for k in params if k not in CALL_ARGS)
            raise ConfigError(f"{group}.{key} is not a knob of {target}; valid knobs: {valid}")
        expected = hints.get(key)
        value = node[key]
        if expected is not None and not _matches(value, expected):
            raise ConfigError(
                f"{group}.{key}={value!r} has the wrong type: expected {_type_name(expected)}"
            )


def _type_hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # unresolvable forward references: skip type checks, keep key checks
        return {}


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (ListConfig, list, tuple))
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (bool, str):
        return isinstance(value, expected)
    if isinstance(expected, type):  # e.g. torch.Tensor: no YAML value is one
        return isinstance(value, expected)
    return True  # Callable[...] and other typing forms: nothing YAML could match, so no check


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
