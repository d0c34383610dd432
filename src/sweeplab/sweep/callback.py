"""sweeplab's Hydra callback (conf/train.yaml, `hydra.callbacks`), as Hydra sees it: a thin shell
around sweep/jobs.py's SweepLifecycle.

Hydra instantiates callbacks before any job, in every launch. The config is validated here
first, with only the config's own targets imported; the implementation (torch, MLflow, Optuna,
matplotlib: ~5 s on a small machine) is imported once it is valid, so a typo on the command
line is refused in about 2 s, not 8.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweeplab.config.redact import redact_logs
from sweeplab.config.schema import validate
from sweeplab.errors import SweeplabError


class PrepareStoreCallback(Callback):
    def __init__(self) -> None:
        self.lifecycle = None  # sweep.jobs.SweepLifecycle, once a valid config has been seen

    def _valid(self, config: DictConfig):
        validate(config)
        if self.lifecycle is None:
            # the seam: the implementation loads only for a config that can run
            from sweeplab.sweep.jobs import SweepLifecycle

            self.lifecycle = SweepLifecycle()
        return self.lifecycle

    def _start(self, config: DictConfig, hook: str) -> None:
        """The implementation's `hook` (on_run_start / on_multirun_start) for a valid config;
        bad input: one line, exit 2."""
        redact_logs("mlflow")
        try:
            getattr(self._valid(config), hook)(config)
        except SweeplabError as e:
            stop(e)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, "on_run_start")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, "on_multirun_start")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        redact_logs("mlflow")  # a job's own log handlers (Hydra sets them up per job)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # One rule for every sweep: a failed job makes the launch exit 1. Hydra's grid sweeper
        # raises the job's error itself (and skips this hook); a search goes on past failed
        # trials and ends here.
        if self.lifecycle is not None and self.lifecycle.finish():
            sys.exit(1)


def stop(error: SweeplabError) -> None:
    """Bad input found before any job: one line, exit 2, nothing else happens."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
