"""The leaderboard of a sweep, built from its runs in MLflow (not from the launching process,
so it also covers jobs that ran in joblib / submitit workers or failed).

At the end of every sweep, and on demand:

    python -m sweeplab.sweep.report <experiment name | sweep id> [--tracking-uri URI]
    sweeplab-report <experiment name | sweep id>

A table sorted by best_val_acc (swept parameters, best_val_acc, test_acc, status, duration,
reproduce command) is printed; report.md, report.csv, test_acc.png and val_curves.png are
logged to the sweep's parent run under `report/` (and written to the sweep directory).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from sweeplab.errors import SweeplabError
from sweeplab.sweep.seeds import seed_groups, seed_table, seeds_csv, short
from sweeplab.track import plots, registry, tracking
from sweeplab.track.tags import PRUNED_TAG, ROLE_TAG, SEEDLESS_TAG, TRIAL_TAG, member_tag

log = logging.getLogger("sweeplab")


class ReportError(SweeplabError):
    """No such sweep or experiment in the tracking store."""


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


# --- collect ---------------------------------------------------------------------------------


def sweep_rows(client, experiment_id: str, sid: str, swept: list[str]) -> list[Row]:
    """One row per configuration of the sweep, best first. A configuration run more than once
    (failed, then re-run) shows its FINISHED run, else its latest."""

    runs = client.search_runs(
        [experiment_id],
        f"tags.`{member_tag(sid)}` = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=50000,
    )
    by_config: dict[str, object] = {}
    for run in runs:
        if run.data.tags.get(ROLE_TAG) == "sweep":
            continue
        key = run.data.tags.get("sweeplab.config_hash", run.info.run_id)
        kept = by_config.get(key)
        if kept is None or (run.info.status == "FINISHED" and kept.info.status != "FINISHED"):
            by_config[key] = run
    rows = [_row(run, swept) for run in by_config.values()]
    return sorted(rows, key=lambda r: (-_num(r.best_val_acc), r.name))


def _row(run, swept: list[str]) -> Row:
    tags, metrics, info = run.data.tags, run.data.metrics, run.info
    overrides = tags.get("sweeplab.overrides", "")
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
        reproduce=tags.get("sweeplab.reproduce", ""),
        error=tags.get("error", ""),
        swept={k: given.get(k, "") for k in swept},
        seedless=tags.get(SEEDLESS_TAG, ""),
        trial=tags.get(TRIAL_TAG, ""),
        pruned_epoch=tags.get(PRUNED_TAG, ""),
        metrics=dict(metrics),
    )


def label(row: Row) -> str:
    """A configuration's short name for plots: its swept values."""
    return ", ".join(short(v) for v in row.swept.values() if v) or row.name


def _num(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


# --- render ----------------------------------------------------------------------------------


def _cells(rows: list[Row], swept: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["#", *swept, "best_val_acc", "test_acc", "status", "duration", "reproduce"]
    body = []
    for i, r in enumerate(rows, 1):
        acc = [f"{v:.4f}" if not math.isnan(v) else "-" for v in (r.best_val_acc, r.test_acc)]
        duration = f"{r.duration_s:.1f}s" if not math.isnan(r.duration_s) else "-"
        values = [short(r.swept[k]) for k in swept]
        body.append([str(i), *values, *acc, r.state, duration, r.reproduce])
    return head, body


def aligned(head: list[str], body: list[list[str]], pad_last: bool = True) -> str:
    """A plain-text table with padded columns (the last one unpadded when it is long)."""
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    if not pad_last:
        widths[-1] = 0
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    return "\n".join(lines)


def text_table(rows: list[Row], swept: list[str]) -> str:
    return aligned(*_cells(rows, swept), pad_last=False)  # the reproduce command ends the line


def markdown(rows: list[Row], swept: list[str], title: str, groups=None, front=None) -> str:
    """The report as Markdown; `groups` (seeds.seed_groups of `rows`) if already computed,
    `front` (pareto_table) for a multi-objective search."""
    head, body = _cells(rows, swept)
    body = [[*line[:-1], f"`{line[-1]}`" if line[-1] else ""] for line in body]
    lines = [f"# {title}", "", *_md_table(head, body)]
    groups = seed_groups(rows) if groups is None else groups
    if groups:
        lines += ["", "## Across seeds", "", *_md_table(*seed_table(groups))]
    if front is not None:
        lines += ["", "## Pareto front", "", *_md_table(*front)]
    return "\n".join(lines) + "\n"


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]


def csv_text(rows: list[Row], swept: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "rank",
            *swept,
            "best_val_acc",
            "test_acc",
            "status",
            "duration_s",
            "run_id",
            "run_name",
            "reproduce",
        ]
    )
    for i, r in enumerate(rows, 1):
        writer.writerow(
            [
                i,
                *(r.swept[k] for k in swept),
                r.best_val_acc,
                r.test_acc,
                r.state,
                round(r.duration_s, 2),
                r.run_id,
                r.name,
                r.reproduce,
            ]
        )
    return out.getvalue()


def plot_test_acc(rows: list[Row], path: Path) -> Path:
    shown = [r for r in rows if not math.isnan(r.test_acc)][::-1]  # best at the top
    fig = Figure(figsize=(8, 1.2 + 0.35 * max(len(shown), 1)))
    ax = fig.subplots()
    # bars at positions with the labels as ticks: as category strings, labels such as "1" or
    # "0.01" (a seed, a learning rate) make matplotlib log an INFO line into the sweep's output
    ax.barh(range(len(shown)), [r.test_acc for r in shown], color="tab:blue")
    ax.set_yticks(range(len(shown)), [label(r)[:60] for r in shown])
    for i, r in enumerate(shown):
        ax.text(r.test_acc, i, f" {r.test_acc:.4f}", va="center", fontsize=8)
    ax.set(xlabel="test accuracy (best-on-val checkpoint)", title="test accuracy per configuration")
    ax.set_xlim(0, 1.08)
    return plots.save(fig, path)


def plot_val_curves(client, rows: list[Row], path: Path) -> Path:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for r in rows:
        history = sorted((m.step, m.value) for m in client.get_metric_history(r.run_id, "val_acc"))
        if history:
            ax.plot(*zip(*history, strict=True), marker="o", label=f"{label(r)[:60]} ({r.state})")
    ax.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy per configuration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def write_report(
    client, rows: list[Row], swept: list[str], title: str, out: Path, groups: list, front=None
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(rows, swept, title, groups, front))
    (out / "report.csv").write_text(csv_text(rows, swept))
    files = [
        out / "report.md",
        out / "report.csv",
        plot_test_acc(rows, out / "test_acc.png"),
        plot_val_curves(client, rows, out / "val_curves.png"),
    ]
    if groups:  # a configuration ran with several seeds: its mean and spread
        (out / "report_seeds.csv").write_text(seeds_csv(groups))
        files.append(out / "report_seeds.csv")
    return files


# --- a sweep's end, and the command ----------------------------------------------------------


def sweep_status(rows: list[Row]) -> str:
    if any(r.status == "FAILED" for r in rows):
        return "FAILED"
    if not rows or not all(r.ok for r in rows):
        return "KILLED"  # interrupted (KILLED / still RUNNING) or nothing ran
    return "FINISHED"


def pareto_table(rows: list[Row], tags: dict) -> tuple[list[str], list[list[str]]] | None:
    """A multi-objective search's Pareto front (trials from the parent run's tag), with the
    value of each objective; None for a single-objective sweep."""
    front = tags.get("sweeplab.pareto_trials")
    if front is None:
        return None
    trials = front.split(",")
    objectives = [k for k in tags.get("sweeplab.objectives", "").split(",") if k]
    head = ["trial", "configuration", *objectives]
    body = [
        [r.trial, label(r), *(f"{r.metrics.get(k, math.nan):.4g}" for k in objectives)]
        for r in rows
        if r.trial in trials
    ]
    return head, body


def report_sweep(client, parent, out: Path | None = None) -> list[Row]:
    """Build, print and log the report of the sweep whose parent run is `parent`."""
    tags = parent.data.tags
    sid, experiment_id = tags["sweeplab.sweep_id"], parent.info.experiment_id
    swept = [k for k in tags.get("sweeplab.swept", "").split(",") if k]
    rows = sweep_rows(client, experiment_id, sid, swept)
    groups = seed_groups(rows)  # empty unless a configuration ran with several seeds
    front = pareto_table(rows, tags)  # None unless a multi-objective search
    title = f"Sweep {sid}: {tags.get('sweeplab.command', '')}"
    with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as tmp:
        files = write_report(client, rows, swept, title, out or Path(tmp), groups, front)
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), "report")
    # the best candidate: trained to the end and scored (not pruned, failed or interrupted)
    best = next(
        (r for r in rows if r.status == "FINISHED" and not math.isnan(r.best_val_acc)), None
    )
    summary = {
        "jobs": len(rows),
        "jobs_failed": sum(not r.ok for r in rows),
        "jobs_pruned": sum(bool(r.pruned_epoch) for r in rows),
    }
    if best is not None:
        summary["best_val_acc"] = best.best_val_acc
        client.set_tag(parent.info.run_id, "sweeplab.best_run_id", best.run_id)
    for key, value in summary.items():
        client.log_metric(parent.info.run_id, key, value)
    print(f"\n{title}\n{text_table(rows, swept)}\n", flush=True)
    if groups:
        print(f"across seeds:\n{aligned(*seed_table(groups))}\n", flush=True)
    if front is not None:
        print(f"Pareto front:\n{aligned(*front)}\n", flush=True)
    if best is not None:
        print(f"best: {best.name}  best_val_acc={best.best_val_acc:.4f}  run {best.run_id}")
    return rows


def finish_sweep(
    uri: str, parent_id: str, sweep_dir: str | None, register: str | None = None
) -> list[Row]:
    """When a sweep's launching process ends: report, register the best model when asked
    (`sweep.register_best`), then the parent run's status."""
    client = tracking.client(uri)
    parent = client.get_run(parent_id)
    rows = report_sweep(client, parent, Path(sweep_dir) if sweep_dir else None)
    if register:
        try:
            announce(registry.register_best(uri, parent, register))
        except SweeplabError as e:  # said loudly; the sweep's own results stand
            log.error("sweep.register_best=%s: %s", register, e)
    client.set_terminated(parent_id, status=sweep_status(rows))
    return rows


def announce(version) -> None:
    name, alias = version.name, registry.BEST_ALIAS
    print(f"registered models:/{name}/{version.version}, alias models:/{name}@{alias}")


def find_parent(client, target: str):
    """`target` is a sweep id (any experiment) or an experiment name (its latest sweep)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`{ROLE_TAG}` = 'sweep'"
    order = ["attributes.start_time DESC"]
    by_id = client.search_runs(experiments, f"{query} and tags.`sweeplab.sweep_id` = '{target}'")
    if by_id:
        return by_id[0]
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        raise ReportError(f"{target!r} is neither a sweep id nor an experiment in this store")
    latest = client.search_runs([experiment.experiment_id], query, order_by=order, max_results=1)
    if not latest:
        raise ReportError(f"experiment {target!r} has no sweep (launch one with -m)")
    return latest[0]


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        prog="sweeplab-report", description="Leaderboard of a sweep, from its runs in MLflow."
    )
    parser.add_argument("target", help="a sweep id (tag sweeplab.sweep_id) or an experiment name")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or ./mlruns")
    parser.add_argument("--out", type=Path, help="also write the report files to this folder")
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the best run's model as a new version of "
        "NAME in the Model Registry and point its alias @best at it",
    )
    args = parser.parse_args(argv)
    uri = args.tracking_uri or tracking.default_uri()
    client = tracking.client(uri)
    try:
        parent = find_parent(client, args.target)
        report_sweep(client, parent, args.out)
        print(f"logged to run {parent.info.run_id} under report/")
        if args.register:
            announce(registry.register_best(uri, parent, args.register))
    except SweeplabError as e:
        print(f"sweeplab-report: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
