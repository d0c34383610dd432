"""Helpers the tests share (not fixtures: those are in conftest.py): config composition, MLflow
queries, processes, fake datasets and throwaway servers. Test modules import from here, never
from each other."""
