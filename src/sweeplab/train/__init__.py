"""The training core: data, augmentation, models, optimizers, the loop, checkpoints,
devices. Knows nothing of MLflow, Hydra's launchers or sweeps."""
