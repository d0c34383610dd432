"""MLflow: store set-up, one run's lifecycle and status, params, metrics, tags and artifacts.

Uses `MlflowClient` with explicit run ids rather than the fluent `mlflow.start_run` API, so no
"active run" is global state that could leak from one job into the next in the same process.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
BATCH = 100  # params/tags per log_batch call


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def prepare_store(uri: str, root: str, experiment: str) -> str:
    """Create the store (and its directory) and the experiment if needed; return its id.

    Safe to call from many jobs at once: a lost creation race just reads the winner's id.
    """
    from mlflow.exceptions import MlflowException

    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    if local:
        Path(root).mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    artifacts = (Path(root) / "artifacts" / _safe_dirname(experiment)).as_uri() if local else None
    try:
        return client.create_experiment(experiment, artifact_location=artifacts)
    except MlflowException:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name) or "experiment"


class PrepareStoreCallback(Callback):
    """Hydra callback: set up store and experiment once, before any job of a run or sweep.

    The config is validated first, so bad input ends with one message and creates nothing.
    """

    def _prepare(self, config: DictConfig) -> None:
        from sweeplab.errors import SweeplabError
        from sweeplab.schema import validate

        try:
            validate(config)
        except SweeplabError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        t = config.tracking
        prepare_store(t.uri, t.root, t.experiment)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)
        # Jobs name their runs after the swept keys only; workers inherit the environment.
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(list(config.hydra.overrides.task)))


SWEPT_KEYS_ENV = "SWEEPLAB_SWEPT_KEYS"


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys a sweep varies (`optimizer=sgd,adam`, `lr=range(...)`), from its overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


# --- params ----------------------------------------------------------------------------------


def flatten_config(cfg: DictConfig, launch_dir: Path) -> dict[str, str]:
    """The resolved config as flat `group.key` -> string params, without machine paths."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = _param_value(node, launch_dir)

    walk("", container)
    return {_shorten_key(k): v for k, v in flat.items()}


def _param_value(value: Any, launch_dir: Path) -> str:
    if isinstance(value, enum.Enum):
        value = value.name
    text = "null" if value is None else str(value)
    text = relativize_paths(text, launch_dir)
    if len(text) > MAX_PARAM_VALUE:
        marker = "...[truncated]"
        text = text[: MAX_PARAM_VALUE - len(marker)] + marker
    return text


def relativize_paths(text: str, launch_dir: Path) -> str:
    """Absolute paths (also inside sqlite:/// and file:// URIs) -> relative to the launch dir."""
    for prefix in ("sqlite:///", "file://", ""):
        if text.startswith(prefix) and os.path.isabs(text[len(prefix) :]):
            return prefix + os.path.relpath(text[len(prefix) :], launch_dir)
    return text


def _shorten_key(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    import hashlib

    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return key[: MAX_KEY - 9] + "~" + digest


# --- git -------------------------------------------------------------------------------------


def git_state(cwd: Path) -> dict[str, str]:
    """{'git.commit': sha, 'git.dirty': 'true'|'false'}, or {} outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git.commit": sha.stdout.strip(), "git.dirty": str(bool(status.stdout.strip())).lower()}


# --- one run ---------------------------------------------------------------------------------


class Run:
    """One MLflow run, addressed by id: everything a training job logs goes through here."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_PARAM_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All values of one step in one call (one DB transaction)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


@contextlib.contextmanager
def tracked_run(
    uri: str, experiment_id: str, run_name: str | None, tags: dict[str, str]
) -> Iterator[Run]:
    """Create a run; end it FINISHED, or FAILED / KILLED with the traceback logged, re-raising."""
    client = _client(uri)
    info = client.create_run(experiment_id, run_name=run_name, tags=tags).info
    run = Run(client, info.run_id)
    try:
        yield run
    except BaseException as e:
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED"
        with contextlib.suppress(Exception):  # never mask the original error
            run.set_tags({"error": f"{type(e).__name__}: {e}"[:500]})
            run.log_text(traceback.format_exc(), "error/traceback.txt")
        client.set_terminated(run.run_id, status=status)
        log.error("run %s ended %s: %s: %s", run.run_id, status, type(e).__name__, e)
        raise
    client.set_terminated(run.run_id, status="FINISHED")


def write_config_files(cfg: DictConfig, output_dir: Path) -> tuple[Path, Path]:
    """Hydra's saved config/overrides of this job, or (outside Hydra) the same files made here."""
    hydra_dir = output_dir / ".hydra"
    config, overrides = hydra_dir / "config.yaml", hydra_dir / "overrides.yaml"
    if not config.is_file():
        hydra_dir.mkdir(parents=True, exist_ok=True)
        plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        config.write_text(OmegaConf.to_yaml(plain))
    if not overrides.is_file():
        overrides.write_text(OmegaConf.to_yaml(ListConfig([])))
    return config, overrides
