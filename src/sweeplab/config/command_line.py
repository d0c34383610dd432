"""A train.py command line checked before Hydra reads it: what Hydra would report as a
traceback or as its own multi-line message with exit 1 becomes one line and exit 2."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

# Hydra's modes, of which one command may give one (Hydra raises a ValueError traceback for
# two, before a task function runs).
MODES = {"--run": "-r", "--multirun": "-m", "--cfg": "-c", "--info": "-i"}


def command_line_problem(argv: list[str], conf: Path) -> str | None:
    """What is wrong with a train.py command line that Hydra would not say in one line: two
    modes at once, or a config-group option with no file in `conf/` nor in a folder added by
    `hydra.searchpath=[file://...]` or `--config-dir` (Hydra: its own multi-line message, exit
    1). None when Hydra may have it."""
    given = {a.split("=", 1)[0] for a in argv}
    modes = [long for long, short in MODES.items() if long in given or short in given]
    if len(modes) > 1:
        return (
            f"{' and '.join(modes)} cannot be combined: give one of them (to see a sweep "
            "job's config, drop -m: python src/train.py --cfg job <overrides>)"
        )
    lines = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except OverrideParseException:
        return None  # Hydra's own message for a malformed override is one line already
    roots = _config_roots(argv, overrides, conf)
    if roots is None:
        return None  # a search path only Hydra can read (pkg://): Hydra decides
    for override in overrides:
        group = override.key_or_group
        folders = [root / group for root in roots if (root / group).is_dir()]
        if group.startswith("hydra") or "." in group or not folders:
            continue  # a knob, or a group of Hydra's plugins
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        options = sorted({f.stem for folder in folders for f in folder.glob("*.yaml")})
        for value in values:
            if value not in options and value != "null":
                return (
                    f"Could not find '{group}/{value}': the options of {group} are "
                    f"{', '.join(options)}"
                )
    return None


def _config_roots(argv: list[str], overrides: list, conf: Path) -> list[Path] | None:
    """The folders Hydra composes from: `conf/`, `--config-dir`/`-cd` and the `file://`
    entries of `hydra.searchpath`; None if one of them is not a folder on disk."""
    roots = [conf]
    for i, arg in enumerate(argv):
        for flag in ("--config-dir", "-cd"):
            if arg == flag and i + 1 < len(argv):
                roots.append(Path(argv[i + 1]))
            elif arg.startswith(flag + "="):
                roots.append(Path(arg.split("=", 1)[1]))
    for override in overrides:
        if override.key_or_group != "hydra.searchpath":
            continue
        value = override.value()
        for entry in value if isinstance(value, list) else [value]:
            if not str(entry).startswith("file://"):
                return None
            roots.append(Path(str(entry).removeprefix("file://")))
    return roots
