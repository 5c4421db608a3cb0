"""What one quiet monitor check costs PostgreSQL, counted by the server itself (issue 11).

A private cluster with ``pg_stat_statements`` preloaded counts every statement a check sends, BEGIN, COMMIT and
pre-ping ``SELECT 1`` included: the round trips an operator pays per position per interval. A hold with no signal
must stay within four of them and leave the ``decisions`` table alone; anything worth an audit row (a signal, a
change of action, an exit) still writes one.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import select

from catalyst.db.engine import dispose_all, upgrade
from catalyst.db.models import Decision, Position, PositionMonitorStatus
from catalyst.records import flush_counts
from tests.support import environment, query, rows, seed_position, write_replay_csv

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
QUIET = [100.0 + (0.05 if i % 2 else -0.05) for i in range(240)]  # a wiggle of 0.1 %: no exit signal fires


@pytest.fixture
def counted_pg():
    """A fresh migrated database on a private cluster that counts every statement."""
    from tests.private_servers import PrivatePostgres
    from tests.support import PG_ADMIN, unavailable

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:  # the same binaries: is the extension installed?
        if not admin.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'").fetchone():
            unavailable("PostgreSQL's pg_stat_statements extension (postgresql-contrib)")
    server = PrivatePostgres("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all",
                             "pg_stat_statements.track_utility=on")
    server.start()
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute("CREATE EXTENSION pg_stat_statements")
        url = server.create_database("checks")
        upgrade(url)
        yield server, url
    finally:
        dispose_all()
        server.close()


def statements_since_reset(server) -> list[tuple[str, int]]:
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        return admin.execute(
            "SELECT s.query, s.calls::int FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = 'checks' ORDER BY s.calls DESC").fetchall()


def reset_statements(server) -> None:
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_stat_statements_reset()")


def market_at(url: str, tmp_path, minute: int, prices=QUIET, **extra: str):
    csv = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, prices)
    at = SESSION_OPEN + timedelta(minutes=minute)
    return environment({"DATABASE_URL": url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                        "CATALYST_MARKET_DATA": f"replay:{csv}", "CATALYST_CLOCK": f"sim:{at.isoformat()}@1",
                        "MONITOR_CHECK_INTERVAL": "60", **extra})


def check(pid: int, minute: int) -> str:
    from tasks.monitoring import monitor_position

    slot = SESSION_OPEN + timedelta(minutes=minute)
    return monitor_position(pid, slot=slot.isoformat())


@contextlib.contextmanager
def round_trips_counted():
    """Every query string sent to the server by this process's pools (a string of two statements is one trip)."""
    from sqlalchemy import event

    from catalyst.db.engine import get_engine
    from catalyst.monitor_lock import lock_engine

    sent: list[str] = []

    def record(_conn, _cursor, statement, *_):
        sent.append(statement)

    engines = [get_engine(), lock_engine()]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def test_a_quiet_hold_costs_two_round_trips_three_statements_and_no_decision_row(counted_pg, tmp_path):
    server, url = counted_pg
    with market_at(url, tmp_path, 100):
        pid = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        other = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        assert check(pid, 100) == "hold"  # the first check: a decision row, the symbol's indicators computed
        assert check(other, 100) == "hold"  # warms this process's pools and its copy of the indicators
        decisions_before = len(rows(Decision))
        flush_counts(force=True)  # counts earlier tests of this process left are not this check's cost
        reset_statements(server)
        with round_trips_counted() as trips:
            assert check(pid, 100) == "hold"
        sent = statements_since_reset(server)
        decisions_after = len(rows(Decision))
        status = query(lambda s: s.get(PositionMonitorStatus, pid))
    statements = sum(calls for q, calls in sent if "pg_stat_statements" not in q)
    assert statements <= 3, sent  # lock, read, write-and-unlock
    assert len(trips) == 2, trips  # the lock and the read travel together
    assert decisions_after == decisions_before  # a plain hold again: no new audit row
    assert not [q for q, _ in sent if q.strip().upper() in ("BEGIN", "COMMIT", "SELECT $1", "SELECT 1")], sent
    assert status.checks == 2 and status.last_decision == "hold" and status.price is not None


def test_a_hold_writes_a_decision_row_when_the_action_changes_or_a_signal_fires(counted_pg, tmp_path):
    """The audit trail keeps what matters: the first check, a signal, and the change back to a plain hold."""
    _, url = counted_pg
    dip = QUIET[:100] + [97.6] * 20 + QUIET[120:]  # -2.4 % at minutes 100-119: a WEAK stop-loss signal only
    with market_at(url, tmp_path, 90, prices=dip):
        pid = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
    for minute in (90, 91, 92, 105, 106, 200, 201):
        with market_at(url, tmp_path, minute, prices=dip):
            check(pid, minute)
    with environment({"DATABASE_URL": url}):
        recorded = query(lambda s: s.execute(select(Decision.decided_at, Decision.action, Decision.signals).where(
            Decision.position_id == pid, Decision.kind == "monitor").order_by(Decision.id)).all())
        status = query(lambda s: s.get(PositionMonitorStatus, pid))
        held = query(lambda s: s.get(Position, pid))
    minutes = [int((at - SESSION_OPEN).total_seconds() // 60) for at, _, _ in recorded]
    assert minutes == [90, 105, 106, 200], recorded  # first check; both checks with a signal; back to quiet
    assert [bool(sig) for _, _, sig in recorded] == [False, True, True, False]
    assert status.checks == 7
    assert held.status == "open" and held.last_price == pytest.approx(dip[201], abs=0.2)


def test_the_embedded_database_records_a_quiet_hold_the_same_way(tmp_path):
    """SQLite (the no-server default) writes the same rows in two statements of one transaction."""
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    with market_at(url, tmp_path, 100):
        pid = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
    for minute in (100, 101, 102):
        with market_at(url, tmp_path, minute):
            assert check(pid, minute) == "hold"
    with environment({"DATABASE_URL": url}):
        recorded = rows(Decision, Decision.kind == "monitor")
        status = query(lambda s: s.get(PositionMonitorStatus, pid))
        held = query(lambda s: s.get(Position, pid))
    assert len(recorded) == 1 and status.checks == 3 and status.last_decision == "hold"
    assert status.last_check_at == held.updated_at and held.last_price == status.price in (99.95, 100.05)


def test_monitor_record_holds_keeps_a_decision_row_for_every_check(tmp_path):
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    with market_at(url, tmp_path, 100):
        pid = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
    for minute in (100, 101, 102):
        with market_at(url, tmp_path, minute, MONITOR_RECORD_HOLDS="true"):
            assert check(pid, minute) == "hold"
    with environment({"DATABASE_URL": url}):
        recorded = rows(Decision, Decision.kind == "monitor")
    assert [d.action for d in recorded] == ["hold"] * 3
    assert [d.details["slot"][11:16] for d in recorded] == ["11:10", "11:11", "11:12"]


def test_a_workers_check_counters_are_written_together_not_once_per_check(tmp_path):
    """``service_health.checks`` is the operator's gauge: gathered in memory, written in one UPDATE now and then."""
    from catalyst.db.engine import session_scope
    from catalyst.db.models import ServiceHealth
    from catalyst.monitor import check_position
    from catalyst.runtime import get_runtime

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    with market_at(url, tmp_path, 100):
        ids = [seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5)) for _ in range(5)]
        with session_scope() as s:
            s.add(ServiceHealth(service_name="w@test", kind="worker", status="online", started_at=SESSION_OPEN,
                                last_heartbeat=SESSION_OPEN, checks=0, positions_checked=0, exits_executed=0,
                                advisor_calls=0, errors=0))
        flush_counts(force=True)  # whatever earlier tests of this process left
        for pid in ids:
            check_position(get_runtime(), pid, worker="w@test", slot=SESSION_OPEN + timedelta(minutes=100))
        assert query(lambda s: s.get(ServiceHealth, "w@test").checks) == 0  # counted, not yet written
        assert flush_counts(force=True) is True
        assert flush_counts(force=True) is False  # nothing left to write
        health = query(lambda s: s.get(ServiceHealth, "w@test"))
    assert (health.checks, health.positions_checked) == (5, 5)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_late_quiet_hold_never_lowers_the_high_watermark_another_check_wrote(backend, pg_url, tmp_path):
    """The trailing stop measures from the high: a check that judged an older price must not pull it down."""
    from catalyst.monitor_store import CheckDB, record_quiet_hold

    url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'embedded.db'}"
    if backend == "sqlite":
        upgrade(url)
    at = SESSION_OPEN + timedelta(minutes=100)
    with environment({"DATABASE_URL": url}):
        pid = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        assert record_quiet_hold(CheckDB(), position_id=pid, now=at, price=104.0, pnl_pct=4.0, high_watermark=104.0)
        assert record_quiet_hold(CheckDB(), position_id=pid, now=at, price=101.0, pnl_pct=1.0, high_watermark=102.0)
        held = query(lambda s: s.get(Position, pid))
        status = query(lambda s: s.get(PositionMonitorStatus, pid))
    assert held.high_watermark == status.high_watermark == 104.0
    assert held.last_price == status.price == 101.0 and status.checks == 2


def test_a_symbols_indicators_cost_one_read_and_one_insert_per_slot_and_no_lease_rows(counted_pg, tmp_path):
    """The first check of a symbol in a slot computes and stores its indicators; the process keeps them, so its
    next check of that symbol in that slot sends no indicator statement at all."""
    import catalyst.monitor as monitor

    server, url = counted_pg
    with market_at(url, tmp_path, 100):
        first = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        second = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        flush_counts(force=True)
        reset_statements(server)
        assert check(first, 100) == "hold"
        computed = statements_since_reset(server)
        reset_statements(server)
        assert check(second, 100) == "hold"
        cached = statements_since_reset(server)
        monitor._recent.clear()  # another process: it has not read this slot's snapshot yet
        reset_statements(server)
        assert check(first, 100) == "hold"
        read = statements_since_reset(server)

    def touching(sent, table):
        return sum(calls for q, calls in sent if table in q and "pg_stat_statements" not in q)

    assert touching(computed, "leases") == touching(read, "leases") == 0, computed
    assert touching(computed, "indicator_snapshots") == 2, computed  # looked for, then stored
    assert touching(cached, "indicator_snapshots") == 0, cached
    assert touching(read, "indicator_snapshots") == 1, read
