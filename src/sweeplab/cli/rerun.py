"""Re-run a tracked run from its MLflow run id: `sweeplab-rerun <run id> [overrides...]`.

Fetches the run's logged `hydra/config.yaml`, composes it (plus any overrides) and trains it
again as a new run tagged `sweeplab.source_run_id=<run id>`. Same seed on CPU: same metrics.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, OverrideParseException
from mlflow.exceptions import MlflowException

from sweeplab.errors import SweeplabError
from sweeplab.job import train
from sweeplab.track import environment
from sweeplab.track.tracking import client as store_client
from sweeplab.track.tracking import default_uri

log = logging.getLogger(__name__)


class RerunError(SweeplabError, RuntimeError):
    """The source run or its config cannot be found."""


def fetch_config(run_id: str, tracking_uri: str, dest: Path) -> tuple[Path, Any]:
    """Download the run's logged config into `dest`; returns (its path, the run)."""

    client = store_client(tracking_uri)
    try:
        source = client.get_run(run_id)
    except MlflowException:
        raise RerunError(f"no run {run_id!r} in the tracking store {tracking_uri}") from None
    try:
        path = Path(client.download_artifacts(run_id, "hydra/config.yaml", str(dest)))
    except (MlflowException, OSError):
        raise RerunError(
            f"run {run_id} has no hydra/config.yaml artifact, so it cannot be re-run "
            "(was it logged by sweeplab?)"
        ) from None
    return path, source


# Modules that moved into sweeplab.train (2026-12-04): a run recorded before names its parts by
# the old paths in its config.yaml, e.g. `_target_: sweeplab.models.simple_cnn`.
_MOVED = re.compile(r"(_target_: )sweeplab\.(models|data|augment|mixing|optim)\.")


def current_targets(config_yaml: str) -> str:
    """A logged config.yaml with `_target_` paths of the current layout (pure)."""
    return _MOVED.sub(r"\1sweeplab.train.\2.", config_yaml)


def quoted(value: str) -> str:
    """A value as a quoted Hydra override value: spaces, `=` and `,` in a path stay its own.
    (Hydra reads a backslash as an escape only before a quote: those, and quotes, doubled.)"""
    body = value.replace("'", "\\'")
    trailing = len(body) - len(body.rstrip("\\"))
    return f"'{body}{chr(92) * trailing}'"


def rerun(
    run_id: str,
    overrides: list[str] | tuple[str, ...] = (),
    tracking_uri: str | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Train the logged config of `run_id` again; returns the new run's metrics."""

    uri = tracking_uri or default_uri()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(output_dir or f"outputs/reruns/{stamp}_{run_id[:8]}").resolve()
    with tempfile.TemporaryDirectory(prefix="sweeplab-rerun-") as tmp:
        config, source = fetch_config(run_id, uri, Path(tmp))
        config.write_text(current_targets(config.read_text()))
        source_name = source.info.run_name
        if changed := environment.differences(source.data.tags):
            log.warning(
                "re-running %s in another environment than it ran in: %s",
                run_id,
                "; ".join(changed),
            )
        fixed = [f"output_dir={quoted(str(out))}", f"tracking.source_run_id={run_id}"]
        with initialize_config_dir(str(config.parent), version_base="1.3"):
            try:
                cfg = compose(config.stem, overrides=[*fixed, *overrides])
            except (ConfigCompositionException, OverrideParseException) as e:
                raise RerunError(str(e).splitlines()[0]) from None
        cfg.tracking.run_name = f"{source_name} (rerun)"
    return train(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweeplab-rerun", description="Re-run an MLflow run from its logged Hydra config."
    )
    parser.add_argument("run_id")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.epochs=20")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlruns")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    try:
        result = rerun(args.run_id, args.overrides, args.tracking_uri)
    except SweeplabError as e:
        print(f"sweeplab-rerun: error: {e}", file=sys.stderr)
        return 2
    print(f"new run {result['run_id']}: test_acc={result['test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
