"""Train one configuration, or sweep many with -m. See README.md and conf/train.yaml."""

import sys

import hydra
from omegaconf import DictConfig

import sweeplab
from sweeplab.errors import SweeplabError


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = sweeplab.train(cfg)
    except SweeplabError as e:  # bad input: one clear line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # The value returned is what a sweeper (e.g. Optuna) optimises.
    return metrics[cfg.optimized_metric]


if __name__ == "__main__":
    main()
