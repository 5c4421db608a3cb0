"""Retention (``catalyst.prune``): only what is older than the window goes, in batches, and never an open or
closing position's trail nor an undelivered notification — on PostgreSQL and on the embedded SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import structlog
from sqlalchemy import event, func, select, update

from catalyst.core.domain import BadInput
from catalyst.db.engine import get_engine, session_scope
from catalyst.db.models import (ActivityLog, AdvisorCycle, AgentLog, Decision, IndicatorSnapshot, Notification,
                                Position, PositionMonitorStatus)
from catalyst.retention import RULES, prune
from catalyst.settings import get_settings
from tests.support import environment, query, seed_position

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=40)  # outside the default 30-day window
RECENT = NOW - timedelta(days=10)  # inside it
ANCIENT = NOW - timedelta(days=400)
TABLES = [rule.table for rule in RULES]
MODELS = {rule.table: rule.model for rule in RULES}


@pytest.fixture(params=["postgres", "sqlite"])
def db(request, tmp_path):
    """This process on a fresh migrated database (the shared PostgreSQL server, or the embedded SQLite)."""
    env = {"CATALYST_VAR_DIR": str(tmp_path / "var")}
    if request.param == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("pg_url")
    with environment(env):
        if request.param == "sqlite":
            from catalyst.db.engine import upgrade

            upgrade(get_settings().sqlalchemy_url)
        yield request.param


# -- rows as the workers write them ----------------------------------------------------------------
def add_agent_log(at: datetime, n: int = 1) -> None:
    with session_scope() as s:
        s.add_all(AgentLog(timestamp=at, level="INFO", event="test_event", service="w1", context={"i": i})
                  for i in range(n))


def add_decision(at: datetime, position_id: int | None = None) -> None:
    with session_scope() as s:
        s.add(Decision(kind="monitor", action="hold", symbol="TEST", position_id=position_id, signals=[],
                       details={}, decided_at=at, recorded_at=at))


def add_activity(at: datetime, position_id: int | None = None) -> None:
    with session_scope() as s:
        s.add(ActivityLog(event="position_checked", occurred_at=at, recorded_at=at, position_id=position_id,
                          symbol="TEST", details={}))


def add_snapshot(at: datetime, symbol: str = "TEST") -> None:
    with session_scope() as s:
        s.add(IndicatorSnapshot(symbol=symbol, slot_at=at, bars=30, rsi=50.0, computed_at=at, worker="w1"))


def add_advisor_cycle(slot: datetime) -> None:
    with session_scope() as s:
        s.add(AdvisorCycle(slot_at=slot, consults=1))


def add_monitor_status(position_id: int, at: datetime) -> None:
    with session_scope() as s:
        s.add(PositionMonitorStatus(position_id=position_id, symbol="TEST", last_check_at=at, checks=3,
                                    active_signals=[], updated_at=at))


def add_notification(at: datetime, status: str = "sent") -> None:
    with session_scope() as s:
        s.add(Notification(event="position_closed", severity="info", title="Closed TEST", text="closed",
                           context={}, status=status, deliveries={}, attempts=1, occurred_at=at, created_at=at,
                           sent_at=at if status == "sent" else None))


def position(status: str, symbol: str = "TEST") -> int:
    pid = seed_position(symbol, 100.0, ANCIENT)
    if status != "open":
        with session_scope() as s:
            s.execute(update(Position).where(Position.id == pid).values(
                status=status, closing_at=ANCIENT, closed_at=ANCIENT if status == "closed" else None))
    return pid


def one_of_each(at: datetime, closed_position: int) -> None:
    """One row in every pruned table, all written at ``at`` (wall and market time alike)."""
    add_agent_log(at)
    add_decision(at)
    add_snapshot(at)
    add_advisor_cycle(at)
    add_monitor_status(closed_position, at)
    add_activity(at)
    add_notification(at)


def counts() -> dict[str, int]:
    return query(lambda s: {t: s.scalar(select(func.count()).select_from(m)) for t, m in MODELS.items()})


@pytest.fixture
def deletes():
    """The DELETE statements sent to the database and the commits, in order."""
    seen: list[str] = []
    engine = get_engine()

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append(statement.split()[2])  # DELETE FROM <table> ...

    def on_commit(conn):
        seen.append("COMMIT")

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    yield seen
    event.remove(engine, "before_cursor_execute", on_execute)
    event.remove(engine, "commit", on_commit)


# -- the tests ---------------------------------------------------------------------------------------
def test_deletes_only_what_is_older_than_the_window(db):
    old_closed, recent_closed = position("closed", "OLD"), position("closed", "NEW")
    one_of_each(OLD, old_closed)
    one_of_each(RECENT, recent_closed)
    one_of_each(NOW - timedelta(days=29, hours=23), position("closed", "EDGE"))  # just inside the window: kept
    before = counts()
    assert set(before.values()) == {3}

    with structlog.testing.capture_logs() as logs:
        result = prune(30, wall_now=NOW)

    assert result == {t: 1 for t in TABLES}  # counts per table, every pruned table named
    assert counts() == {t: 2 for t in TABLES}
    assert query(lambda s: s.scalar(select(func.min(AgentLog.timestamp)))) > NOW - timedelta(days=30)
    assert query(lambda s: s.scalars(select(PositionMonitorStatus.position_id)).all()) != [old_closed]
    assert query(lambda s: s.scalar(select(func.count()).select_from(Position))) == 3  # positions are never pruned
    [line] = [e for e in logs if e["event"] == "retention_pruned"]
    assert line["total"] == len(TABLES) and line["days"] == 30 and line["decisions"] == 1


def test_a_shorter_window_takes_more(db):
    pid = position("closed")
    one_of_each(RECENT, pid)  # 10 days old

    assert prune(30, wall_now=NOW) == {t: 0 for t in TABLES}
    assert prune(7, wall_now=NOW) == {t: 1 for t in TABLES}
    assert counts() == {t: 0 for t in TABLES}


def test_never_an_open_or_closing_positions_rows(db):
    live = {status: position(status, f"P{status[:3].upper()}") for status in ("open", "closing")}
    closed = position("closed", "PCLO")
    for pid in (*live.values(), closed):
        add_decision(ANCIENT, pid)
        add_decision(OLD, pid)
        add_activity(ANCIENT, pid)
        add_monitor_status(pid, ANCIENT)

    result = prune(30, wall_now=NOW)

    assert (result["decisions"], result["activity_log"], result["position_monitor_status"]) == (2, 1, 1)
    for model in (Decision, ActivityLog, PositionMonitorStatus):
        kept = query(lambda s, m=model: sorted(set(s.scalars(select(m.position_id)).all())))
        assert kept == sorted(live.values()), model.__tablename__
    assert query(lambda s: s.scalar(select(func.count()).select_from(Decision))) == 4
    statuses = query(lambda s: dict(s.execute(select(Position.id, Position.status)).all()))
    assert statuses == {live["open"]: "open", live["closing"]: "closing", closed: "closed"}  # untouched


def test_rows_of_a_position_closed_later_go_once_it_is_closed(db):
    pid = position("open")
    add_decision(OLD, pid)
    add_activity(OLD, pid)
    add_monitor_status(pid, OLD)

    assert prune(30, wall_now=NOW)["decisions"] == 0
    with session_scope() as s:
        s.execute(update(Position).where(Position.id == pid).values(status="closed", closed_at=NOW))
    result = prune(30, wall_now=NOW)

    assert (result["decisions"], result["activity_log"], result["position_monitor_status"]) == (1, 1, 1)


def test_pending_notifications_are_kept(db):
    for status in ("pending", "sent", "failed", "logged", "pending"):
        add_notification(ANCIENT, status)
    add_notification(RECENT, "sent")

    assert prune(30, wall_now=NOW)["notifications"] == 3

    left = query(lambda s: sorted((n.status, n.created_at == RECENT) for n in s.scalars(select(Notification))))
    assert left == [("pending", False), ("pending", False), ("sent", True)]


def test_deletes_in_batches_committing_between_them(db, deletes):
    add_agent_log(OLD, 50)
    add_agent_log(RECENT, 3)
    for i in range(12):
        add_snapshot(OLD + timedelta(minutes=i))

    result = prune(30, wall_now=NOW, batch_size=7)

    assert result["agent_logs"] == 50 and result["indicator_snapshots"] == 12
    assert counts()["agent_logs"] == 3 and counts()["indicator_snapshots"] == 0
    log_deletes = [i for i, what in enumerate(deletes) if what == "agent_logs"]
    assert len(log_deletes) == 8  # 7 full batches of 7, then the 1 left: a short batch ends the table
    assert deletes.count("indicator_snapshots") == 2  # 7, then 5
    # each batch is its own transaction: a commit follows every DELETE before the next one starts
    for i in log_deletes:
        assert deletes[i + 1] == "COMMIT"


def test_a_second_run_deletes_nothing(db):
    one_of_each(OLD, position("closed"))
    add_agent_log(OLD, 20)

    first = prune(30, wall_now=NOW, batch_size=5)
    second = prune(30, wall_now=NOW, batch_size=5)

    assert first["agent_logs"] == 21 and sum(first.values()) == 27
    assert second == {t: 0 for t in TABLES}


def test_advisor_cycles_age_by_the_market_clock(db):
    """A simulated session in the past keeps its current consult counters; its own old ones go."""
    market_now = NOW - timedelta(days=400)
    add_advisor_cycle(market_now - timedelta(minutes=5))
    add_advisor_cycle(market_now - timedelta(days=40))
    add_agent_log(NOW - timedelta(days=1))  # wall-clock tables still age by the wall clock

    result = prune(30, wall_now=NOW, market_now=market_now)

    assert result["advisor_cycles"] == 1 and result["agent_logs"] == 0
    assert query(lambda s: s.scalars(select(AdvisorCycle.slot_at)).all()) == [market_now - timedelta(minutes=5)]


@pytest.mark.parametrize("days", [0, -5, 0.5, float("nan"), float("inf"), "30", None, True])
def test_a_bad_window_is_refused_and_deletes_nothing(db, days):
    one_of_each(ANCIENT, position("closed"))

    with pytest.raises(BadInput, match="retention_days"):
        prune(days, wall_now=NOW)
    assert set(counts().values()) == {1}


def test_the_task_on_the_maintenance_queue(db):
    from catalyst.celery import app
    from tasks.maintenance import prune as prune_task

    one_of_each(ANCIENT, position("closed"))
    one_of_each(RECENT, position("closed", "NEW"))

    assert app.amqp.router.route({}, "catalyst.prune")["queue"].name == "maintenance"
    result = prune_task.apply(kwargs={"slot": NOW.isoformat()}).get()  # as beat sends it; the default 30 days
    assert result == {t: 1 for t in TABLES}
    assert prune_task.apply().get() == {t: 0 for t in TABLES}  # a manual dispatch without a slot
    assert prune_task.apply(args=["not a slot"]).failed()  # malformed beat args: refused, nothing deleted
    assert counts() == {t: 1 for t in TABLES}
