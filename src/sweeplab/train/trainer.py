"""The Trainer: owns what one configuration trains with, runs the epochs, calls hooks.

    trainer = Trainer.from_config(cfg, where)   # data, model, optimizer, scheduler, ...
    history = trainer.fit(hooks)                # epochs; hooks checkpoint, log, stop early
    test = trainer.evaluate(trainer.data.test)  # once, with the weights chosen on validation

Nothing here knows about MLflow or sweeps: logging, checkpoints, pruning and early stopping are
`Hook`s that the packages owning them pass to `fit`. The loop that touches batches is loop.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from sweeplab.errors import SweeplabError
from sweeplab.train import distributed
from sweeplab.train.augment import Normalize
from sweeplab.train.checkpoint import restore_training_state, training_state
from sweeplab.train.hooks import Hook
from sweeplab.train.loop import Progress, evaluate, train_epoch
from sweeplab.train.optim import build_optimizer

log = logging.getLogger("sweeplab")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own clear errors surface as themselves, not wrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, SweeplabError):
            raise e.__cause__ from None
        raise


@dataclass
class Where:
    device: torch.device
    ranks: distributed.Ranks
    amp: str  # none | bf16 | fp16


@dataclass
class FitState:
    """Where the epochs stand: what last.pt saves and a resume restores."""

    epoch: int = 0  # the last epoch done
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Model, optimizer, scheduler, scaler, augmentation, normalisation and random generators
    of one training, with the epochs done so far."""

    def __init__(self, cfg: DictConfig, where: Where):
        tc, device = cfg.trainer, where.device
        self.where, self.epochs, self.grad_clip = where, tc.epochs, tc.grad_clip
        self.batch_size, self.eval_batch_size = tc.batch_size, tc.eval_batch_size
        self.data = build(cfg.dataset, device=device, seed=tc.seed)
        self.model = build(cfg.model).to(device)  # holds the weights
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(build(cfg.optimizer), self.model)
        self.net = self.model  # runs the batches: the model, wrapped by DDP and/or compile
        if where.ranks.active:
            ids = [device.index] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        if tc.compile:
            self.net = torch.compile(self.net)
        self.steps_per_epoch = self.data.train.num_batches(tc.batch_size, drop_last=True)
        self.scheduler = build(cfg.scheduler)(
            self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=tc.epochs
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=where.amp == "fp16")
        self.augment = build(cfg.augmentation)
        self.normalize = Normalize(self.data.mean, self.data.std, device, tc.channels_last)
        self.train_loss = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
        self.generators = {
            "shuffle": torch.Generator().manual_seed(tc.seed),
            "augment": torch.Generator(device).manual_seed(tc.seed + 1 + where.ranks.rank),
        }
        self.progress = FitState()

    # --- the epochs ------------------------------------------------------------------------

    def fit(self, hooks: list[Hook]) -> list[dict[str, float]]:
        """Train the epochs left; after each, validate and call the hooks in order (the
        first that says stop ends training after this epoch; the hooks after it are not
        called), then log the epoch's line. Returns the history of every epoch."""
        for hook in hooks:
            hook.on_fit_start(self)
        for epoch in range(self.progress.epoch + 1, self.epochs + 1):
            stats = self.train_epoch(epoch)
            val_loss, val_acc, _ = self.evaluate(self.data.val)
            row = {"epoch": epoch, **stats, "val_loss": val_loss, "val_acc": val_acc}
            improved = val_acc > self.progress.best_acc
            self.progress.history.append(row)
            self.progress.epoch = epoch
            if improved:
                self.progress.best_acc, self.progress.best_epoch = val_acc, epoch
            stop = any(hook.on_epoch_end(self, row, improved) for hook in hooks)
            # After the hooks: once this line shows, the epoch's checkpoint and metrics exist
            log.info(
                "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  "
                "lr %.2e  %.1fs  %.0f img/s%s",
                *(epoch, self.epochs, row["train_loss"], row["train_acc"], val_loss, val_acc),
                *(row["lr"], row["epoch_time_s"], row["train_images_per_s"]),
                "  *best" if improved else "",
            )
            if stop:
                break
        return self.progress.history

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch over the training split (this rank's shard of it under DDP)."""
        progress = Progress(self.steps_per_epoch, f"epoch {epoch}/{self.epochs}")
        batches = self.data.train.batches(
            self.batch_size, True, self.generators["shuffle"], drop_last=True
        )
        stats = train_epoch(
            self.net,
            distributed.shard(batches, self.where.ranks),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            loss_fn=self.train_loss,
            augment=self.augment,
            normalize=self.normalize,
            generator=self.generators["augment"],
            device=self.where.device,
            amp=self.where.amp,
            scaler=self.scaler,
            grad_clip=self.grad_clip,
            on_step=progress,
            epoch=epoch,
            reduce=self._reduce,
        )
        progress.close()
        return stats

    def evaluate(self, split) -> tuple[float, float, torch.Tensor]:
        """(loss, accuracy, confusion) over the whole split, across DDP ranks; never augmented."""
        return evaluate(
            self.net,
            distributed.shard(split.batches(self.eval_batch_size), self.where.ranks),
            normalize=self.normalize,
            loss_fn=torch.nn.CrossEntropyLoss(),
            num_classes=len(self.data.classes),
            device=self.where.device,
            amp=self.where.amp,
            reduce=self._reduce,
        )

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(t, self.where.ranks)

    # --- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bitwise-exactly after the last epoch done."""
        p = self.progress
        return training_state(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            generators=self.generators,
            epoch=p.epoch,
            best_acc=p.best_acc,
            best_epoch=p.best_epoch,
            history=p.history,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` (a last.pt) left off."""
        restore_training_state(
            state,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            generators=self.generators,
        )
        self.progress = FitState(
            state["epoch"], state["best_acc"], state["best_epoch"], state["history"]
        )

    def train_time_s(self) -> float:
        return float(sum(row.get("epoch_time_s", 0.0) for row in self.progress.history))
