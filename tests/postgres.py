"""A real PostgreSQL server for tests: initdb and pg_ctl as the `postgres` user on a temp folder, a free local port,
fsync off; stopped and removed at the end whatever happens. Skips with the reason when the binaries are missing."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def version(name: str) -> list[int]:
    return [int(n) for n in name.split(".") if n.isdigit()]


def _bin() -> Path:
    """PG_BIN, else the newest server under /usr/lib/postgresql/<version>/bin (Debian's postgresql package, which
    .ci/run installs where it is missing; the image has 15)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: version(p.parent.parent.name))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=60)


def missing() -> str | None:
    """Why no server can start here, or None."""
    for tool in ("initdb", "pg_ctl", "psql"):
        if not (BIN / tool).exists():
            return f"PostgreSQL binaries missing: no {BIN / tool} (set PG_BIN to their folder)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no 'postgres' user to run initdb as (initdb refuses root)"
        if shutil.which("runuser") is None:
            return "runuser missing: needed to run initdb as the postgres user"
    return None


@contextmanager
def server(database: str) -> Iterator[str]:
    """A fresh server's SQLAlchemy URL (`postgresql+psycopg2://postgres@127.0.0.1:PORT/DATABASE`)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="diffexp-pg-"))
    data, sock, port = root / "data", root / "sock", free_port()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    started = False
    try:
        out = _as_postgres(str(BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
        assert out.returncode == 0, out.stderr
        options = f"-k {sock} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
        out = _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o", options, "start")
        started = out.returncode == 0
        assert started, out.stderr + (root / "log").read_text() if (root / "log").exists() else out.stderr
        psql = [str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        out = _as_postgres(*psql, "-c", f"CREATE DATABASE {database}")
        assert out.returncode == 0, out.stderr
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def listening(port: int) -> bool:
    """Whether something listens on the port (the server is stopped at the end)."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
