"""The training core on its own: a Trainer for a config, placed as a job would place it (device,
threads, seeds), with no tracking store, no exported model, no plots."""

from __future__ import annotations

from omegaconf import DictConfig

from sweeplab.job import place
from sweeplab.train.trainer import Trainer


def trainer_for(cfg: DictConfig) -> Trainer:
    return Trainer(cfg, place(cfg))


def history(h: list[dict]) -> list[dict]:
    """Per-epoch metrics without the timings (which differ between identical runs)."""
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in h]
