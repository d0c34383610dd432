"""Console commands: sweeplab-rerun, sweeplab-predict."""
