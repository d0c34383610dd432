"""SQLite database files that are created whole: the MLflow store and the Optuna study file.

MLflow and Optuna create their tables one statement at a time, and SQLite commits each
`CREATE`/`ALTER` on its own: a process stopped half-way (Ctrl-C, a kill, a full disk) leaves a
file that every later open trips over ("table assessments already exists"). Here a new database
is built under a temporary name in the same folder and only then linked into place, so the
path holds either nothing or a complete database. Callers hold a file lock around this (the
store lock), so temporaries left by a killed creation can be removed at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CREATING = ".creating-"  # temporary files: .<name>.creating-<pid>-<random>[-journal]


SQLITE = "sqlite:///"


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///<path>[?query]` URL, else None (any other database)."""
    return Path(url[len(SQLITE) :].split("?")[0]) if url.startswith(SQLITE) else None


def temporaries(path: Path) -> list[Path]:
    """Files a creation of `path` left behind (only ever stale when the caller holds the lock)."""
    return sorted(path.parent.glob(f".{path.name}{CREATING}*"))


def remove_temporaries(path: Path) -> int:
    n = 0
    for tmp in temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            n += 1
    return n


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh temporary name beside `path` (same filesystem, so a link or rename is atomic);
    whatever is left under it (database, journal) is removed on the way out, also on Ctrl-C."""
    tmp = path.with_name(f".{path.name}{CREATING}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
    finally:
        for leftover in (tmp, *(Path(f"{tmp}{s}") for s in ("-journal", "-wal", "-shm"))):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def create_whole(path: Path, make: Callable[[str], None], *, replace: bool = False) -> bool:
    """Build a database with `make(sqlite_url)` under a temporary name, then put it at `path`.

    Without `replace`, the file is hard-linked into place, which fails if another process (an
    `mlflow ui`, a notebook) created `path` meanwhile: then nothing is overwritten and False is
    returned. With `replace`, an existing file (one found incomplete and empty) is replaced.
    """
    with temporary_beside(path) as tmp:
        make(f"{SQLITE}{tmp}")
        _fsync(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as e:  # a filesystem without hard links: rename, if still free
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if path.exists():
                    return False
                os.replace(tmp, path)
        _fsync(path.parent)
    return True


def copy_into(source: Path, url: str) -> None:
    """A consistent copy of `source` at the sqlite `url` (SQLite's online backup)."""
    target = sqlite_path(url)
    ro = f"{source.as_uri()}?mode=ro"
    with (
        contextlib.closing(sqlite3.connect(ro, uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def tables(path: Path) -> dict[str, int]:
    """{table: row count (0 or 1: whether it has any)} of a database, opened read-only."""
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as c:
        names = [n for (n,) in c.execute("select name from sqlite_master where type='table'")]
        return {n: c.execute(f'select exists(select 1 from "{n}")').fetchone()[0] for n in names}


def scalar(path: Path, query: str) -> object:
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as c:
        row = c.execute(query).fetchone()
        return row[0] if row else None


def wait_until_still(path: Path, quiet_s: float = 2.0, timeout_s: float = 60.0) -> None:
    """Wait until neither `path` nor its journal has changed for `quiet_s`: a database another
    process is creating right now (MLflow's own, non-atomic creation) is finished by then."""

    def stamp() -> tuple:
        out = []
        for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal")):
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    deadline, last, since = time.monotonic() + timeout_s, stamp(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        now = stamp()
        if now != last:
            last, since = now, time.monotonic()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
