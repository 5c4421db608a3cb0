"""One check of a position at a time, for the price of two statements and no transaction.

On PostgreSQL a check holds a session-level advisory lock, ``pg_try_advisory_lock(LOCK_CLASS, position_id)``, on
a pooled connection of its own in autocommit mode: one round trip to take it (which also brings the position's
row back), one to give it back (or none: a quiet hold's write gives it back in the same statement, see
:mod:`catalyst.monitor_store`), no row written and no BEGIN/COMMIT. A worker that dies mid-check loses its
connection and PostgreSQL ends the lock with the session, so the next check runs at once instead of after a
lease's TTL. A connection dropped unclosed while it may hold a lock (a time limit landing between two steps)
gives back its session's locks as the pool takes it in.

On SQLite (the embedded default, one machine) there are no advisory locks: the check keeps the expiring lease in
the ``leases`` table (:mod:`catalyst.leases`), which is atomic there too.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from catalyst import leases
from catalyst.db.engine import CONNECT_TIMEOUT, get_engine
from catalyst.monitor_store import CheckDB, try_lock_and_load

log = structlog.get_logger("catalyst.monitor_lock")

# The advisory-lock namespace of monitor checks: the first key of PostgreSQL's two-int4 lock form, so a position id
# (the second key) can never collide with another feature's advisory lock. b"MONL" read as a big-endian int32.
LOCK_CLASS = 1297043020
INT4_MAX = 2**31 - 1
# Server-side TCP keepalive of a lock session: idle s, interval s, count, user timeout ms (about 25-30 s to notice).
SERVER_KEEPALIVE = (10, 5, 3, 30_000)

_UNLOCK = text("SELECT pg_advisory_unlock(:cls, :key)")
# Set on a lock connection's pool record from before the lock is asked for until it is known to be given back:
# a connection the pool takes back still marked (dropped unclosed by a time limit landing between two steps)
# ends every lock of its session on the way in (see _end_stray_locks).
MAY_HOLD = "catalyst_monitor_lock_may_be_held"

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}


def lock_engine(url: str | None = None) -> Engine:
    """This process's pool of lock connections to the database of ``get_engine(url)``.

    Separate from the main pool because it is set up differently: autocommit (a session lock needs no
    transaction), and no pre-ping (a ``SELECT 1`` per checkout would add a third round trip; a dead connection is
    instead retried once on a fresh one, see :func:`_take`). Keyed by pid so a forked child never shares a socket.
    """
    base = get_engine(url)
    key = (os.getpid(), base.url.render_as_string(hide_password=False))
    with _lock:
        if key not in _engines:
            engine = create_engine(
                base.url, isolation_level="AUTOCOMMIT", pool_pre_ping=False, pool_recycle=1800, pool_size=2,
                max_overflow=10,
                connect_args={"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 10,
                              "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000})
            event.listen(engine, "connect", _session_settings)
            event.listen(engine, "reset", _end_stray_locks)
            _engines[key] = engine
        return _engines[key]


def _session_settings(dbapi_conn, _record) -> None:
    """Set once per new lock connection, as session settings (not a startup ``options`` parameter, which poolers
    refuse):

    - TCP keepalives on the server's side too: it notices a worker host that died or was cut off, instead of
      keeping the dead session, and the position's lock, for its own default (about two hours) while every check
      of that position is skipped.
    - ``synchronous_commit = off``: a quiet hold's write (the position's price and status row, on this
      connection) returns without waiting for its WAL flush. A server crash can lose the last fraction of a
      second of such writes, never corrupt anything, and the next check writes the price again. A new
      high-watermark is protective state and is written through the main pool instead (see
      ``catalyst.monitor.check_position``), as are the books (orders, fills, closes, decisions).
    - ``read committed`` whatever the database's default: the position's read, sent with the lock in one query
      string, must take its snapshot after the lock is granted (a per-statement snapshot).
    """
    with dbapi_conn.cursor() as cur:
        cur.execute(f"SET tcp_keepalives_idle = {SERVER_KEEPALIVE[0]}; SET tcp_keepalives_interval = "
                    f"{SERVER_KEEPALIVE[1]}; SET tcp_keepalives_count = {SERVER_KEEPALIVE[2]}; "
                    f"SET tcp_user_timeout = {SERVER_KEEPALIVE[3]}; SET synchronous_commit = off; "
                    "SET default_transaction_isolation = 'read committed'")


def _end_stray_locks(dbapi_conn, record, reset_state) -> None:
    """A connection coming back to the pool that may still hold a check's lock gives back every lock of its
    session. Normally it holds none: the check unlocked and cleared the mark. If this fails, SQLAlchemy
    invalidates the connection, which ends the session and its locks."""
    mark = record.info.pop(MAY_HOLD, None) if record is not None else None
    if mark is None or reset_state.terminate_only or mark[0] != os.getpid():  # never on another process's session
        return
    log.info("monitor_lock_stray_released", position_id=mark[1])  # info: not queued for agent_logs from a finalizer
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock_all()")


def _forget_inherited_pools() -> None:
    """In a forked child, drop the parent's lock connections without closing them: they are the parent's
    sessions (and its locks), and a child closing them would end the parent's locks. The module lock is
    replaced, not taken: another thread of the parent may have held it at the fork."""
    global _lock
    _lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_pools)


@contextmanager
def check_lock(position_id: int, holder: str | None = None, ttl: float = 60.0) -> Iterator[CheckDB | None]:
    """Yields a :class:`CheckDB` while this caller alone checks ``position_id``, None if another check holds it.

    On PostgreSQL the ``CheckDB`` carries the lock's own connection: the check's statements sent on it run in the
    session that holds the lock, so they fail rather than write if the lock was lost with its session.
    ``holder`` and ``ttl`` only matter on SQLite, where the lease they name stands in for the advisory lock.
    """
    if get_engine().dialect.name != "postgresql":
        with _lease(position_id, holder or f"local-{uuid.uuid4().hex}", ttl) as held:
            yield CheckDB() if held else None
        return
    if not 0 < position_id <= INT4_MAX:
        raise ValueError(f"position id {position_id} does not fit an advisory lock key")
    taken = _take(position_id)
    if taken is None:
        yield None
        return
    conn, loaded = taken
    db = CheckDB(conn, lock_key=(LOCK_CLASS, position_id), loaded=loaded)
    try:
        yield db
    finally:
        if db.released:  # the check's last write gave the lock back with it
            conn.info.pop(MAY_HOLD, None)
            conn.close()
        else:
            _give_back(conn, position_id)


def _take(position_id: int):
    """(the connection now holding the lock, the position as read just after), or None if another session holds
    it (the connection is returned). The lock and the read go in one round trip (:func:`try_lock_and_load`)."""
    engine = lock_engine()
    for attempt in (1, 2):
        conn = engine.connect()
        conn.info[MAY_HOLD] = (os.getpid(), position_id)
        try:
            held, loaded = try_lock_and_load(conn, LOCK_CLASS, position_id)
        except BaseException as exc:  # the lock may have been granted: end the session, which ends the lock
            conn.invalidate()
            conn.close()
            # A pooled connection the server dropped (restart, failover): once more on a new one.
            if attempt == 1 and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                log.info("monitor_lock_reconnect", position_id=position_id)
                continue
            raise
        if held:
            return conn, loaded
        conn.info.pop(MAY_HOLD, None)
        conn.close()
        return None
    raise AssertionError("unreachable")


def _give_back(conn, position_id: int) -> None:
    """Unlock and return the connection; if that fails, end the session, which ends its lock."""
    try:
        released = conn.execute(_UNLOCK, {"cls": LOCK_CLASS, "key": position_id}).scalar()
        if not released:
            raise RuntimeError("advisory lock was not held at release")
        conn.info.pop(MAY_HOLD, None)
    except BaseException as exc:  # noqa: BLE001 - whatever went wrong, the lock must not outlive the check
        log.warning("monitor_lock_release_failed", position_id=position_id, error_type=type(exc).__name__)
        conn.invalidate()
        if not isinstance(exc, Exception):
            raise
    finally:
        conn.close()


@contextmanager
def _lease(position_id: int, holder: str, ttl: float) -> Iterator[bool]:
    name = f"monitor:{position_id}"
    if leases.acquire(name, holder, ttl) is None:
        yield False
        return
    try:
        yield True
    finally:
        leases.release(name, holder)
