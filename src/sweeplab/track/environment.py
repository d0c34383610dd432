"""What a run ran on: package versions, Python, CUDA / cuDNN, OS, CPU and GPU (issue 23).

Each run records the key versions as tags (`sweeplab.env.<name>`, columns in the MLflow UI) and
every installed distribution as `environment/requirements.txt` (`name==version`, as `pip
freeze` prints them but read from the `*.dist-info` folder names on sys.path: no paths, so
nothing of the machine's layout). A re-run compares the recorded tags with this process and
prints what differs.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import sys

import torch

TAG_PREFIX = "sweeplab.env."
PACKAGES = ("torch", "torchvision", "mlflow", "optuna", "hydra-core", "omegaconf", "numpy")


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """{name: version} of what decides a run's numbers besides its code and config (computed
    once per process: the jobs of an in-process sweep share it)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        **{name: _installed(name) for name in PACKAGES},
        "cuda": str(torch.version.cuda or "none"),
        "cudnn": str(cudnn or "none"),
        "os": platform.platform(terse=True),
        "cpu": _cpu(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def tags() -> dict[str, str]:
    return {f"{TAG_PREFIX}{k}": v for k, v in versions().items()}


@functools.lru_cache(maxsize=1)
def requirements() -> str:
    """Every installed distribution, `name==version` per line, sorted by name. Read from the
    `<name>-<version>.dist-info` folder names on sys.path (1-2 ms; importlib.metadata parses
    every METADATA file: ~50 ms for 135 distributions); the first found of a name wins, as
    for imports."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            stem, dot, kind = folder.rpartition(".")
            if not dot or kind not in ("dist-info", "egg-info"):
                continue
            name, dash, version = stem.partition("-")
            key = name.lower().replace("_", "-")
            if key in found:
                continue
            if not dash:  # an editable install's egg-info names no version
                version = _installed(name)
            found[key] = f"{key}=={version.split('-')[0]}"
    head = f"# python {sys.version.split()[0]} on {platform.platform(terse=True)}\n"
    return head + "".join(f"{line}\n" for _, line in sorted(found.items()))


def differences(recorded: dict[str, str]) -> list[str]:
    """`name old -> new` for each recorded version this process does not match."""
    now = versions()
    out = []
    for key, old in recorded.items():
        if not key.startswith(TAG_PREFIX):
            continue
        name = key[len(TAG_PREFIX) :]
        new = now.get(name)
        if new is not None and new != old:
            out.append(f"{name} {old} -> {new}")
    return out
