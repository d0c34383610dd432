"""A sweep on a SLURM cluster (`hydra/launcher=slurm`): what can be checked before anything is
submitted, so a launch that cannot reach a scheduler is one line and creates nothing."""

from __future__ import annotations

import shutil
import subprocess

from omegaconf import DictConfig

from sweeplab.config.schema import ConfigError

SLURM_LAUNCHER = "SlurmLauncher"  # hydra-submitit-launcher's class


def check_launcher(config: DictConfig) -> None:
    """For the SLURM launcher: `sbatch` on PATH, and `hydra.launcher.partition` (when set) one
    that `sinfo` lists. Any other launcher: nothing to check."""
    launcher = config.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith(SLURM_LAUNCHER):
        return
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "hydra/launcher=slurm needs SLURM's sbatch on PATH (not found): launch from a "
            "login node of the cluster, or use hydra/launcher=joblib / submitit_local here"
        )
    partition = launcher.get("partition")
    if not partition:
        return
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return  # sinfo unusable: sbatch will say what is wrong at submission
    known = sorted({p.rstrip("*") for p in out.split()})
    if str(partition) not in known:
        raise ConfigError(
            f"hydra.launcher.partition={partition}: no such partition on this cluster "
            f"(sinfo lists {', '.join(known) or 'none'})"
        )
