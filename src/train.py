"""Train one configuration, or sweep many with -m. See README.md and conf/train.yaml."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import sweeplab
from sweeplab.errors import SweeplabError
from sweeplab.search import optimized_values


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | list[float]:
    try:
        metrics = sweeplab.train(cfg)
    except SweeplabError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # this job fails, the sweep goes on; the summary lists it at the end
        print(f"error: {e}", file=sys.stderr)  # bad input: one clear line, not a traceback
        sys.exit(2)
    # The value returned is what a sweeper (e.g. Optuna) optimises: one metric, or a list.
    return optimized_values(metrics, cfg.optimized_metric)


# Hydra's modes, of which one command may give one (Hydra itself raises a ValueError
# traceback for two of them, before any of this file's code can catch it).
MODES = {"--run": "-r", "--multirun": "-m", "--cfg": "-c", "--info": "-i"}


def modes_given(argv: list[str]) -> list[str]:
    given = {a.split("=", 1)[0] for a in argv}
    return [long for long, short in MODES.items() if long in given or short in given]


if __name__ == "__main__":
    if len(modes := modes_given(sys.argv[1:])) > 1:
        print(f"error: {' and '.join(modes)} cannot be combined: give one of them (to see a "
              "sweep job's config, drop -m: python src/train.py --cfg job <overrides>)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # the run was already closed as KILLED
        sys.exit(130)
