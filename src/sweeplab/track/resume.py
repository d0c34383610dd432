"""Resume: where to pick an interrupted run up (a last.pt file or a run id), when its resume
state can go (the run ended as intended), and SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from sweeplab.config.schema import ConfigError
from sweeplab.track.tracking import client as store_client
from sweeplab.train.checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger("sweeplab")


def load_resume_state(resume: str, uri: str, output_dir: Path, expected_hash: str) -> dict:
    """`trainer.resume` (a run id or a last.pt path) -> the checkpoint to continue from.

    Its best.pt is put in `output_dir/checkpoints/` too, so the best model so far survives.
    """
    ckpt_dir = output_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    as_path = Path(resume)
    if as_path.suffix in (".pt", ".pth") or as_path.exists():
        state = load_checkpoint(as_path)
        best = as_path.parent / "best.pt"
        if best.is_file() and best.resolve() != (ckpt_dir / "best.pt").resolve():
            shutil.copy2(best, ckpt_dir / "best.pt")
    else:
        state = _download_from_run(resume, uri, output_dir)
    if not {"mlflow_run_id", "config_hash", "epoch", "optimizer"} <= set(state):
        raise CheckpointError(f"trainer.resume={resume}: not a sweeplab last.pt checkpoint")
    if state["config_hash"] != expected_hash:
        raise ConfigError(
            f"trainer.resume={resume}: the checkpoint was made by a different config "
            f"(hash {state['config_hash']}, this one {expected_hash}); resume with the original "
            "overrides (the run's tag sweeplab.overrides) plus trainer.resume"
        )
    return state


def drop_resume_state(run, output_dir: Path) -> None:
    """A run that FINISHED (or was pruned) is never resumed, so its last.pt, a full training
    state (weights, optimizer, RNGs), goes from the store and from the job's folder."""
    try:
        run.delete_artifact("checkpoints/last.pt")
    except Exception as e:  # the run itself is complete: a leftover file is only space
        log.warning("could not remove checkpoints/last.pt of run %s: %s", run.run_id, e)
    (output_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)


def _download_from_run(run_id: str, uri: str, output_dir: Path) -> dict[str, Any]:

    client = store_client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"trainer.resume={run_id}: no such run in {uri} (and no such checkpoint file)"
        ) from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"trainer.resume={run_id}: that run already FINISHED; nothing to resume")
    ckpt_dir = output_dir / "checkpoints"
    # downloaded beside the job's folder and read into memory: the job writes its own last.pt
    with tempfile.TemporaryDirectory(prefix=".resume-", dir=output_dir) as tmp:
        try:
            path = client.download_artifacts(run_id, "checkpoints/last.pt", tmp)
        except (MlflowException, OSError):
            raise CheckpointError(
                f"trainer.resume={run_id}: the run has no checkpoints/last.pt (it stopped before "
                "finishing its first epoch); start it again instead"
            ) from None
        try:  # the best model so far: needed if no later epoch beats it
            best = client.download_artifacts(run_id, "checkpoints/best.pt", tmp)
        except (MlflowException, OSError):
            raise CheckpointError(
                f"trainer.resume={run_id}: the run has no checkpoints/best.pt"
            ) from None
        shutil.move(best, ckpt_dir / "best.pt")
        return load_checkpoint(path)


@contextlib.contextmanager
def sigterm_exits():
    """SIGTERM raises SystemExit(143), so the run is closed KILLED instead of vanishing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
