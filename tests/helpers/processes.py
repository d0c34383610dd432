"""train.py as a user runs it: in a process of its own, read line by line, interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.config import TRAIN_SCRIPT

# A synthetic job that takes a few seconds per epoch: long enough to be interrupted.
SLOW = [
    "dataset=synthetic",
    "dataset.num_train=1500",
    "dataset.num_test=200",
    "trainer.epochs=4",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "trainer.num_threads=1",
]


def _sigint_as_in_a_terminal() -> None:
    # A shell's background job (`pytest ... &`) ignores SIGINT and children inherit that, so
    # Ctrl-C would do nothing; a job started from a terminal has the default, as here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_sigint_as_in_a_terminal,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 300) -> list[str]:
    """Read the job's output until `needle` appears (the job keeps running)."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {needle!r}:\n" + "".join(lines[-30:]))


def reference_and_killed(args: list[str], root: Path, *lines: str):
    """Start `args` twice, in root/ref and root/cut; SIGKILL the second once it has printed
    each of `lines` in turn (nothing can run: no handler, no cleanup). Returns the reference
    process, still running, and both folders."""
    ref_dir, cut_dir = root / "ref", root / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    reference = start(args, ref_dir)
    interrupted = start(args, cut_dir)
    for line in lines:
        wait_for_line(interrupted, line)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.communicate(timeout=60)
    return reference, ref_dir, cut_dir


def sweep(args: list[str], cwd: Path, timeout: int = 600) -> tuple[int, str]:
    proc = start(["-m", *args], cwd)
    return proc.wait(timeout=timeout), proc.stdout.read()


def run_train(
    args: list[str], cwd: Path, env: dict[str, str], timeout: int
) -> subprocess.CompletedProcess:
    """train.py with `args` to its end, output captured."""
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
