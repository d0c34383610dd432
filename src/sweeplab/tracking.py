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
import socket
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeplab.errors import SweeplabError
from sweeplab.redact import (
    env_sourced_keys,
    redact_config,
    redact_flat,
    redact_override,
    redact_uri,
)
from sweeplab.schema import abspath

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
BATCH = 100  # params/tags per log_batch call


class TrackingError(SweeplabError):
    """The tracking store cannot be used (unreachable, not writable, unknown run)."""


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=resolve_uri(uri))


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def resolve_uri(uri: str) -> str:
    """Relative local stores -> absolute from the launch dir: one store, whatever the job's cwd."""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = uri[len(prefix) :]
            return uri if os.path.isabs(path) else prefix + abspath(path)
    return abspath(uri) if "://" not in uri else uri


def ensure_writable(path: str | Path, what: str) -> None:
    """Create `path` and write a probe file in it, or raise one clear error before training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".sweeplab-probe-"):
            pass
    except OSError as e:
        raise TrackingError(f"{what}={path} is not writable: {e.strerror or e}") from None


def check_store(uri: str, root: str) -> None:
    """Fail fast: a local store must be writable, a server must answer."""
    if is_local(uri):
        ensure_writable(root, "tracking.root")
        db = resolve_uri(uri)
        if db.startswith("sqlite:///"):
            ensure_writable(Path(db[len("sqlite:///") :]).parent, "tracking.uri")
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise TrackingError(
            f"tracking server {redact_uri(uri)} is unreachable ({type(e).__name__}); start it, "
            "or point tracking.uri at a reachable server or a local sqlite:/// store"
        ) from None


@contextlib.contextmanager
def _store_lock(root: Path):
    """Serialise store/experiment creation across processes (sqlite set-up is not race-safe)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".sweeplab.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_store(uri: str, root: str, experiment: str) -> str:
    """Check the store, create it and the experiment if needed (once, under a lock); its id."""
    from mlflow.exceptions import MlflowException

    check_store(uri, root)
    local = is_local(uri)
    root_path = Path(abspath(root))
    with _store_lock(root_path) if local else contextlib.nullcontext():
        client = _client(uri)
        try:
            found = client.get_experiment_by_name(experiment)
        except MlflowException as e:  # /health answers even without credentials: ask for real
            raise TrackingError(
                f"tracking server {redact_uri(uri)} refused the request: {str(e)[:300]} "
                "(with basic auth set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
            ) from None
        if found is not None:
            return found.experiment_id
        artifacts = (
            (root_path / "artifacts" / _safe_dirname(experiment)).as_uri() if local else None
        )
        try:
            return client.create_experiment(experiment, artifact_location=artifacts)
        except MlflowException:  # another host created it first (server stores)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name) or "experiment"


# --- params ----------------------------------------------------------------------------------


def flatten_config(cfg: DictConfig, launch_dir: Path) -> dict[str, str]:
    """The resolved config as flat `group.key` -> string params, without machine paths or
    secrets (see redact.py)."""
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
    flat = redact_flat(flat, env_sourced_keys(cfg))
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
        # Metric writes go through one background thread (in order), so the training loop never
        # waits for the store. (MLflow's own synchronous=False costs ~0.5 s per run at
        # set_terminated: its logger thread is joined while it polls a queue every second.)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-metrics")
        self.pending: list = []

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
        """All values of one step in one batch, written by MLflow's background logger so the
        training loop does not wait for the store; `flush()` waits before the run ends."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            chunk = items[i : i + 1000]
            self.pending.append(self._writer.submit(self.client.log_batch, self.run_id, chunk))

    def flush(self) -> None:
        """Wait for every background write; raises if one of them failed."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def metric_history(self, key: str) -> list:
        return self.client.get_metric_history(self.run_id, key)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


class NullRun:
    """Stands in for a Run where nothing may be logged (DDP ranks other than 0)."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def tracked_run(
    uri: str,
    experiment_id: str,
    run_name: str | None,
    tags: dict[str, str],
    resume_run_id: str | None = None,
) -> Iterator[Run]:
    """Create (or reopen, to resume) a run; end it FINISHED, or FAILED / KILLED with the
    traceback logged, re-raising. A normal error never leaves it RUNNING."""
    client = _client(uri)
    if resume_run_id is None:
        run = Run(
            client, client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        )
    else:
        client.update_run(resume_run_id, status="RUNNING")
        run = Run(client, resume_run_id)
        run.set_tags({**tags, "sweeplab.resumed": "true"})
    try:
        yield run
        run.flush()
    except BaseException as e:
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED"
        with contextlib.suppress(AttributeError):  # tells train() this error has its run
            e.sweeplab_run_id = run.run_id
        with contextlib.suppress(Exception):  # never mask the original error
            run.flush()
            run.set_tags({"error": f"{type(e).__name__}: {e}"[:500]})
            run.log_text(traceback.format_exc(), "error/traceback.txt")
        run.close()
        client.set_terminated(run.run_id, status=status)
        log.error("run %s ended %s: %s: %s", run.run_id, status, type(e).__name__, e)
        raise
    run.close()
    client.set_terminated(run.run_id, status="FINISHED")


def process_tags() -> dict[str, str]:
    """Who runs this job: lets a later launch tell a dead RUNNING run from a live one."""
    return {"sweeplab.host": socket.gethostname(), "sweeplab.pid": str(os.getpid())}


def mark_stale_runs(uri: str, experiment_id: str, config_hash: str) -> list[str]:
    """End as KILLED the RUNNING runs of this config whose process (on this host) is gone."""
    client = _client(uri)
    query = f"tags.`sweeplab.config_hash` = '{config_hash}' and attributes.status = 'RUNNING'"
    stale = []
    for run in client.search_runs([experiment_id], query):
        tags = run.data.tags
        if tags.get("sweeplab.host") != socket.gethostname() or _alive(tags.get("sweeplab.pid")):
            continue
        client.set_tag(run.info.run_id, "sweeplab.stale", "process gone; marked KILLED")
        client.set_terminated(run.info.run_id, status="KILLED")
        stale.append(run.info.run_id)
    return stale


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def write_config_files(cfg: DictConfig, output_dir: Path) -> tuple[Path, Path]:
    """The job's config and overrides (Hydra's saved ones if any), secrets redacted, for logging.

    The config stays unresolved, as Hydra saves it: `${oc.env:...}` values are re-read from
    the environment when the run is re-run, never written down.
    """
    hydra_dir = output_dir / ".hydra"
    if (hydra_dir / "config.yaml").is_file():
        config = OmegaConf.load(hydra_dir / "config.yaml")
    else:
        config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else ListConfig([])
    out = output_dir / ".sweeplab"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(redact_config(config)))
    clean = ListConfig([redact_override(str(o)) for o in overrides])
    (out / "overrides.yaml").write_text(OmegaConf.to_yaml(clean))
    return out / "config.yaml", out / "overrides.yaml"
