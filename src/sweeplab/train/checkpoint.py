"""Checkpoints: written atomically, read back with `weights_only=True` only.

A checkpoint is a dict of tensors and plain Python values (str, int, float, bool, list, dict,
None), so `torch.load(path, weights_only=True)` can read it without trusting pickled code.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sweeplab.errors import SweeplabError
from sweeplab.train.hooks import Hook

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from sweeplab.train.trainer import Trainer


class CheckpointError(SweeplabError, RuntimeError):
    """A checkpoint is missing, truncated, or not loadable safely."""


# Bumped whenever the layout of best.pt / last.pt changes; load_checkpoint refuses formats it
# does not know. Checkpoints written before the field existed have the layout of format 1.
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to a temp file beside `path`, fsync it, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _caused_by(e, errno.ENOSPC, errno.EDQUOT):  # torch says "unexpected pos" first
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(
                f"cannot write checkpoint {path}: no space left on device ({free / 2**20:.0f} "
                "MiB free there); free some space or point output_dir elsewhere"
            ) from None
        raise
    return path


def _caused_by(error: BaseException | None, *codes: int) -> bool:
    """Whether an OSError with one of `codes` is anywhere in the chain that led to `error`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in codes:
            return True
        error = error.__cause__ or error.__context__
    return False


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (e.g. {path}/last.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty: truncated or corrupt")
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save's zip, legacy pickle
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this file "
            f"starts with {head!r})"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects beyond tensors and plain values, which sweeplab refuses to "
            f"unpickle (weights_only=True): {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is truncated or corrupt: {e}") from None
    version = state.get("format_version", 1) if isinstance(state, dict) else 1
    if version != FORMAT_VERSION:  # a plain state_dict (model.weights) carries no version
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}, written by a "
            f"{'newer' if newer else 'different'} sweeplab; this one reads format "
            f"{FORMAT_VERSION}: load it with the version that wrote it"
        )
    return state


# --- resume state ------------------------------------------------------------------------------


def training_state(
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    generators: dict[str, torch.Generator],
    epoch: int,
    best_acc: float,
    best_epoch: int,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """Everything needed to continue bitwise-exactly after `epoch` (plain types and tensors)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **{name: g.get_state() for name, g in generators.items()},
        },
        "epoch": epoch,
        "best_acc": float(best_acc),
        "best_epoch": best_epoch,
        "history": [dict(row) for row in history],
    }


def restore_training_state(
    state: dict[str, Any], *, model, optimizer, scheduler, scaler, generators
) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for name, g in generators.items():
        g.set_state(rng[name])


def model_checkpoint(
    model: torch.nn.Module,
    model_config: dict,
    dataset: str,
    classes: list[str],
    epoch: int,
    val_acc: float,
) -> dict[str, Any]:
    """best.pt: model weights plus plain-typed metadata (readable with weights_only=True)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "val_acc": float(val_acc),
        "classes": list(classes),
        "model_config": model_config,
        "dataset": dataset,
    }


# --- the hook that writes them during fit -----------------------------------------------------


class CheckpointSaver(Hook):
    """Keeps best.pt (the best weights by val_acc, with what rebuilds the model) and last.pt
    (the whole training state, to resume from) in `folder` after each epoch; `saved(path)` is
    called with each file written (e.g. to log it). With `folder=None` (DDP ranks other than
    0, which write nothing) the best weights are kept in memory instead."""

    def __init__(
        self,
        folder: Path | None,
        *,
        model_config: dict,
        dataset: str,
        resume_extra: dict[str, Any],
        saved=lambda path: None,
    ):
        self.folder, self.model_config, self.dataset = folder, model_config, dataset
        self.resume_extra, self.saved = resume_extra, saved
        self._in_memory: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], improved: bool) -> bool:
        if self.folder is None:
            if improved:
                self._in_memory = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            return False
        if improved:
            ckpt = model_checkpoint(
                trainer.model,
                self.model_config,
                self.dataset,
                trainer.data.classes,
                int(row["epoch"]),
                row["val_acc"],
            )
            self.saved(save_checkpoint(ckpt, self.folder / "best.pt"))
        # last.pt before the metrics are logged: a resume re-logs what a kill cut off
        state = {**trainer.state_dict(), **self.resume_extra}
        self.saved(save_checkpoint(state, self.folder / "last.pt"))
        return False

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The weights of the best epoch, from best.pt (or memory)."""
        if self.folder is None:
            return self._in_memory
        return load_checkpoint(self.folder / "best.pt")["model"]
