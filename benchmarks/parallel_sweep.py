"""Wall time of a 4-job CPU sweep: joblib against one at a time (basic launcher).

    python benchmarks/parallel_sweep.py [--mode one-thread|default] [--images 4000] [--epochs 2]
                                        [--rounds 2]

--mode one-thread (issue 13's first row): every job on 1 thread (trainer.num_threads=1), 2 at a
time (hydra.launcher.n_jobs=2) against one at a time; goal <= 0.6x.
--mode default (its second row): what a user gets by adding only `hydra/launcher=joblib`
(n_jobs and threads left to sweeplab) against the plain sequential sweep; goal <= 1.0x.

Both launch the same command line as a user would (a subprocess of src/train.py -m, the
4 jobs being trainer.seed=1,2,3,4 on a synthetic CIFAR-shaped set, simple_cnn, batch 128),
each into a fresh store, alternating sequential / parallel so drift hits both alike. The
sequential sweep uses torch's default threads (all cores); the joblib one gives each of its
2 parallel jobs cores // 2 threads (sweeplab.sweep.jobs.placement). Reports the median wall time
of each and their ratio (goal: parallel <= 0.6x sequential).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "src" / "train.py"


def sweep_wall_time(launcher: list[str], images: int, epochs: int) -> float:
    args = [
        "-m",
        "trainer.seed=1,2,3,4",
        "dataset=synthetic",
        f"dataset.num_train={images}",
        "dataset.num_test=1000",
        f"trainer.epochs={epochs}",
        "trainer.batch_size=128",
        "trainer.device=cpu",
        "model=simple_cnn",
        *launcher,
    ]
    with tempfile.TemporaryDirectory(prefix="sweeplab-bench-") as cwd:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(TRAIN), *args], cwd=cwd, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mode", choices=["one-thread", "default"], default="one-thread")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.mode == "one-thread":
        one = ["trainer.num_threads=1"]
        variants = {
            "sequential (basic launcher, 1 thread/job)": one,
            "2 parallel (joblib n_jobs=2, 1 thread/job)": [
                *one,
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2",
            ],
        }
    else:
        variants = {
            "sequential (basic launcher)": [],
            "joblib at its defaults (hydra/launcher=joblib)": ["hydra/launcher=joblib"],
            # what the plugin's default (-1: a job per core) did before sweeplab chose for it
            "joblib n_jobs=-1 (the plugin's own default)": [
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=-1",
            ],
        }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, launcher in variants.items():
            t = sweep_wall_time(launcher, args.images, args.epochs)
            times[name].append(t)
            print(f"round {r + 1}: {name}: {t:.1f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    seq = medians.pop(next(iter(variants)))
    goal = "0.6x" if args.mode == "one-thread" else "1.0x"
    print(f"\n{cores} cores, 4 jobs x {args.epochs} epochs x {args.images} images, {args.mode}")
    print(f"sequential: median {seq:.1f} s")
    for name, t in medians.items():
        print(f"{name}: median {t:.1f} s, {t / seq:.2f}x (goal <= {goal})")


if __name__ == "__main__":
    main()
