"""A sweep's results, collected from its runs in MLflow (not from the launching process, so it
also covers jobs that ran in joblib / submitit workers or failed): a `Sweep` value that
sweep/render.py shows and sweep/report.py logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sweeplab.sweep.seeds import SeedGroup, seed_groups
from sweeplab.track import tags as t
from sweeplab.track.tracking import runs_where


@dataclass
class Row:
    run_id: str
    name: str
    status: str
    best_val_acc: float
    test_acc: float
    duration_s: float
    overrides: str
    reproduce: str
    error: str = ""
    swept: dict[str, str] = field(default_factory=dict)
    seedless: str = ""  # the config hash without trainer.seed: equal across seeds
    trial: str = ""  # an Optuna search's trial number
    pruned_epoch: str = ""  # set when the search pruned this trial (its run ends KILLED)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """The status shown: a pruned run says so (and where), not just KILLED."""
        return f"PRUNED@{self.pruned_epoch}" if self.pruned_epoch else self.status

    @property
    def ok(self) -> bool:
        """Ended as intended: trained to the end, or stopped by the search's pruner."""
        return self.status == "FINISHED" or bool(self.pruned_epoch)


@dataclass
class Sweep:
    """Everything the report shows: rows best first, seed groups, a search's Pareto front and
    the val_acc curve of each row's run."""

    sweep_id: str
    title: str
    swept: list[str]
    rows: list[Row]
    groups: list[SeedGroup]  # empty unless a configuration ran with several seeds
    front_trials: list[str] | None  # a multi-objective search's Pareto front, else None
    objectives: list[str]
    curves: dict[str, list[tuple[int, float]]]  # run id -> (epoch, val_acc), in epoch order

    @property
    def best(self) -> Row | None:
        """The best candidate: trained to the end and scored (not pruned, failed or stopped)."""
        done = (r for r in self.rows if r.status == "FINISHED" and not math.isnan(r.best_val_acc))
        return next(done, None)


# --- collect ---------------------------------------------------------------------------------


def collect(client, parent) -> Sweep:
    """The sweep whose parent run is `parent`: its runs, and each one's val_acc per epoch."""
    tags = parent.data.tags
    runs = runs_where(client, [parent.info.experiment_id], {t.member_tag(tags[t.SWEEP_ID]): "true"})
    rows = rows_of(runs, [k for k in tags.get(t.SWEPT, "").split(",") if k])
    curves = {
        r.run_id: sorted((m.step, m.value) for m in client.get_metric_history(r.run_id, "val_acc"))
        for r in rows
    }
    return sweep_of(tags, rows, curves)


def sweep_of(tags: dict[str, str], rows: list[Row], curves: dict) -> Sweep:
    """The Sweep value from the parent run's tags and the rows of its runs."""
    front = tags.get(t.PARETO_TRIALS)
    return Sweep(
        sweep_id=tags[t.SWEEP_ID],
        title=f"Sweep {tags[t.SWEEP_ID]}: {tags.get(t.COMMAND, '')}",
        swept=[k for k in tags.get(t.SWEPT, "").split(",") if k],
        rows=rows,
        groups=seed_groups(rows),
        front_trials=None if front is None else front.split(","),
        objectives=[k for k in tags.get(t.OBJECTIVES, "").split(",") if k],
        curves=curves,
    )


def rows_of(runs: list, swept: list[str]) -> list[Row]:
    """One row per configuration of the sweep, best first. A configuration run more than once
    (failed, then re-run) shows its FINISHED run, else its latest (`runs` newest first)."""
    by_config: dict[str, object] = {}
    for run in runs:
        if run.data.tags.get(t.ROLE_TAG) == "sweep":
            continue
        key = run.data.tags.get(t.CONFIG_HASH, run.info.run_id)
        kept = by_config.get(key)
        if kept is None or (run.info.status == "FINISHED" and kept.info.status != "FINISHED"):
            by_config[key] = run
    rows = [_row(run, swept) for run in by_config.values()]
    return sorted(rows, key=lambda r: (-_num(r.best_val_acc), r.name))


def _row(run, swept: list[str]) -> Row:
    tags, metrics, info = run.data.tags, run.data.metrics, run.info
    overrides = tags.get(t.OVERRIDES, "")
    given = dict(o.lstrip("+~").partition("=")[::2] for o in overrides.split() if "=" in o)
    end = info.end_time or info.start_time
    return Row(
        run_id=info.run_id,
        name=info.run_name or info.run_id,
        status=info.status,
        best_val_acc=metrics.get("best_val_acc", math.nan),
        test_acc=metrics.get("test_acc", math.nan),
        duration_s=(end - info.start_time) / 1000 if info.start_time else math.nan,
        overrides=overrides,
        reproduce=tags.get(t.REPRODUCE, ""),
        error=tags.get("error", ""),
        swept={k: given.get(k, "") for k in swept},
        seedless=tags.get(t.SEEDLESS_TAG, ""),
        trial=tags.get(t.TRIAL_TAG, ""),
        pruned_epoch=tags.get(t.PRUNED_TAG, ""),
        metrics=dict(metrics),
    )


def _num(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x
