"""Which device a run trains on, and the seeds and backend flags that make it reproducible/fast."""

from __future__ import annotations

import os

import torch

from sweeplab.config.schema import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(f"trainer.device={name}: this machine has {n} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}: MPS is not available on this machine")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic  # fastest conv algorithms, picked once
    # TF32 matmuls/convs on Ampere+ GPUs: ~10-bit mantissa products, fp32 accumulation
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
