"""sweeplab's Optuna sweeper for Hydra (`hydra/sweeper=sweeplab_optuna`, or
`hparams_search=optuna` in sweeplab): current Optuna, trials started as soon as a slot frees,
pruning inside the jobs, studies that survive a killed launch. See README, "Optuna search"."""
