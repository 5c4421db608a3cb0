"""Private Redis and PostgreSQL servers that a test may kill and restart (never the shared ones), and the bench's
own PostgreSQL (``make bench --pg private``: pg_stat_statements preloaded, fsync on).

Each server runs on a free port of its own, with its data in a temporary directory, and is
removed at the end. PostgreSQL refuses to run as root, so when the tests run as root its
``initdb`` and ``pg_ctl`` run as the ``postgres`` system user (present wherever the Debian
package is installed).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from tests.support import unavailable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not happen within {timeout:g} s")


class PrivateRedis:
    """A throwaway ``redis-server`` (no persistence: a kill loses its queues, as a crash would)."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or unavailable("redis-server")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="catalyst-redis-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait(self.answers, 30, f"private Redis on port {self.port} to answer")

    def kill(self) -> None:
        """SIGKILL: the plug is pulled, nothing is saved."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    return found or unavailable(f"PostgreSQL's {name}")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster with trust auth, stopped with ``immediate`` (a crash) and restarted."""

    def __init__(self, *settings: str, durable: bool = False) -> None:
        """``settings``: extra ``name=value`` server settings (e.g. ``shared_preload_libraries=pg_stat_statements``).
        ``durable``: fsync on, as a real server runs (the bench measures with it); tests run without."""
        self.settings = settings if durable else ("fsync=off", *settings)
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="catalyst-pg-"))
        self.data = self.dir / "data"
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("a 'postgres' system user to run a private PostgreSQL as root")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def _run(self, *argv: str) -> None:
        def as_postgres():
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        subprocess.run(argv, check=True, capture_output=True, preexec_fn=as_postgres, cwd=str(self.dir), timeout=120)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        options += "".join(f" -c {setting}" for setting in self.settings)
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.dir / "pg.log"), "-w", "start")
        _wait(self.answers, 30, f"private PostgreSQL on port {self.port} to answer")

    def stop(self) -> None:
        """``immediate``: every connection drops at once, no checkpoint (like pulling the plug)."""
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
