"""Sweeps: the Hydra callback that plans, places and reports a sweep's jobs; Optuna
search; seed repeats; the sweep report."""
