"""MLflow: the run and its tags, the store, params, lineage, the logged model, the
registry, resuming from a run, the environment a run ran in."""
