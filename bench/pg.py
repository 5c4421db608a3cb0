"""The benchmark's PostgreSQL: a fresh migrated database per run, and the server's own counters for it.

Why server-side counters: they see every transaction of every process (worker children, beat, the
heartbeat threads) without touching the code under test. ``pg_stat_database`` counts transactions and
rows; round trips need ``pg_stat_statements`` (it must be in ``shared_preload_libraries``), which a
stock server does not load, so they are reported as unavailable there instead of guessed.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import psycopg

PG_ADMIN = os.environ.get("BENCH_PG_URL", os.environ.get("CATALYST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
STAT_COLUMNS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_returned",
                "tup_fetched")


def _admin(sql: str, admin: str = PG_ADMIN) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql)


def create_database(admin: str = PG_ADMIN) -> tuple[str, str]:
    """(name, SQLAlchemy URL) of a new, migrated database; drop it with :func:`drop_database`."""
    from catalyst.db.engine import dispose_all, upgrade

    name = f"catalyst_bench_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}", admin)
    url = f"{admin.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade(url)
    dispose_all()
    return name, url


def drop_database(name: str, admin: str = PG_ADMIN) -> None:
    from catalyst.db.engine import dispose_all

    dispose_all()
    try:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", admin)
    except psycopg.Error:
        pass


def server_version(admin: str = PG_ADMIN) -> str:
    with psycopg.connect(admin) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


@dataclass(frozen=True)
class PgSnapshot:
    """``pg_stat_database`` for one database, plus pg_stat_statements' call count when it is loaded."""

    counters: dict[str, int]
    statements: int | None

    def minus(self, earlier: "PgSnapshot") -> dict[str, int | None]:
        delta: dict[str, int | None] = {k: self.counters[k] - earlier.counters[k] for k in STAT_COLUMNS}
        both = self.statements is not None and earlier.statements is not None
        delta["statements"] = self.statements - earlier.statements if both else None
        return delta


def statements_available(name: str, admin: str = PG_ADMIN) -> bool:
    """Create pg_stat_statements in the bench database if the server preloads it."""
    with psycopg.connect(admin) as conn:
        loaded = "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if not loaded:
        return False
    with psycopg.connect(f"{admin.rsplit('/', 1)[0]}/{name}", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return True


def snapshot(name: str, with_statements: bool, admin: str = PG_ADMIN) -> PgSnapshot:
    """The server's cumulative counters for database ``name`` (read from the admin database, so the
    reading itself is not counted against the bench database)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(f"SELECT {', '.join(STAT_COLUMNS)} FROM pg_stat_database WHERE datname = %s",
                           (name,)).fetchone()
    statements = None
    if with_statements:  # the view lives in the bench database; this one reading adds 1 call per snapshot
        with psycopg.connect(f"{admin.rsplit('/', 1)[0]}/{name}", autocommit=True) as conn:
            statements = int(conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = %s", (name,)).fetchone()[0])
    return PgSnapshot(dict(zip(STAT_COLUMNS, (int(v) for v in row))), statements)
