"""sweeplab: Hydra-configured PyTorch image-classification runs, tracked in MLflow.

The subpackages, each importing only from those before it (tests/test_structure.py):

    errors <- config <- train <- track <- sweep <- job <- cli

`sweeplab.job.train(cfg)` runs one configuration; `src/train.py` is its `@hydra.main` wrapper.
"""

__version__ = "0.1.0"
