"""A monitor check's own reads and writes, one statement each (issue 11: a check that costs what a task costs).

A quiet hold — a price, no signal, the same plain hold as last time — costs two round trips with its lock: the lock
and one read of the position with its status row (two statements sent together), then one write of its price and
status counters that also gives the lock back (unless a broker call follows that the lock must cover).
On PostgreSQL both travel on the connection that holds the check's advisory lock (autocommit, no pre-ping, no
BEGIN/COMMIT), so a check whose lock died with its session cannot write either; elsewhere (the embedded SQLite
default) each is a short transaction of its own. Everything else a check may write (decisions, advice, exits)
stays with the ORM in :mod:`catalyst.monitor`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Float, bindparam, func, literal, select, update
from sqlalchemy.engine import Connection, Row

from catalyst.db.engine import get_engine
from catalyst.db.models import IndicatorSnapshot, Position, PositionMonitorStatus
from catalyst.records import wall_now

POSITION = Position.__table__
STATUS = PositionMonitorStatus.__table__
SNAPSHOT = IndicatorSnapshot.__table__


class CheckDB:
    """Where one check reads and writes: the lock's own connection when it has one, else the main engine.

    ``lock_key``: the advisory lock that connection holds for the check; a quiet hold's write gives it back in the
    same statement and sets ``released``, so the lock's owner does not send an unlock of its own.
    """

    def __init__(self, connection: Connection | None = None, lock_key: tuple[int, int] | None = None,
                 loaded: Row | None = None) -> None:
        self.connection = connection
        self.lock_key = lock_key
        self.released = False
        self.loaded = loaded  # the position as read right after the lock was taken, in the same round trip

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection for one statement: the lock's (autocommit), or a short transaction of the main engine."""
        if self.connection is not None:
            yield self.connection
            return
        with get_engine().begin() as conn:
            yield conn


_LOAD = (select(POSITION, STATUS.c.last_decision)
         .select_from(POSITION.outerjoin(STATUS, STATUS.c.position_id == POSITION.c.id))
         .where(POSITION.c.id == bindparam("pid")))
# A plain hold's fields of the status row, besides position_id, symbol and the counter.
_HOLD_FIELDS = ("last_check_at", "updated_at", "price", "pnl_pct", "high_watermark", "active_signals",
                "last_decision")


def load(db: CheckDB, position_id: int) -> Row | None:
    """The position's columns plus its status row's ``last_decision`` (None before the first check)."""
    if db.loaded is not None and db.loaded.id == position_id:
        loaded, db.loaded = db.loaded, None
        return loaded
    with db.statement() as conn:
        return conn.execute(_LOAD, {"pid": position_id}).first()


def try_lock_and_load(conn: Connection, lock_class: int, position_id: int) -> tuple[bool, Row | None]:
    """``pg_try_advisory_lock`` and the position's read in one round trip: two statements in one query string.

    Two statements, not one, so that the read's snapshot is taken after the lock is granted and sees every write
    the previous holder committed before giving it back. A query string of several statements goes by the simple
    protocol, which takes no parameters: the two integers are rendered into it (both are ints, checked here).
    Whoever calls must end the session on any error (the lock may have been granted).
    """
    sql = _lock_and_load_sql() % {"cls": int(lock_class), "pid": int(position_id)}
    result = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
    try:
        cursor = result.cursor  # the driver's: SQLAlchemy's result sees the first statement's rows only
        held = bool(cursor.fetchone()[0])
        cursor.nextset()
        columns = tuple((d.name, d.type_code) for d in cursor.description)
        row = cursor.fetchone()
    finally:
        result.close()
    if row is None:
        return held, None
    processors = _load_processors(conn.dialect, tuple(code for _, code in columns))
    return held, _load_row(tuple(name for name, _ in columns))(*(p(v) if p else v for p, v in zip(processors, row)))


@functools.cache
def _lock_and_load_sql() -> str:
    from sqlalchemy.dialects import postgresql

    load = str(_LOAD.compile(dialect=postgresql.dialect(paramstyle="pyformat")))
    assert load.count("%") == 1 and "%(pid)s" in load, load  # the only placeholder; nothing else to escape
    return "SELECT pg_try_advisory_lock(%(cls)d, %(pid)d); " + load.replace("%(pid)s", "%(pid)d")


@functools.cache
def _load_processors(dialect, type_codes: tuple[int, ...]) -> tuple:
    """What SQLAlchemy does to each column of ``_LOAD`` on the way out (aware UTC datetimes...), given the
    server's type of each column as the driver reported it."""
    return tuple(c.type._cached_result_processor(dialect, code) for c, code in zip(_LOAD.selected_columns, type_codes))


@functools.cache
def _load_row(names: tuple[str, ...]):
    from collections import namedtuple

    return namedtuple("LoadedPosition", names)


def record_quiet_hold(db: CheckDB, *, position_id: int, now: datetime, price: float, pnl_pct: float,
                      high_watermark: float, last: bool = False) -> bool:
    """Write a plain hold: the position's price and high-watermark, the status row's time, price and counter.

    Only while the position is still open (a close that landed meanwhile wins). True if written. One statement on
    PostgreSQL (an ``UPDATE ... RETURNING`` feeding the status upsert); two in one transaction on SQLite.
    ``last``: nothing the lock must cover follows (no broker call): the same statement gives the lock back.
    """
    params = {"pid": position_id, "now": now, "wall": wall_now(), "price": price, "pnl_pct": pnl_pct,
              "hwm": high_watermark, "signals": [], "decision": "hold"}
    with db.statement() as conn:
        if conn.dialect.name == "postgresql" and last and db.lock_key is not None and not db.released:
            params["cls"], params["key"] = db.lock_key
            written, released = conn.execute(_pg_quiet_hold_and_unlock(), params).one()
            db.released = bool(released)
            return written is not None
        if conn.dialect.name == "postgresql":
            return conn.execute(_pg_quiet_hold(), params).first() is not None
        if conn.execute(_sqlite_move(), params).rowcount != 1:
            return False
        conn.execute(_sqlite_status_upsert(), params)
        return True


def _move(higher):
    """The position's price and time, and its high-watermark only ever raised (a check that ran late, or on
    SQLite past its lease, never lowers a high another check wrote)."""
    return (update(POSITION).where(POSITION.c.id == bindparam("pid"), POSITION.c.status == "open")
            .values(high_watermark=higher(POSITION.c.high_watermark, bindparam("hwm", type_=Float())),
                    last_price=bindparam("price"), updated_at=bindparam("now")))


def _hold_values() -> list:
    """The status row's hold fields as bound parameters, in ``_HOLD_FIELDS`` order."""
    names = {"last_check_at": "now", "updated_at": "wall", "price": "price", "pnl_pct": "pnl_pct",
             "high_watermark": "hwm", "active_signals": "signals", "last_decision": "decision"}
    return [bindparam(names[f], type_=STATUS.c[f].type) for f in _HOLD_FIELDS]


@functools.cache
def _pg_quiet_hold():
    """``WITH held AS (UPDATE positions ... RETURNING id, symbol) INSERT INTO position_monitor_status SELECT ...
    ON CONFLICT DO UPDATE``: built once, since building the statement costs more than compiling it."""
    from sqlalchemy.dialects.postgresql import insert

    held = _move(func.greatest).returning(POSITION.c.id, POSITION.c.symbol, POSITION.c.high_watermark).cte("held")
    values = _hold_values()
    values[_HOLD_FIELDS.index("high_watermark")] = held.c.high_watermark  # the high as written, raised or kept
    source = select(held.c.id, held.c.symbol, *values, literal(1))
    upsert = insert(STATUS).from_select(["position_id", "symbol", *_HOLD_FIELDS, "checks"], source)
    return _on_conflict(upsert).returning(STATUS.c.position_id)


@functools.cache
def _pg_quiet_hold_and_unlock():
    """The quiet hold and the check's advisory unlock in one statement (one round trip instead of two).

    The unlock takes effect as the statement runs, a moment before its write commits: a check of the same position
    that takes the lock in that moment reads the price and counter of the check before. A quiet hold changes
    nothing else (a new high goes through the main pool, before this), so nothing that check judges by is missed.
    """
    written = _pg_quiet_hold().cte("written")
    # The write first: its row locks are taken before the unlock is evaluated.
    return select(select(written.c.position_id).scalar_subquery().label("written"),
                  func.pg_advisory_unlock(bindparam("cls"), bindparam("key")).label("released"))


@functools.cache
def _sqlite_move():
    return _move(func.max)  # SQLite's two-argument max() is the scalar greatest


@functools.cache
def _sqlite_status_upsert():
    from sqlalchemy.dialects.sqlite import insert

    symbol = select(POSITION.c.symbol).where(POSITION.c.id == bindparam("pid")).scalar_subquery()
    high = select(POSITION.c.high_watermark).where(POSITION.c.id == bindparam("pid")).scalar_subquery()
    values = dict(zip(_HOLD_FIELDS, _hold_values()))
    values["high_watermark"] = high
    return _on_conflict(insert(STATUS).values(position_id=bindparam("pid"), symbol=symbol, checks=1, **values))


def _on_conflict(upsert):
    """A second and later check updates the row: the latest facts, one more check counted."""
    excluded = upsert.excluded
    return upsert.on_conflict_do_update(
        index_elements=[STATUS.c.position_id],
        set_={**{f: excluded[f] for f in _HOLD_FIELDS}, "checks": STATUS.c.checks + 1})


# -- a symbol's indicators for a slot: one row, whoever computes it first ----------------------------------------
_FIND_SNAPSHOT = select(SNAPSHOT).where(SNAPSHOT.c.symbol == bindparam("symbol"), SNAPSHOT.c.slot_at == bindparam("slot"))


def find_snapshot(db: CheckDB, symbol: str, slot: datetime) -> IndicatorSnapshot | None:
    """The stored snapshot of ``symbol`` for ``slot`` (a detached copy), or None."""
    with db.statement() as conn:
        row = conn.execute(_FIND_SNAPSHOT, {"symbol": symbol, "slot": slot}).first()
    return None if row is None else IndicatorSnapshot(**row._mapping)


def store_snapshot(db: CheckDB, snapshot: IndicatorSnapshot) -> bool:
    """Store a computed snapshot unless one for its symbol and slot is already there; True (and its ``id`` set) if
    this one was stored. Racing computers are not locked out: the first row wins and everyone uses it."""
    values = {c.key: getattr(snapshot, c.key) for c in SNAPSHOT.columns if c.key != "id"}
    with db.statement() as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(SNAPSHOT).values(**values).on_conflict_do_nothing(
            index_elements=[SNAPSHOT.c.symbol, SNAPSHOT.c.slot_at]).returning(SNAPSHOT.c.id)
        stored = conn.execute(stmt).scalar()
    if stored is None:
        return False
    snapshot.id = stored
    return True
