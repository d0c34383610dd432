"""Train one configuration, or sweep many with -m. See README.md and conf/train.yaml."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweeplab.config.command_line import command_line_problem
from sweeplab.errors import SweeplabError


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | list[float]:
    # Here, not at the top: `--help`, `--cfg job` and a refused command line need no torch,
    # MLflow or Optuna (~3 s of imports)
    from sweeplab.job import train
    from sweeplab.sweep.search import optimized_values

    try:
        metrics = train(cfg)
    except SweeplabError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # this job fails, the sweep goes on; the summary lists it at the end
        print(f"error: {e}", file=sys.stderr)  # bad input: one clear line, not a traceback
        sys.exit(2)
    # The value returned is what a sweeper (e.g. Optuna) optimises: one metric, or a list.
    return optimized_values(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    # What Hydra would report as a traceback or its own message with exit 1: one line, exit 2
    if problem := command_line_problem(sys.argv[1:], Path(__file__).parents[1] / "conf"):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # the run was already closed as KILLED
        sys.exit(130)
