"""The same Optuna search with the official hydra-optuna-sweeper and with sweeplab's sweeper.

    python benchmarks/search_vs_official.py --official-python /tmp/official/bin/python \\
        [--trials 20] [--seeds 1 2 3] [--train-subset 2000] [--epochs 3] [--val-fraction 0.1]

Search space (both): optimizer choice(sgd, adam, adamw, rmsprop), lr tag(log, interval(1e-4,
1e-1)), weight_decay tag(log, interval(1e-6, 1e-2)), augmentation choice(none, standard); TPE
with 10 random start-up trials, seeded by `--seeds` one search at a time; MNIST subset, CPU,
trials one at a time. The official plugin (1.2.0 with optuna 2.10, no pruning) runs from its own
virtual environment, given as `--official-python` (torch, torchvision, hydra-core, mlflow,
matplotlib, tqdm, filelock, hydra-optuna-sweeper==1.2.0; sweeplab from this checkout via
PYTHONPATH); sweeplab's sweeper runs with its defaults (MedianPruner: 5 start-up trials, 1
warm-up epoch). Each search is a fresh launch in a fresh folder; the two tools alternate per
seed so drift hits both. Prints wall time and best val_acc per search and the ratios.
Needs SWEEPLAB_DATA_DIR (MNIST).
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

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
SPACE = [
    "optimizer=choice(sgd,adam,adamw,rmsprop)",
    "optimizer.lr=tag(log,interval(1e-4,1e-1))",
    "optimizer.weight_decay=tag(log,interval(1e-6,1e-2))",
    "augmentation=choice(none,standard)",
]


def search(tool: str, python: str, seed: int, args) -> tuple[float, float, int]:
    """(wall seconds, best val_acc, trials pruned) of one search launched as a user would."""
    common = [
        "-m",
        "dataset=mnist",
        f"dataset.train_subset={args.train_subset}",
        f"trainer.epochs={args.epochs}",
        "model=simple_cnn",
        "trainer.device=cpu",
        f"dataset.val_fraction={args.val_fraction}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.sampler.seed={seed}",
        "hydra.sweeper.direction=maximize",
        *SPACE,
    ]
    if tool == "sweeplab-unpruned":
        chosen = ["hparams_search=optuna", "hydra/sweeper/pruner=none"]
    elif tool == "official":
        # In-memory study (its default): optuna 2.10's RDB storage fails on SQLAlchemy 2.
        chosen = ["hydra/sweeper=optuna", "hydra/sweeper/sampler=tpe", "hydra.sweeper.n_jobs=1"]
    else:
        chosen = ["hparams_search=optuna"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix=f"sweeplab-search-{tool}-") as cwd:
        start = time.perf_counter()
        proc = subprocess.run(
            [python, str(REPO / "src" / "train.py"), *common, *chosen],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{tool} search failed:\n{proc.stderr[-3000:]}")
        if tool == "official":
            (found,) = Path(cwd).rglob("optimization_results.yaml")
            return wall, float(yaml.safe_load(found.read_text())["best_value"]), 0
        db = f"sqlite:///{cwd}/mlruns/optuna.db"
        (summary,) = optuna.get_all_study_summaries(db)
        study = optuna.load_study(study_name=summary.study_name, storage=db)
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        return wall, study.best_value, pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-python", required=True)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    unpruned = "also sweeplab's sweeper with pruner=none: what pruning changes"
    parser.add_argument("--also-unpruned", action="store_true", help=unpruned)
    args = parser.parse_args()
    rows = []
    for i, seed in enumerate(args.seeds):
        order = ["official", "sweeplab"] if i % 2 == 0 else ["sweeplab", "official"]
        if args.also_unpruned:
            order.append("sweeplab-unpruned")
        result = {}
        for tool in order:
            python = args.official_python if tool == "official" else sys.executable
            result[tool] = search(tool, python, seed, args)
            wall, best, pruned = result[tool]
            print(
                f"seed {seed} {tool:17s}: {wall:6.1f} s  best val_acc {best:.4f}  pruned {pruned}",
                flush=True,
            )
        rows.append((seed, result["official"], result["sweeplab"]))
        if "sweeplab-unpruned" in result:
            uw, ub, _ = result["sweeplab-unpruned"]
            print(
                f"seed {seed}: unpruned sweeplab {uw:.1f} s ({uw / result['official'][0]:.2f}x), "
                f"best {ub:.4f}",
                flush=True,
            )
    print(
        "\n| sampler seed | official: wall, best val_acc | sweeplab: wall, best val_acc, pruned "
        "| wall ratio | val_acc diff |\n|---|---|---|---|---|"
    )
    for seed, (ow, ob, _), (sw, sb, sp) in rows:
        print(
            f"| {seed} | {ow:.1f} s, {ob:.4f} | {sw:.1f} s, {sb:.4f}, {sp} | {sw / ow:.2f}x | "
            f"{100 * (sb - ob):+.2f} pt |"
        )
    ratio = statistics.median(s[0] / o[0] for _, o, s in rows)
    diff = statistics.mean(100 * (s[1] - o[1]) for _, o, s in rows)
    print(f"\nmedian wall ratio {ratio:.2f}x, mean best val_acc difference {diff:+.2f} pt")


if __name__ == "__main__":
    main()
