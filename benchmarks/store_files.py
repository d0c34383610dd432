"""What creating the store whole costs, against MLflow creating it in place, and the check
every launch pays on an existing store (issue 20).

    python benchmarks/store_files.py [--rounds 5]

Side by side, in one process with MLflow already imported, alternating, each round in a new
folder: (a) MLflow's own creation, `MlflowClient(sqlite:///...).search_experiments()` on a
missing file (in place, not atomic); (b) sweeplab's `store_schema.ensure_mlflow_schema` (built under
a temporary name, linked into place), then the same first client call. Then (c) the check of
an existing, current store, as every launch does it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from sweeplab.track import store_schema


def in_place(folder: Path) -> float:
    start = time.perf_counter()
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return time.perf_counter() - start


def whole(folder: Path) -> float:
    start = time.perf_counter()
    store_schema.ensure_mlflow_schema(folder / "mlflow.db")
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        in_place(root / "warm-up")  # imports, alembic's script directory
        whole(root / "warm-up-2")
        a, b = [], []
        for i in range(args.rounds):
            a.append(in_place(root / f"a{i}"))
            b.append(whole(root / f"b{i}"))
        checks = []
        for _ in range(20):
            start = time.perf_counter()
            store_schema.ensure_mlflow_schema(root / "b0" / "mlflow.db")
            checks.append(time.perf_counter() - start)
    med_a, med_b = statistics.median(a), statistics.median(b)
    print(
        f"new store, MLflow in place : median {med_a:.3f} s  ({', '.join(f'{x:.3f}' for x in a)})"
    )
    print(
        f"new store, created whole   : median {med_b:.3f} s  ({', '.join(f'{x:.3f}' for x in b)})"
    )
    print(f"ratio whole / in place     : {med_b / med_a:.2f}")
    print(f"check of an existing store : median {statistics.median(checks) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
