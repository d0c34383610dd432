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

BEST_ALIAS = "best"


class RegistryError(SweeplabError):
    """Nothing to register (no finished run, no logged model) or the registry refused."""


def register_best(uri: str, parent, name: str):
    """Register the logged model of the best FINISHED run of the sweep whose parent run is
    `parent` (as the report ranked it) as a new version of `name`; alias `best` -> it."""

    client = tracking.client(uri)
    tags = client.get_run(parent.info.run_id).data.tags  # the report has just set best_run_id
    sid, best_id = tags.get("sweeplab.sweep_id", ""), tags.get("sweeplab.best_run_id")
    if not best_id:
        raise RegistryError(f"sweep {sid} has no FINISHED run, so no best model to register")
    best = client.get_run(best_id)
    source = model_uri(client, best_id)
    version_tags = {
        "sweeplab.sweep_id": sid,
        "sweeplab.run_id": best_id,
        "sweeplab.reproduce": best.data.tags.get("sweeplab.reproduce", ""),
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
