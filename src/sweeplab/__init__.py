"""sweeplab: Hydra-configured PyTorch image-classification runs, tracked in MLflow."""

from sweeplab import schema as _schema  # noqa: F401  (registers the config schema and resolvers)
from sweeplab.runner import train

__all__ = ["train"]
__version__ = "0.1.0"
