"""What `Trainer.fit` calls around the epochs, and the training core's own hook (early
stopping). Tracking, checkpoints and pruning bring their own from the packages that own them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from sweeplab.train.trainer import Trainer

log = logging.getLogger("sweeplab")


class Hook:
    """What `Trainer.fit` calls around the epochs; a subclass overrides what it needs."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (a resumed trainer already holds its earlier history)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], improved: bool) -> bool:
        """After an epoch's validation; `row` is its metrics, `improved` whether val_acc is
        the best so far. True stops training after this epoch (later hooks are not called)."""
        return False


class EarlyStopping(Hook):
    """Stop when val_acc has not improved for `patience` epochs (0: never)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], improved: bool) -> bool:
        if self.patience and row["epoch"] - trainer.progress.best_epoch >= self.patience:
            log.info("early stop: no val_acc gain for %d epochs", self.patience)
            return True
        return False
