"""Seed aggregation: the runs of one configuration with different `trainer.seed`s, averaged.

`sweep.seeds=N` runs every configuration of a sweep with seeds trainer.seed, +1, ..., +N-1
(`seeds_override`; the grid and Optuna sweepers apply it).

Runs carry `sweeplab.config_hash_without_seed` (tracking.SEEDLESS_TAG): equal for every seed
of a configuration, so the sweep report (and the MLflow UI, grouping by that tag) can show the
mean and spread of a configuration instead of one lucky seed.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass

from sweeplab.config.identity import SEED


def seed_values(base: int, n: int) -> list[int]:
    return [base + i for i in range(n)]


def seeds_override(base: int, n: int) -> list[str]:
    """The override that repeats each configuration of a grid sweep with n seeds (none for 1)."""
    return [f"{SEED}=" + ",".join(map(str, seed_values(base, n)))] if n > 1 else []


@dataclass
class SeedGroup:
    """One configuration over its seeds: mean and standard deviation of its FINISHED runs."""

    swept: dict[str, str]  # the swept values other than the seed
    seeds: int
    val_mean: float
    val_std: float
    test_mean: float
    test_std: float


def seed_groups(rows: list) -> list[SeedGroup]:
    """Rows (report.Row) of one configuration (same config hash without the seed) averaged
    over their seeds, best mean first; empty unless some configuration ran with more than
    one seed."""
    groups: dict[str, list] = {}
    for r in rows:
        if r.status == "FINISHED" and r.seedless:
            groups.setdefault(r.seedless, []).append(r)
    if not any(len(g) > 1 for g in groups.values()):
        return []
    out = []
    for members in groups.values():
        val = [r.best_val_acc for r in members]
        test = [r.test_acc for r in members]
        swept = {k: v for k, v in members[0].swept.items() if k != SEED}
        out.append(
            SeedGroup(
                swept,
                len(members),
                statistics.fmean(val),
                _std(val),
                statistics.fmean(test),
                _std(test),
            )
        )
    return sorted(out, key=lambda g: -g.val_mean)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def seed_table(groups: list[SeedGroup]) -> tuple[list[str], list[list[str]]]:
    keys = list(groups[0].swept) if groups else []
    head = ["#", *keys, "seeds", "best_val_acc mean ± std", "test_acc mean ± std"]
    body = [
        [
            str(i),
            *(short(g.swept[k]) for k in keys),
            str(g.seeds),
            f"{g.val_mean:.4f} ± {g.val_std:.4f}",
            f"{g.test_mean:.4f} ± {g.test_std:.4f}",
        ]
        for i, g in enumerate(groups, 1)
    ]
    return head, body


def seeds_csv(groups: list[SeedGroup]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    keys = list(groups[0].swept) if groups else []
    writer.writerow(
        [
            "rank",
            *keys,
            "seeds",
            "best_val_acc_mean",
            "best_val_acc_std",
            "test_acc_mean",
            "test_acc_std",
        ]
    )
    for i, g in enumerate(groups, 1):
        writer.writerow(
            [
                i,
                *(g.swept[k] for k in keys),
                g.seeds,
                g.val_mean,
                g.val_std,
                g.test_mean,
                g.test_std,
            ]
        )
    return out.getvalue()


def short(value: str) -> str:
    """0.00029380279387035364 -> 0.0002938: Optuna's floats, readable in a table."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if (len(value) > 8 and "." in value) or "e" in value else value
