"""What a run records about itself: its config as flat params, its config files, its git state.

Machine paths become relative to the launch dir and secrets are masked (see redact.py), so a
logged run can be shared and re-run elsewhere.
"""

from __future__ import annotations

import enum
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeplab.config.redact import env_sourced_keys, redact_config, redact_flat, redacted_overrides


def flatten_config(cfg: DictConfig, launch_dir: Path) -> dict[str, str]:
    """The resolved config as flat `group.key` -> string params, without machine paths or
    secrets (see redact.py)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = _param_value(node, launch_dir)

    walk("", container)
    flat = redact_flat(flat, env_sourced_keys(cfg))
    return {_shorten_key(k): v for k, v in flat.items()}


def _param_value(value: Any, launch_dir: Path) -> str:
    if isinstance(value, enum.Enum):
        value = value.name
    text = "null" if value is None else str(value)
    text = relativize_paths(text, launch_dir)

    if len(text) > MAX_PARAM_VAL_LENGTH:
        marker = "...[truncated]"
        text = text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
    return text


def relativize_paths(text: str, launch_dir: Path) -> str:
    """Absolute paths (also inside sqlite:/// and file:// URIs) -> relative to the launch dir."""
    for prefix in ("sqlite:///", "file://", ""):
        if text.startswith(prefix) and os.path.isabs(text[len(prefix) :]):
            return prefix + os.path.relpath(text[len(prefix) :], launch_dir)
    return text


def _shorten_key(key: str) -> str:

    if len(key) <= MAX_ENTITY_KEY_LENGTH:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return key[: MAX_ENTITY_KEY_LENGTH - 9] + "~" + digest


def git_state(cwd: Path) -> dict[str, str]:
    """{'git.commit': sha, 'git.dirty': 'true'|'false'}, or {} outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git.commit": sha.stdout.strip(), "git.dirty": str(bool(status.stdout.strip())).lower()}


def write_config_files(cfg: DictConfig, output_dir: Path) -> tuple[Path, Path]:
    """The job's config and overrides (Hydra's saved ones if any), secrets redacted, for logging.

    The config stays unresolved, as Hydra saves it: `${oc.env:...}` values are re-read from
    the environment when the run is re-run, never written down.
    """
    hydra_dir = output_dir / ".hydra"
    if (hydra_dir / "config.yaml").is_file():
        config = OmegaConf.load(hydra_dir / "config.yaml")
    else:
        config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else ListConfig([])
    out = output_dir / ".sweeplab"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(redact_config(config)))
    clean = ListConfig(redacted_overrides(overrides))
    (out / "overrides.yaml").write_text(OmegaConf.to_yaml(clean))
    return out / "config.yaml", out / "overrides.yaml"
