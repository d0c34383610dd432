"""Seed aggregation: one configuration's runs over several seeds, as mean ± std in the report."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from helpers.processes import SLOW, start, sweep
from helpers.runs import parent_and_children
from sweeplab.config.identity import SEED, config_hash
from sweeplab.sweep.leaderboard import Row
from sweeplab.sweep.render import markdown, plot_test_acc
from sweeplab.sweep.seeds import seed_groups, seeds_csv
from sweeplab.track.tags import SEEDLESS_TAG


def row(optimizer: str, seed: int, val: float, test: float, status: str = "FINISHED") -> Row:
    return Row(
        run_id=f"{optimizer}{seed}",
        name=f"optimizer={optimizer},trainer.seed={seed}",
        status=status,
        best_val_acc=val,
        test_acc=test,
        duration_s=1.0,
        overrides="",
        reproduce="",
        swept={"optimizer": optimizer, SEED: str(seed)},
        seedless=f"hash-{optimizer}",
    )


def test_the_hash_without_seed_is_shared_by_seeds_and_only_by_them(small_cfg):
    a, b = small_cfg("trainer.seed=1"), small_cfg("trainer.seed=2")
    c = small_cfg("trainer.seed=1", "optimizer=adam")
    assert config_hash(a) != config_hash(b)  # each seed is its own run (skip/resume)
    assert config_hash(a, ignore=(SEED,)) == config_hash(b, ignore=(SEED,))
    assert config_hash(a, ignore=(SEED,)) != config_hash(c, ignore=(SEED,))


def test_groups_average_finished_runs_over_seeds_best_mean_first():
    rows = [
        row("sgd", 1, 0.80, 0.78),
        row("sgd", 2, 0.90, 0.86),
        row("adam", 1, 0.95, 0.94),
        row("adam", 2, 0.93, 0.92),
        row("adam", 3, 0.10, 0.10, status="FAILED"),
    ]
    adam, sgd = seed_groups(rows)
    assert (adam.swept, adam.seeds) == ({"optimizer": "adam"}, 2)  # the FAILED seed is left out
    assert adam.val_mean == pytest.approx(0.94) and adam.test_mean == pytest.approx(0.93)
    assert sgd.val_std == pytest.approx(math.sqrt(((0.8 - 0.85) ** 2 + (0.9 - 0.85) ** 2) / 1))
    text = markdown(rows, ["optimizer", SEED], "t")
    assert (
        "## Across seeds" in text and "| 1 | adam | 2 | 0.9400 ± 0.0141 | 0.9300 ± 0.0141 |" in text
    )
    table = list(csv.DictReader(io.StringIO(seeds_csv([adam, sgd]))))
    assert [(r["optimizer"], r["seeds"]) for r in table] == [("adam", "2"), ("sgd", "2")]


def test_no_seed_section_when_every_configuration_ran_once():
    rows = [row("sgd", 1, 0.8, 0.8), row("adam", 1, 0.9, 0.9)]
    assert seed_groups(rows) == [] and "Across seeds" not in markdown(rows, ["optimizer"], "t")


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [["trainer.seed=1,2"], ["trainer.seed=1", "sweep.seeds=2"]])
def test_a_two_seed_sweep_reports_mean_and_std_per_configuration(tmp_path, seeds):
    args = [*SLOW, "trainer.epochs=1", "dataset.num_train=200", *seeds, "optimizer=sgd,adam"]
    code, out = sweep(args, tmp_path)
    assert code == 0, out[-3000:]
    client, parent, children = parent_and_children(tmp_path / "mlruns")
    assert len(children) == 4
    assert sorted(r.data.params["trainer.seed"] for r in children) == ["1", "1", "2", "2"]
    by_optimizer: dict[str, set[str]] = {}
    for run in children:
        by_optimizer.setdefault(run.data.params["optimizer._target_"], set()).add(
            run.data.tags[SEEDLESS_TAG]
        )
    assert all(len(h) == 1 for h in by_optimizer.values()) and len(by_optimizer) == 2
    report = Path(client.download_artifacts(parent.info.run_id, "report/report.md")).read_text()
    lines = report.split("## Across seeds", 1)[1].strip().splitlines()[2:]
    assert [line.split(" | ")[1:3] for line in lines] == [["adam", "2"], ["sgd", "2"]] or [
        line.split(" | ")[1:3] for line in lines
    ] == [["sgd", "2"], ["adam", "2"]]
    assert all(line.count(" ± ") == 2 for line in lines)
    path = client.download_artifacts(parent.info.run_id, "report/report_seeds.csv")
    assert len(list(csv.DictReader(io.StringIO(Path(path).read_text())))) == 2
    assert "across seeds:" in out


def test_the_test_accuracy_plot_of_a_seed_sweep_labels_bars_quietly(tmp_path, caplog):
    rows = [
        Row(
            run_id=str(s),
            name=f"trainer.seed={s}",
            status="FINISHED",
            best_val_acc=0.9,
            test_acc=0.8 + s / 100,
            duration_s=1.0,
            overrides="",
            reproduce="",
            swept={SEED: str(s)},
        )
        for s in (1, 2, 3)
    ]
    caplog.set_level("DEBUG")
    png = plot_test_acc(rows, tmp_path / "test_acc.png")
    assert png.stat().st_size > 0
    # seeds as labels read as numbers: matplotlib's category axis would log about them
    assert not [r for r in caplog.records if r.name.startswith("matplotlib.category")]


def test_seeds_and_a_swept_seed_are_refused_before_anything_is_created(tmp_path):
    proc = start(["-m", *SLOW, "trainer.seed=1,2", "sweep.seeds=3"], tmp_path)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, out[-2000:]
    assert (
        "error: sweep.seeds=3 runs every configuration with that many seeds: do not also "
        "sweep trainer.seed" in out
    )
    assert list(tmp_path.iterdir()) == []  # no store, no outputs/
