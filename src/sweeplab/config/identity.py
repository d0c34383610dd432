"""What a run *is*: which config keys change what it computes, its hash, a sweep's id.

One list says which keys do not (where output goes, how it is tracked, how a sweep behaves);
the config hash (resume and skip), the sweep id (re-launching continues a sweep) and run names
(`optimizer=adam,model=lenet`) all derive from it, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from sweeplab.config.redact import redacted_overrides

# Keys (and everything under them) that say where a run goes, not what it computes.
NON_SEMANTIC = (
    "hydra",
    "output_dir",
    "tracking",
    "optimized_metric",
    "sweep",
    "trainer.resume",
    "dataset.root",
)


def is_semantic(key: str) -> bool:
    """`optimizer.lr` yes; `tracking.root`, `+sweep.dry_run`, `dataset.root` no."""
    key = key.lstrip("+~")
    return not any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def semantic_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if is_semantic(override_key(o))]


SEED = "trainer.seed"


def config_hash(cfg: DictConfig, ignore: tuple[str, ...] = ()) -> str:
    """Stable id of what a config computes: the resolved config minus the non-semantic keys
    (and minus `ignore`: `config_hash(cfg, ignore=(SEED,))` is the same for every seed of a
    configuration, so a report can average over seeds)."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in (*NON_SEMANTIC, *ignore):
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sweep_id(config: DictConfig) -> str:
    """Same command (what it sweeps and sets) in the same experiment -> same id, so launching
    a sweep again continues its parent run instead of starting another one. Secrets are
    masked first: their values never change a sweep's identity."""
    task = sorted(semantic_overrides(redacted_overrides(config.hydra.overrides.task)))
    params = config.hydra.sweeper.get("params") or {}
    searched = sorted((str(k), str(v)) for k, v in params.items() if is_semantic(str(k)))
    text = repr((task, searched))
    return hashlib.sha256(text.encode()).hexdigest()[:10]
