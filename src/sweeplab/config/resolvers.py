"""Where a run is: the launch directory (stable when Hydra changes into a job folder), paths
made absolute from it, whether this is a sweep's job; and the `${sweeplab.*:}` resolvers
conf/ uses (registered on import: sweeplab.config imports this module).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweeplab.config.schema import ConfigError


def launch_dir() -> Path:
    """The directory the user launched from, even if Hydra changed into a job directory."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra sweep (`-m`)."""
    mode = HydraConfig.get().mode if HydraConfig.initialized() else None
    return mode is not None and mode.name == "MULTIRUN"


def abspath(path: str) -> str:
    """Make `path` absolute relative to the launch directory (stable under hydra.job.chdir)."""
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (launch_dir() / p).resolve())


def data_root() -> str:
    return abspath(os.environ.get("SWEEPLAB_DATA_DIR") or "data")


def flip_p(p: float, *, _root_: DictConfig) -> float:
    """A flip probability, or 0 where the dataset says a mirrored image changes its class."""
    keeps = OmegaConf.select(_root_, "dataset.flips_keep_label", default=True)
    return float(p) if keeps else 0.0


def count_classes(root: str) -> int:
    """Number of class folders of an image folder (its train/ split if it has one)."""
    base = Path(abspath(root))
    if (base / "train").is_dir():
        base = base / "train"
    if not base.is_dir():
        raise ConfigError(f"dataset.root: image folder {base} does not exist")
    return sum(1 for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


for _name, _fn in {
    "sweeplab.abspath": abspath,
    "sweeplab.data_root": data_root,
    "sweeplab.count_classes": count_classes,
    "sweeplab.flip_p": flip_p,
}.items():
    OmegaConf.register_new_resolver(_name, _fn, replace=True)
