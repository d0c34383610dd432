"""A throwaway one-node SLURM cluster for end-to-end tests: munged, slurmctld and slurmd from
Debian's `slurm-wlm` and `munge`, every file (config, key, state, spool, logs) in one temporary
folder, on free ports, stopped when the `with` block ends (also on a failure).

The node is this machine, with its CPUs and 80 % of its memory. Partitions: `main` (default, no
time limit) and `short` (MaxTime 1 minute), which the time-limit tests use. No accounting
database (`sacct` is not needed: submitit reads job states with `squeue`/`sacct` and falls back).
The daemons run as root (as on the CI machine); as another user the tests skip, naming why.
docs/cluster.md has the same recipe for trying sweeplab on a local cluster by hand.

Commands (`sbatch`, `squeue`, `scontrol`, `scancel`, and submitit's calls of them) find the
cluster through $SLURM_CONF: `Slurm.env()` is os.environ with it set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.servers import free_port, missing_service, tail

INSTALL_HINT = "sudo apt-get install -y slurm-wlm munge (or run bash .ci/run, which installs them)"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")

CONF = """\
ClusterName=sweeplab
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
KillWait=10
MinJobAge=600
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes={host} MaxTime=1 State=UP
"""


@dataclass
class Slurm:
    dir: Path
    host: str
    cpus: int

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}\n{self.logs()}")
        return proc.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Jobs the controller still knows (pending, running, and ended ones for MinJobAge)."""
        out = self.run("squeue", "--all", "--noheader", "--states=all", "--format=%i|%T|%j")
        return [
            dict(zip(("id", "state", "name"), line.split("|"), strict=True)) for line in out.split()
        ]

    def release_requeued(self, job: str, timeout: float = 120) -> float:
        """Once `job` is back in the queue after a requeue, let it start now: SLURM holds a
        requeued job for about 2 minutes (its EligibleTime), which the tests need not wait.
        Returns the seconds until it was pending again."""
        start, deadline = time.time(), time.time() + timeout
        while time.time() < deadline:
            state = self.run("squeue", "--noheader", "--states=all", "-j", job, "-o", "%T")
            if state.strip() == "PENDING":
                self.run("scontrol", "update", f"JobId={job}", "StartTime=now")
                return time.time() - start
            time.sleep(0.2)
        raise RuntimeError(f"job {job} was never requeued\n{self.logs()}")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until the node is idle (no job on it) and the controller answers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run("sinfo", "--noheader", "--format=%t", "--partition=main", check=False)
            if out.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node never became idle\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{tail(self.dir / name, 20)}"
            for name in ("slurmctld.log", "slurmd.log", "munge/munged.log")
        )


def require_slurm() -> None:
    """Skip (or fail under SWEEPLAB_REQUIRE_SERVICES=1) without the packages or without root."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        missing_service(f"SLURM ({', '.join(missing)})", INSTALL_HINT)
    if os.geteuid() != 0:
        missing_service("root (the test cluster's daemons run as root)", "run the tests as root")


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    return int(total_kb / 1024 * 0.8)


@contextlib.contextmanager
def slurm_running() -> Iterator[Slurm]:
    """munged + slurmctld + slurmd of a one-node cluster, up until the block ends."""
    require_slurm()
    base = Path(tempfile.mkdtemp(prefix="sweeplab-slurm-"))
    os.chmod(base, 0o755)  # munged checks that its socket's folders can be traversed
    for sub in ("state", "spool", "munge"):
        (base / sub).mkdir(mode=0o755)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host, cpus = socket.gethostname().split(".")[0], os.cpu_count() or 1
    conf = CONF.format(
        host=host,
        dir=base,
        cpus=cpus,
        memory_mb=_memory_mb(),
        ctld_port=free_port(),
        d_port=free_port(),
    )
    cluster = Slurm(base, host, cpus)
    cluster.conf.write_text(conf)
    munge = base / "munge"
    started = []
    try:
        for cmd in (
            [
                "munged",
                "--force",
                f"--socket={munge}/munge.socket",
                f"--key-file={key}",
                f"--log-file={munge}/munged.log",
                f"--pid-file={munge}/munged.pid",
                f"--seed-file={munge}/munged.seed",
            ],
            ["slurmctld", "-c", "-f", str(cluster.conf)],  # -c: a clean state, no old jobs
            ["slurmd", "-f", str(cluster.conf)],
        ):
            proc = subprocess.run(cmd, env=cluster.env(), capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd[0]} did not start: {proc.stderr}\n{cluster.logs()}")
            started.append(cmd[0])
        cluster.wait_idle()
        yield cluster
    finally:
        _stop(cluster, started)
        shutil.rmtree(base, ignore_errors=True)


def _stop(cluster: Slurm, started: list[str]) -> None:
    """Cancel every job, stop the daemons, wait until their pid files' processes are gone."""
    if "slurmctld" in started:
        with contextlib.suppress(Exception):
            cluster.run("scancel", "--full", "--user=root", check=False)
            cluster.run("scontrol", "shutdown", check=False)
    if "munged" in started:
        sock = cluster.dir / "munge" / "munge.socket"
        subprocess.run(["munged", "--stop", f"--socket={sock}"], capture_output=True)
    for name in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int((cluster.dir / name).read_text().split()[0])
            deadline = time.time() + 20
            while time.time() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, 9)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
