"""Fixed cost per job inside a sweep, and tracking cost per logged metric value.

    python benchmarks/job_overhead.py [--jobs 4] [--epochs 2] [override ...]

1. Runs `--jobs` jobs in one process, as Hydra's basic launcher does, on a small synthetic
   CIFAR-shaped set, against a fresh sqlite store. Per job: wall time of `train(cfg)` minus the
   time inside the training epochs = the fixed cost (config checks, data/model build, run
   creation, params, config artifacts, checkpoints, val/test evaluation, plots). The first job
   also pays imports and store creation; it is reported apart.
2. Logs 7 metrics per step for 200 steps through sweeplab's `Run.log_metrics` (one batch call
   per step, as the loop does, written by a background thread) and reports milliseconds per
   metric value, both as paid by the caller and including the flush to the store.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.config import compose_cfg  # noqa: E402
from sweeplab.job import train  # noqa: E402
from sweeplab.track import store, tracking


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="extra overrides, e.g. tracking.log_model=false")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sweeplab-bench-"))
    overhead = []
    for i in range(args.jobs):
        cfg = compose_cfg(
            [
                "dataset=synthetic",
                "dataset.num_train=1000",
                "dataset.num_test=500",
                f"trainer.epochs={args.epochs}",
                "trainer.device=cpu",
                f"trainer.seed={i}",
                f"tracking.root={root}",
                "tracking.experiment=bench",
                f"output_dir={root}/job{i}",
                *args.overrides,
            ]
        )
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        training = sum(h["epoch_time_s"] for h in result["history"])
        overhead.append(wall - training)
        print(f"job {i}: wall {wall:.2f}s, training {training:.2f}s, fixed {wall - training:.2f}s")
    warm = overhead[1:]
    print(
        f"1. fixed cost per job (jobs 2..{args.jobs}): median {statistics.median(warm):.2f}s; "
        f"first job (imports, new store) {overhead[0]:.2f}s"
    )

    uri = f"sqlite:///{root}/mlflow.db"
    exp = store.prepare_store(uri, str(root), "bench-metrics")

    def log_many(run):
        names = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "ips"]
        start = time.perf_counter()
        steps = 200
        for step in range(steps):
            run.log_metrics({n: step * 0.1 for n in names}, step=step)
        caller = (time.perf_counter() - start) / (steps * len(names))
        run.flush()
        total = (time.perf_counter() - start) / (steps * len(names))
        return (caller, total, len(names)), "FINISHED"

    (caller, total, n), _ = tracking.run_to_end(uri, exp, "metrics", {}, log_many)
    print(
        f"2. tracking: {1000 * caller:.3f} ms per metric value paid by the training loop, "
        f"{1000 * total:.3f} ms including the background write to sqlite "
        f"({n} values per log_batch call)"
    )


if __name__ == "__main__":
    main()
