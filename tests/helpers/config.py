"""The repository's paths, every option of every config group, and hydra.compose of conf/."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import sweeplab.config  # noqa: F401  (registers the schema conf/train.yaml starts from)

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
TRAIN_SCRIPT = REPO / "src" / "train.py"

# Every option of every group, read from conf/ so a new option file is tested automatically.
GROUPS = {
    g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
    for g in ("dataset", "model", "optimizer", "scheduler", "augmentation")
}


def compose_cfg(overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


DATA_ENV = "SWEEPLAB_DATA_DIR"


def mnist_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeplab"
