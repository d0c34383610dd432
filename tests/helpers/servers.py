"""Throwaway servers for end-to-end tests: a PostgreSQL cluster and an MLflow tracking server.

Both listen on 127.0.0.1 on free ports, live in fresh temporary directories, and are stopped
(process group terminated, `pg_ctl stop`) when the `with` block ends, also on a failure. They
are context managers, so a test module wraps them in fixtures of the scope it needs (see
test_server.py) or uses them inline (test_ui.py). (Fixtures imported from a plain module trip
ruff's F811, and `pytest_plugins` warns when the module was imported before.)

PostgreSQL comes from Debian's `postgresql` package (`.ci/run` installs it when missing). A
missing install skips the tests that need it, with the reason, unless SWEEPLAB_REQUIRE_SERVICES=1
(set by `.ci/run`), which makes it a failure: CI must never pass by skipping them. Postgres
refuses to run as root, so as root the cluster is created and run as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "sweeplab"  # superuser of the throwaway cluster (trust auth: it only listens locally)
PG_DB = "mlflow"
INSTALL_HINT = "sudo apt-get install -y postgresql (or run bash .ci/run, which installs it)"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; tiny race accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb (Debian keeps the server
    binaries off PATH), else the directory of an `initdb` on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    missing_service("PostgreSQL server binaries (initdb, pg_ctl)", INSTALL_HINT)


REQUIRE_SERVICES_ENV = "SWEEPLAB_REQUIRE_SERVICES"


def missing_service(what: str, install_hint: str):
    """Skip the test (a newcomer's machine may lack the package), or fail it under
    SWEEPLAB_REQUIRE_SERVICES=1, as in CI."""
    message = f"{what} not found; install: {install_hint}"
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_SERVICES_ENV}=1 requires it)")
    pytest.skip(f"{message} ({REQUIRE_SERVICES_ENV}=1 turns this skip into a failure)")


def as_postgres_user(cmd: list[str]) -> list[str]:
    """Postgres will not run as root: run the command as the `postgres` system user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    bin: Path
    home: Path  # temp dir holding the cluster's data/ and its log
    port: int
    db: str = PG_DB

    @property
    def dsn(self) -> str:
        """libpq connection URI (psql, psycopg2)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{self.db}"

    @property
    def uri(self) -> str:
        """SQLAlchemy URI for `mlflow server --backend-store-uri`. The driver is named: since
        SQLAlchemy 2.1 a bare postgresql:// means psycopg 3, and the dev extra has psycopg2."""
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{self.db}"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.dsn)) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()


def _run_pg(cmd: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(as_postgres_user(cmd), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        server_log = f"\n--- server log ---\n{tail(log)}" if log else ""
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{server_log}")


def _pg_home() -> Path:
    """A temp dir the cluster's user owns. Not under pytest's tmp_path: that is private to the
    test user (mode 0700), so the `postgres` user could not even reach it."""
    home = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(home)
            pytest.fail(
                f"running as root needs the `postgres` system user; install: {INSTALL_HINT}"
            )
        os.chown(home, user.pw_uid, user.pw_gid)
    return home


@contextlib.contextmanager
def postgres_running() -> Iterator[Postgres]:
    """initdb + pg_ctl start -w + createdb on 127.0.0.1:<free port>; stopped and removed after."""
    pg = Postgres(bin=postgres_bin(), home=_pg_home(), port=free_port())
    data = pg.home / "data"
    started = False
    try:
        _run_pg(
            [
                str(pg.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            "initdb",
        )
        # TCP on loopback only; no unix socket, so nothing depends on /var/run/postgresql.
        options = f"-p {pg.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        started = True  # from here on, always try to stop it (start -w may time out half-way)
        _run_pg(
            [
                str(pg.bin / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(pg.log),
                "-o",
                options,
            ],
            "pg_ctl start",
            pg.log,
        )
        _run_pg(
            [str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", PG_USER, pg.db],
            "createdb",
            pg.log,
        )
        yield pg
    finally:
        if started:
            subprocess.run(
                as_postgres_user(
                    [
                        str(pg.bin / "pg_ctl"),
                        "stop",
                        "-D",
                        str(data),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "60",
                    ]
                ),
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(pg.home, ignore_errors=True)


# --- MLflow tracking server --------------------------------------------------------------------


@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen
    log: Path
    artifacts: Path | None = None


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (uvicorn workers included), SIGKILL if stuck."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def wait_healthy(server: MlflowServer, timeout: float = 120) -> None:
    """Poll /health until it answers 200; the first start on an empty database runs all schema
    migrations, which takes several seconds."""
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.proc.returncode}):\n{tail(server.log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f} s:\n{tail(server.log)}")


@contextlib.contextmanager
def mlflow_server_running(
    backend_uri: str,
    workdir: Path,
    artifacts: Path | None = None,
    command: str = "server",
    extra: tuple[str, ...] = (),
) -> Iterator[MlflowServer]:
    """`mlflow server` (or `mlflow ui`, the same server) from this venv on 127.0.0.1:<free
    port>; its log in `workdir`.

    `artifacts`: serve artifacts through the server from that directory (clients then need no
    access to it). One worker: the tests are small and the CI machine has 2 cores.
    """
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        command,
        "--backend-store-uri",
        backend_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        *extra,
    ]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"mlflow-server-{port}.log"
    # Own session: teardown can kill the whole group; cwd=workdir: nothing lands in the repo.
    # The client-side URI variable must not leak into the server (it is not a client here).
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # No job runner: it forks ~8 huey worker processes for GenAI jobs that these tests never
    # use, seconds of CPU on a 2-core machine.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", proc, log, artifacts)
    try:
        wait_healthy(server)
        yield server
    finally:
        _stop_group(proc)
