"""The training's MLflow side, as a hook of `Trainer.fit`: each epoch's metrics on the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweeplab.train.hooks import Hook

if TYPE_CHECKING:
    from sweeplab.train.trainer import Trainer


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "epoch"}


class MetricLogger(Hook):
    """Logs each epoch's metrics at step = epoch (and, for a compiled model, the first step's
    time as `compile_time_s`); `run` is a sweeplab.track.tracking.Run."""

    def __init__(self, run, compiled: bool):
        self.run, self.compiled = run, compiled

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], improved: bool) -> bool:
        if row["epoch"] == 1 and self.compiled:
            self.run.log_metrics({"compile_time_s": row["first_step_time_s"]}, step=0)
        self.run.log_metrics(epoch_metrics(row), step=int(row["epoch"]))
        return False
