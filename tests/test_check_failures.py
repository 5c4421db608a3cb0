"""A check that meets trouble after its decision: a failed counter write, a lock session killed mid-check."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from catalyst.db.engine import upgrade
from catalyst.db.models import Position, PositionMonitorStatus
from tests.support import query, seed_position
from tests.test_check_cost import QUIET, SESSION_OPEN, check, market_at


def advisory_locks_on(pg_url: str, position_id: int) -> int:
    """Granted monitor-check locks on ``position_id``, as PostgreSQL sees them from another session."""
    from catalyst.monitor_lock import LOCK_CLASS

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
        return admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                             "AND objid = %s AND granted", (LOCK_CLASS, position_id)).fetchone()[0]


def test_a_failed_counter_flush_does_not_drop_the_exit_the_check_requested(tmp_path, monkeypatch):
    import catalyst.records as records
    import tasks.monitoring as monitoring

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    crash = QUIET[:100] + [88.0] * 40 + QUIET[140:]  # -12 %: a STRONG stop-loss
    sent = []
    monkeypatch.setattr(monitoring.exit_position, "apply_async", lambda *a, **k: sent.append((a, k)))
    with market_at(url, tmp_path, 110, prices=crash):
        pid = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        records.count("other@host", checks=3)  # what earlier checks of this process counted
        monkeypatch.setattr(records, "_last_flush", 0.0)  # ten seconds have passed: this task flushes

        def database_blip(*_a, **_k):
            raise OperationalError("UPDATE service_health", {}, Exception("server closed the connection"))

        monkeypatch.setattr(records, "bump", database_blip)
        try:
            outcome = check(pid, 110)
        except OperationalError:
            outcome = "raised"
        finally:
            records._counts.clear()  # the blip kept them for a later flush: not the next test's to write
        status = query(lambda s: s.get(Position, pid).status)
    assert status == "closing"  # the check decided and requested the exit
    assert outcome == "exit" and len(sent) == 1, (outcome, sent)  # ... so its exit task must be sent


def test_a_lock_session_killed_mid_check_fails_the_check_frees_the_lock_and_the_next_check_writes(
        pg_url, tmp_path, monkeypatch):
    from catalyst import monitor_store

    real = monitor_store.record_quiet_hold
    killed = []

    def kill_then_write(db, **kw):
        if not killed:
            pid = db.connection.execute(text("SELECT pg_backend_pid()")).scalar()
            with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)
        return real(db, **kw)

    with market_at(pg_url, tmp_path, 100):
        pos = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        assert check(pos, 100) == "hold"  # first check: status row, last_decision hold
        monkeypatch.setattr(monitor_store, "record_quiet_hold", kill_then_write)
        with pytest.raises(DBAPIError):
            check(pos, 101)
        before = query(lambda s: s.get(PositionMonitorStatus, pos).checks)
        assert check(pos, 102) == "hold"  # the lock was freed with the dead session; a fresh connection is taken
        after = query(lambda s: s.get(PositionMonitorStatus, pos).checks)
        held = query(lambda s: s.get(Position, pos))
    assert killed and before == 1 and after == 2 and held.status == "open"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_check_with_a_signal_never_lowers_a_high_watermark_another_check_raised_meanwhile(
        backend, request, tmp_path, monkeypatch):
    """The trailing stop measures from the high: a check that read the position before another raised the high
    (a redelivered check, a lock lost with its session) must not write its older, lower high back."""
    import catalyst.monitor as monitor

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'e.db'}"
    if backend == "sqlite":
        upgrade(url)
    dip = QUIET[:100] + [97.6] * 20 + QUIET[120:]  # a WEAK stop-loss signal at minutes 100-119: an audited check
    real = monitor.shared_indicators

    def another_check_raises_the_high(rt, symbol, slot, now, worker, db=None):
        from catalyst.db.engine import session_scope

        with session_scope() as s:  # lands after this check read the position, before it writes
            s.get(Position, pos).high_watermark = 130.0
        return real(rt, symbol, slot, now, worker, db)

    with market_at(url, tmp_path, 105, prices=dip):
        pos = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        monkeypatch.setattr(monitor, "shared_indicators", another_check_raises_the_high)
        assert check(pos, 105) == "hold"
        held = query(lambda s: s.get(Position, pos))
        status = query(lambda s: s.get(PositionMonitorStatus, pos))
    assert held.status == "open" and held.last_price == pytest.approx(97.6, abs=0.2)
    assert held.high_watermark == 130.0 and status.high_watermark == 130.0


def test_a_quiet_hold_gives_its_lock_back_with_its_write_and_leaves_no_lock_behind(pg_url, tmp_path, capsys):
    """The write that records a quiet hold also ends the check's advisory lock: after each check no session holds
    it, nothing tried to release it twice, and the next check of the position runs."""
    with market_at(pg_url, tmp_path, 100):
        pos = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        held_after = []
        for minute in (100, 101, 102, 103):
            assert check(pos, minute) == "hold"
            held_after.append(advisory_locks_on(pg_url, pos))
        status = query(lambda s: s.get(PositionMonitorStatus, pos))
    assert held_after == [0, 0, 0, 0]
    assert status.checks == 4 and status.last_decision == "hold"
    assert "monitor_lock_release_failed" not in capsys.readouterr().out


def test_the_position_read_with_the_lock_is_the_same_as_a_plain_read(pg_url, tmp_path):
    """The read that travels with the lock bypasses SQLAlchemy's result rows: every field, and its type (aware UTC
    times, floats, text), must be what the ORM's read gives."""
    from catalyst.monitor_lock import check_lock
    from catalyst.monitor_store import CheckDB, load

    with market_at(pg_url, tmp_path, 100):
        pos = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        assert check(pos, 100) == "hold"  # a status row, so last_decision is set
        plain = load(CheckDB(), pos)
        with check_lock(pos) as held:
            assert held.loaded is not None
            locked = load(held, pos)
            assert held.loaded is None  # used once; a second load reads again
    assert dict(plain._mapping) == locked._asdict()
    assert [type(v) for v in plain] == [type(v) for v in locked]
    assert locked.opened_at.utcoffset() == timedelta(0) and locked.last_decision == "hold"


def test_with_broker_legs_the_lock_still_covers_the_stop_trail_after_a_quiet_hold(pg_url, tmp_path, monkeypatch):
    """On a broker with bracket legs a quiet check goes on to trail the broker's stop: the position stays locked
    until that is done (two checks must never replace one stop at once), and is free afterwards."""
    import catalyst.monitor as monitor
    from catalyst.runtime import get_runtime

    locked_while_trailing = []
    with market_at(pg_url, tmp_path, 100):
        pos = seed_position("TEST", 100.0, SESSION_OPEN + timedelta(minutes=5))
        assert check(pos, 100) == "hold"  # the first check: an audit row; the next one is a quiet hold
        monkeypatch.setattr(type(get_runtime().broker), "supports_legs", True)
        monkeypatch.setattr(monitor, "_closed_by_leg", lambda *a, **k: None)
        monkeypatch.setattr(monitor, "_trail_broker_stop",
                            lambda rt, pid, a: locked_while_trailing.append(advisory_locks_on(pg_url, pid)))
        assert check(pos, 101) == "hold"
        after = advisory_locks_on(pg_url, pos)
        status = query(lambda s: s.get(PositionMonitorStatus, pos))
    assert locked_while_trailing == [1] and after == 0
    assert status.checks == 2 and status.last_decision == "hold"
