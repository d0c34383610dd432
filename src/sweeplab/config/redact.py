"""Keep secrets out of MLflow: params, tags and the logged config go through here.

Redacted: values whose key looks like a credential, values that come from `${oc.env:...}`
(environment variables often carry tokens), and the password part of URIs (`scheme://user:pw@`).
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

MASK = "***"
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|credential|private[_-]?key", re.I)
# Hydra's sweepers escape `:` in the overrides they hand to jobs (`postgresql\://u\:pw@h`).
URI_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*\\?://[^/:@\s]*\\?:)(?P<pw>[^@/\s]+)(?=@)", re.I
)


def redact_uri(text: str) -> str:
    return URI_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def env_sourced_keys(cfg: DictConfig) -> set[str]:
    """Dotted keys whose (unresolved) value reads an environment variable. A list counts as
    one key (params log it as one value), as does a node that interpolates a whole subtree."""
    found: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                full = f"{prefix}.{k}" if prefix else str(k)
                if full != "hydra":
                    walk(v, full)
        elif "oc.env" in str(node):
            found.add(prefix)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found


def redact_flat(flat: dict[str, str], env_keys: set[str]) -> dict[str, str]:
    return {
        k: MASK if (is_secret_key(k) or k in env_keys) else redact_uri(v) for k, v in flat.items()
    }


def redact_override(override: str) -> str:
    """`+db.password=x` -> `+db.password=***`; credentials in URIs masked."""
    key, sep, value = override.partition("=")
    if sep and is_secret_key(key.lstrip("+~")):
        return f"{key}={MASK}"
    return redact_uri(override)


def typed_overrides(overrides: ListConfig | list) -> list[str]:
    """Overrides as typed. Read unresolved: an element of an OmegaConf list such as
    `+k=${oc.env:TOKEN}` is an interpolation, and reading it plainly returns the variable's
    value (which is how tokens reached tags and files before)."""
    if isinstance(overrides, ListConfig):
        overrides = OmegaConf.to_container(overrides, resolve=False)
    return [str(o) for o in overrides]


def redacted_overrides(overrides: ListConfig | list) -> list[str]:
    """Overrides as typed, secrets masked: what may be logged or written."""
    return [redact_override(o) for o in typed_overrides(overrides)]


def redact_config(cfg: DictConfig) -> DictConfig:
    """A copy for logging: secret keys masked, URIs scrubbed; `${oc.env:...}` stay unresolved."""

    def clean(node: Any, key: str) -> Any:
        if isinstance(node, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v, key) for v in node]
        if node is not None and is_secret_key(key):
            return MASK
        return redact_uri(node) if isinstance(node, str) and "oc.env" not in node else node

    return OmegaConf.create(clean(OmegaConf.to_container(cfg, resolve=False), ""))


class RedactingFilter(logging.Filter):
    """Masks URI credentials in every record a handler writes, whoever logged it (MLflow's and
    urllib3's messages carry request URLs as given, `http://user:password@host`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if URI_PASSWORD.search(message):
            record.msg, record.args = redact_uri(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_uri("".join(traceback.format_exception(*record.exc_info)))
        return True


def redact_logs(*loggers: str) -> None:
    """Put a RedactingFilter on every handler of the root logger and of `loggers` (those that
    do not propagate, like MLflow's), once."""
    for name in ("", *loggers):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
