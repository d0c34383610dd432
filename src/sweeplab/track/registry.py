"""The Model Registry: a sweep's best run's logged model as a new version of a registered model,
with the alias `best` moved to it (`models:/NAME@best`).

Used by `sweeplab-report <sweep | experiment> --register NAME` and, at the end of a sweep, by
`sweep.register_best=NAME`. The version is tagged with the sweep id and the commands that
reproduce the run, so a registered model leads back to how it was made.
"""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException

from sweeplab.errors import SweeplabError
from sweeplab.track import tracking
from sweeplab.track.logged_model import model_uri
from sweeplab.track.tags import REPRODUCE, SWEEP_ID

BEST_ALIAS = "best"


class RegistryError(SweeplabError):
    """Nothing to register (no finished run, no logged model) or the registry refused."""


def register_best(uri: str, sid: str, best_run, name: str):
    """Register the logged model of `best_run` (the best FINISHED run of sweep `sid`, as its
    report ranked it: anything with a run_id, or None) as a new version of `name`; alias
    `best` -> it."""
    if best_run is None:
        raise RegistryError(f"sweep {sid} has no FINISHED run, so no best model to register")
    client = tracking.client(uri)
    best_id = best_run.run_id
    best = client.get_run(best_id)
    source = model_uri(client, best_id)
    version_tags = {
        SWEEP_ID: sid,
        "sweeplab.run_id": best_id,
        REPRODUCE: best.data.tags.get(REPRODUCE, ""),
        "sweeplab.reproduce_run": f"sweeplab-rerun {best_id}",
    }
    metrics = best.data.metrics
    try:
        with tracking.fluent_uri(uri):
            version = mlflow.register_model(source, name, tags=version_tags)
        client.set_registered_model_alias(name, BEST_ALIAS, version.version)
        client.update_model_version(
            name,
            version.version,
            description=f"best of sweep {sid} ({best.info.run_name}): "
            f"best_val_acc={metrics.get('best_val_acc', float('nan')):.4f}, "
            f"test_acc={metrics.get('test_acc', float('nan')):.4f}",
        )
    except MlflowException as e:
        raise RegistryError(f"registering {source} as {name!r}: {e.message}") from None
    return version
