"""sweeplab's Hydra sweepers: `sweeplab_basic` (the grid, plus `sweep.seeds=N`; the default in
conf/train.yaml) and `sweeplab_optuna` (`hparams_search=optuna`: current Optuna, trials started
as soon as a slot frees, pruning inside the jobs, studies that survive a killed launch).
See README, "Optuna search"."""
