"""A throwaway PostgreSQL server for the tests: started once per session in a temporary directory, stopped at the end.

    server = PostgresServer.start(tmp_dir)   # initdb + pg_ctl on a free port of 127.0.0.1
    dsn = server.new_database()               # an empty database of its own, for one store

Nothing here reaches a server the tests did not start. The binaries are PostgreSQL's ``initdb`` and ``pg_ctl``, looked
up on ``PATH`` and then in ``/usr/local/bin`` and ``/usr/lib/postgresql/*/bin`` (``make test`` installs Debian's
``postgresql`` where they are missing); without them ``start`` fails with a message that says so: nothing is skipped.
PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user, owning its directory.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

_SEARCH = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]


def find_binary(name: str) -> str:
    found = shutil.which(name) or next((f"{d}/{name}" for d in _SEARCH if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} was not found on PATH nor in {', '.join(_SEARCH)}: the PostgreSQL "
                           "store tests need it; install Debian's postgresql (`make test` does) or put it on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``data`` is its directory, ``port`` its TCP port on 127.0.0.1, ``user`` its superuser."""

    data: Path
    port: int
    user: str
    run_as: str | None  # the OS user the server runs as, when this process is root
    options: str = ""  # the settings it was started with (``pg_ctl -o``)
    _numbers = itertools.count(1)

    @classmethod
    def start(cls, directory: Path, settings: dict[str, str] | None = None) -> "PostgresServer":
        """``settings`` are extra ``postgresql.conf`` settings (``{"wal_level": "logical"}``), given as ``-c``."""
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        run_as = "postgres" if os.geteuid() == 0 else None
        data = directory / "data"
        directory.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            os.chmod(directory, 0o700)
        port = _free_port()
        _run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
              "--no-sync"], run_as)
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={directory} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                   "-c shared_buffers=32MB")
        options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "server.log"), "-w", "-t", "60",
              "start"], run_as)
        return cls(data, port, "postgres", run_as, options)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """The DSN of a new, empty database on this server."""
        name = f"t{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        _run([find_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], self.run_as)

    def start_again(self) -> None:
        """Start the stopped server again, on the same port with the same settings."""
        _run([find_binary("pg_ctl"), "-D", str(self.data), "-o", self.options, "-l",
              str(self.data.parent / "server.log"), "-w", "-t", "60", "start"], self.run_as)


@contextmanager
def throwaway_server(prefix: str, settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A server started in a new temporary directory, stopped and removed at the end. Not under pytest's tmp_path:
    its parents are private to this user, and under root the server runs as postgres."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    server = PostgresServer.start(directory, settings)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _run(command: list[str], run_as: str | None) -> None:
    result = subprocess.run(command, user=run_as, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed ({result.returncode}): {result.stderr or result.stdout}")
