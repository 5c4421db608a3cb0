"""Engines and sessions, one per process (re-created after a fork), plus migration checks."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from catalyst.core.domain import CatalystError

ROOT = Path(__file__).resolve().parents[2]
# The Alembic scripts sit beside the package in a checkout; an installed package (the Docker image) is told
# where they are, since they are not Python package data.
MIGRATIONS = Path(os.environ.get("CATALYST_MIGRATIONS") or ROOT / "migrations")
CONNECT_TIMEOUT = 5  # seconds for a PostgreSQL connect (psycopg connect_timeout)

_lock = threading.Lock()
_engines: dict[tuple[int, str], tuple[Engine, sessionmaker]] = {}


class NotMigrated(CatalystError):
    """The database schema is missing or behind the code."""


def make_engine(url: str) -> Engine:
    """An engine tuned for its backend: SQLite gets WAL and a busy timeout so processes can share it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A server that silently drops packets must not hang a worker or beat for the operating system's TCP
    # timeouts (minutes to hours): a connect gives up after CONNECT_TIMEOUT, an idle connection is probed by
    # keepalives (dead after ~25 s), and a request the server never acknowledges fails after 30 s.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 10,
                                       "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000})


def get_engine(url: str | None = None) -> Engine:
    return _get(url)[0]


def get_sessionmaker(url: str | None = None) -> sessionmaker:
    return _get(url)[1]


def _get(url: str | None) -> tuple[Engine, sessionmaker]:
    if url is None:
        from catalyst.settings import get_settings

        url = get_settings().sqlalchemy_url
    key = (os.getpid(), url)
    with _lock:
        if key not in _engines:
            engine = make_engine(url)
            _engines[key] = (engine, sessionmaker(engine, expire_on_commit=False))
        return _engines[key]


def dispose_all() -> None:
    """Drop every pooled connection (after fork, or between tests)."""
    with _lock:
        for engine, _ in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


def dialect_insert(session: Session, model):
    """``INSERT`` with ``ON CONFLICT`` support for this session's backend (PostgreSQL or SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str):
    from alembic.config import Config

    if not (MIGRATIONS / "env.py").is_file():
        raise CatalystError(f"no Alembic migrations at {MIGRATIONS} (set CATALYST_MIGRATIONS to the migrations folder)")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> str:
    """Apply every migration; returns the head revision."""
    from alembic import command

    config = alembic_config(url)
    command.upgrade(config, "head")
    return head_revision(url)


def head_revision(url: str) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    engine = get_engine(url)
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:
            return None


def ensure_migrated(url: str) -> None:
    """Refuse to run on a database that `catalyst db upgrade` has not brought to head."""
    head = head_revision(url)
    current = current_revision(url)
    if current != head:
        where = "not migrated" if current is None else f"at revision {current}, code expects {head}"
        safe = make_url(url).render_as_string(hide_password=True)
        raise NotMigrated(f"database {safe} is {where}: run `catalyst db upgrade` first")
