"""What the running Hydra job is: single run or sweep job, its MLflow run name and tags."""

from __future__ import annotations

import os
import shlex
from typing import Any

from omegaconf import DictConfig

from sweeplab.params import git_state, relativize_paths
from sweeplab.redact import env_sourced_keys, redact_flat, redacted_overrides
from sweeplab.schema import launch_dir
from sweeplab.sweep import SWEPT_KEYS_ENV, in_multirun


def job_info(cfg: DictConfig) -> dict[str, Any]:
    """Run name and tags: overrides, Hydra dirs, git state and a command to reproduce the run."""
    from hydra.core.hydra_config import HydraConfig

    overrides: list[str] = []  # redacted below: values of secret-looking keys never logged
    tags = {**git_state(launch_dir())}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = redacted_overrides(hc.overrides.task)
        tags["hydra.output_dir"] = relativize_paths(hc.runtime.output_dir, launch_dir())
        if in_multirun():
            tags["hydra.sweep_dir"] = relativize_paths(hc.sweep.dir, launch_dir())
            tags["hydra.job_num"] = str(hc.job.num)
    if cfg.tracking.source_run_id:
        tags["sweeplab.source_run_id"] = cfg.tracking.source_run_id
    # Paths and tracking settings say where a run went, not what it was: keep them out of names.
    semantic = [o for o in overrides if not o.lstrip("+~").startswith(("tracking.", "output_dir"))]
    swept = os.environ.get(SWEPT_KEYS_ENV, "").split(",")
    if tags.get("hydra.sweep_dir") and any(swept):
        semantic = [o for o in semantic if o.split("=", 1)[0] in swept] or semantic
    tags["sweeplab.overrides"] = " ".join(overrides)
    tags["sweeplab.reproduce"] = " ".join(["python", "src/train.py", *map(shlex.quote, overrides)])
    if "hydra.output_dir" in tags:  # the job's saved config, run again as it was
        tags["sweeplab.reproduce_config"] = (
            f"python src/train.py --config-path $PWD/{tags['hydra.output_dir']}/.hydra "
            "--config-name config"
        )
    name = cfg.tracking.run_name or (",".join(semantic) if semantic else "defaults")
    if cfg.tracking.run_name:  # a name may be read from the environment too: same rule
        name = redact_flat({"tracking.run_name": name}, env_sourced_keys(cfg))["tracking.run_name"]
    return {"run_name": name[:250], "tags": tags}
