"""`hydra/launcher=slurm` on a real one-node SLURM cluster (helpers/slurm.py, started once for
the module): the main job as SLURM array jobs, what each run records of its allocation, and a
command line that cannot reach a scheduler.

Without slurm-wlm / munge (or without root) these tests skip, naming the packages, unless
SWEEPLAB_REQUIRE_SERVICES=1 (as in CI, where .ci/run installs them).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.config import TRAIN_SCRIPT
from helpers.processes import SLOW, run_train, start
from helpers.runs import job_runs, parent_and_children, report_csv, store_client
from helpers.slurm import slurm_running
from sweeplab.track.tags import slurm_tags

# A CPU node: no GPU asked for (the launcher's defaults ask for one, which a CPU partition
# never grants: the jobs would pend for ever), one CPU and 1 GB per job, so 2 run at a time here.
ON_CPUS = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
MNIST_SMALL = [
    "dataset=mnist",
    "dataset.train_subset=1000",
    "trainer.epochs=1",
    "trainer.batch_size=64",
    "trainer.device=cpu",
]


@pytest.fixture(scope="module")
def cluster():
    with slurm_running() as c:
        yield c


def launch(cluster, args: list[str], cwd: Path, data_dir: Path, timeout: int = 600):
    env = cluster.env(SWEEPLAB_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return run_train(args, cwd, env, timeout)


@pytest.mark.slow
def test_the_main_job_runs_as_slurm_jobs_each_tagged_with_its_allocation(
    cluster, tmp_path, data_dir
):
    args = ["-m", *ON_CPUS, "optimizer=sgd,adam", "model=simple_cnn,lenet", *MNIST_SMALL]
    proc = launch(cluster, args, tmp_path, data_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + cluster.logs()
    client, parent, children = parent_and_children(tmp_path / "mlruns", "mnist")
    assert parent.data.tags["hydra.launcher"] == "SlurmLauncher"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 4
    array_ids = set()
    for run in children:
        tags = run.data.tags
        assert tags["sweeplab.slurm_job_id"].startswith(tags["sweeplab.slurm_array_job_id"])
        assert tags["sweeplab.slurm_node"] == cluster.host
        assert tags["sweeplab.slurm_cpus_per_task"] == "1"
        assert tags["sweeplab.threads"] == "1"  # threads follow what SLURM granted
        array_ids.add(tags["sweeplab.slurm_array_job_id"])
    assert len(array_ids) == 1  # one array for the sweep
    # each job's log is under the sweep folder (submitit's), as Hydra's job folders are
    sweep_dir = tmp_path / parent.data.tags["hydra.sweep_dir"]
    logs = list((sweep_dir / ".submitit").rglob("*_log.out"))
    assert len(logs) == 4 and all("epoch 1/1" in p.read_text() for p in logs)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert len(report_csv(client, parent)) == 4


def test_no_scheduler_on_path_is_one_line_and_nothing_is_created(tmp_path, data_dir):
    env_path = str(tmp_path / "empty-bin")
    Path(env_path).mkdir()
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "-m", *ON_CPUS, *MNIST_SMALL],
        cwd=tmp_path,
        env={"PATH": env_path, "SWEEPLAB_DATA_DIR": str(data_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: hydra/launcher=slurm needs SLURM's sbatch") and "PATH" in line
    assert not (tmp_path / "mlruns").exists()


# --- requeue: preemption, scontrol requeue, a real time limit --------------------------------

REQUEUABLE = [*SLOW, "trainer.epochs=3"]


def submitit_log(root: Path) -> Path | None:
    logs = sorted(root.rglob(".submitit/*/*_log.out"))
    return logs[-1] if logs else None


def wait_for_log(root: Path, needle: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        log = submitit_log(root)
        if log is not None and needle in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"never saw {needle!r} in the job's log ({proc.poll()=})")


def epochs(client, run_id: str) -> dict[str, list[float]]:
    return {
        k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
        for k in ("train_loss", "val_acc", "val_loss")
    }


@pytest.mark.slow
@pytest.mark.parametrize("how", ["scontrol requeue", "preemption signal"])
def test_a_requeued_job_continues_its_run_to_the_metrics_of_an_uninterrupted_one(
    how, cluster, tmp_path, data_dir
):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    reference = start(REQUEUABLE, ref_dir)  # on this machine, meanwhile: one thread, same seed
    env = cluster.env(PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), "-m", *ON_CPUS, *REQUEUABLE],
        cwd=cut_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_log(cut_dir, "epoch 1/3", proc)
    (job,) = [j["id"] for j in cluster.jobs() if j["state"] == "RUNNING"]
    if how == "scontrol requeue":
        cluster.run("scontrol", "requeue", job)
    else:  # what SLURM sends before preempting a job (submitit's signal, --signal=USR2@...)
        cluster.run("scancel", "--signal=USR2", job)
    cluster.release_requeued(job)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:] + cluster.logs()
    assert reference.wait(timeout=300) == 0
    client = store_client(cut_dir / "mlruns")
    (run,) = job_runs(client, client.get_experiment_by_name("synthetic").experiment_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["sweeplab.slurm_restart_count"] == "1"  # SLURM requeued it once
    assert run.data.tags["sweeplab.resumed"] == "true"  # the same run, continued
    ref_client = store_client(ref_dir / "mlruns")
    (ref,) = ref_client.search_runs([ref_client.get_experiment_by_name("synthetic").experiment_id])
    assert epochs(client, run.info.run_id) == epochs(ref_client, ref.info.run_id)
    assert run.data.metrics["test_acc"] == ref.data.metrics["test_acc"]


@pytest.mark.slow
def test_a_job_longer_than_its_time_limit_is_requeued_until_it_finishes(cluster, tmp_path):
    """A real time limit (1 minute): submitit's signal comes `signal_delay_s` before it, the
    job is requeued and continues its run from last.pt, until its epochs are done."""
    limited = [
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=20",
        "hydra.launcher.max_num_timeout=10",
    ]
    # many short epochs: longer than 40 s of training on any machine, and every attempt ends
    # some of them (in CI, 12 epochs of SLOW ended before the first signal)
    longer = [*SLOW, "dataset.num_train=300", "trainer.epochs=200"]
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), "-m", *ON_CPUS, *limited, *longer],
        cwd=tmp_path,
        env=cluster.env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 900
    while proc.poll() is None and time.time() < deadline:  # let each requeue start at once
        for job in cluster.jobs():
            if job["state"] == "PENDING":
                cluster.run(
                    "scontrol", "update", f"JobId={job['id']}", "StartTime=now", check=False
                )
        time.sleep(1)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:] + cluster.logs()
    client = store_client(tmp_path / "mlruns")
    runs = job_runs(client, client.get_experiment_by_name("synthetic").experiment_id)
    shown = [
        (
            r.info.status,
            r.data.tags.get("sweeplab.slurm_restart_count"),
            [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")],
        )
        for r in runs
    ]
    assert len(runs) == 1, shown
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["sweeplab.slurm_restart_count"]) >= 1  # it did hit the limit
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(set(steps)) == list(range(1, 201))


def test_an_unknown_partition_is_one_line_and_nothing_is_created(cluster, tmp_path, data_dir):
    args = ["-m", *ON_CPUS, "hydra.launcher.partition=gpu-nope", *MNIST_SMALL]
    before = cluster.jobs()  # the module's earlier tests' jobs, still listed for MinJobAge
    proc = launch(cluster, args, tmp_path, data_dir, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "hydra.launcher.partition=gpu-nope: no such partition" in line
    assert "main, short" in line  # what sinfo lists
    assert not (tmp_path / "mlruns").exists() and cluster.jobs() == before


def test_slurm_tags_name_the_allocation_and_nothing_outside_slurm():
    env = {
        "SLURM_JOB_ID": "107",
        "SLURM_ARRAY_JOB_ID": "105",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURMD_NODENAME": "node7",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_RESTART_COUNT": "1",
    }
    tags = slurm_tags(env)
    assert tags["sweeplab.slurm_job_id"] == "105_2"  # as squeue shows an array task
    assert tags["sweeplab.slurm_node"] == "node7" and tags["sweeplab.slurm_restart_count"] == "1"
    assert slurm_tags({"PATH": "/usr/bin"}) == {}
