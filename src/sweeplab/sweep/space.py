"""An Optuna search space from Hydra sweep overrides: the official Optuna sweeper plugin's
syntax (`interval`, `tag(log, ...)`, `int(...)`, `range`, `choice`, `a,b`) on current Optuna."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from omegaconf import OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweeplab.errors import SweeplabError


class SearchError(SweeplabError):
    """The search cannot go on (bad space or settings, storage unset or unreachable, too many
    failed trials)."""


def distribution(override: Override) -> Any:
    """An Optuna distribution for a sweep override (the official plugin's syntax), or the
    plain value of a fixed one. `range` follows Hydra (stop excluded)."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(values[0], values[-1], step=value.step)
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise SearchError(f"{override.input_line}: not a search space Optuna can sample")


def search_space(params: dict | None, arguments: list[str]) -> tuple[dict, dict]:
    """({key: distribution}, {key: fixed value}) from hydra.sweeper.params and the command line."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        try:
            value = distribution(override)
        except ValueError as e:  # Optuna: low > high, log with low <= 0, ...
            raise SearchError(f"{override.input_line}: {e}") from None
        target = space if isinstance(value, BaseDistribution) else fixed
        key = override.get_key_element()
        space.pop(key, None), fixed.pop(key, None)  # the command line wins over params
        target[key] = value
    return space, fixed


def shown(d: BaseDistribution | None) -> str:
    """A distribution as an error line shows it: Float(low=0.001, high=0.1, log=True)."""
    if d is None:
        return "none"
    fields = ", ".join(f"{k}={v}" for k, v in vars(d).items() if v is not None and v is not False)
    return f"{type(d).__name__.removesuffix('Distribution')}({fields})"


def is_listed(value: Any) -> bool:
    return OmegaConf.is_list(value) or isinstance(value, (list, tuple))


def as_list(value: Any) -> list[str]:
    """`optimized_metric` / `direction`: one name, or a list of them (multi-objective)."""
    return [str(v) for v in (value if is_listed(value) else [value])]
