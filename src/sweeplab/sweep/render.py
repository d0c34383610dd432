"""A sweep's report drawn from its `Sweep` value (sweep/leaderboard.py): the console table,
report.md, report.csv, report_seeds.csv and two plots. Reads nothing from MLflow."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from matplotlib.figure import Figure

from sweeplab.sweep.leaderboard import Row, Sweep
from sweeplab.sweep.seeds import seed_groups, seed_table, seeds_csv, short
from sweeplab.track import plots


def label(row: Row) -> str:
    """A configuration's short name for plots: its swept values."""
    return ", ".join(short(v) for v in row.swept.values() if v) or row.name


def pareto_table(sweep: Sweep) -> tuple[list[str], list[list[str]]] | None:
    """A multi-objective search's Pareto front, with the value of each objective; None for a
    single-objective sweep."""
    if sweep.front_trials is None:
        return None
    head = ["trial", "configuration", *sweep.objectives]
    body = [
        [r.trial, label(r), *(f"{r.metrics.get(k, math.nan):.4g}" for k in sweep.objectives)]
        for r in sweep.rows
        if r.trial in sweep.front_trials
    ]
    return head, body


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


def plot_val_curves(rows: list[Row], curves: dict[str, list], path: Path) -> Path:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for r in rows:
        if history := curves.get(r.run_id):
            ax.plot(*zip(*history, strict=True), marker="o", label=f"{label(r)[:60]} ({r.state})")
    ax.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy per configuration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def write_report(sweep: Sweep, out: Path) -> list[Path]:
    """The report's files in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rows, swept = sweep.rows, sweep.swept
    (out / "report.md").write_text(
        markdown(rows, swept, sweep.title, sweep.groups, pareto_table(sweep))
    )
    (out / "report.csv").write_text(csv_text(rows, swept))
    files = [
        out / "report.md",
        out / "report.csv",
        plot_test_acc(rows, out / "test_acc.png"),
        plot_val_curves(rows, sweep.curves, out / "val_curves.png"),
    ]
    if sweep.groups:  # a configuration ran with several seeds: its mean and spread
        (out / "report_seeds.csv").write_text(seeds_csv(sweep.groups))
        files.append(out / "report_seeds.csv")
    return files


def console(sweep: Sweep) -> str:
    """What the end of a sweep prints."""
    parts = [f"\n{sweep.title}\n{text_table(sweep.rows, sweep.swept)}\n"]
    if sweep.groups:
        parts.append(f"across seeds:\n{aligned(*seed_table(sweep.groups))}\n")
    if (front := pareto_table(sweep)) is not None:
        parts.append(f"Pareto front:\n{aligned(*front)}\n")
    if (best := sweep.best) is not None:
        parts.append(f"best: {best.name}  best_val_acc={best.best_val_acc:.4f}  run {best.run_id}")
    return "\n".join(parts)
