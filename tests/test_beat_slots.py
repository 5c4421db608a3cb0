"""A claimed beat slot is sent or released, never lost.

A real ``CatalystScheduler`` is ticked in-process on a manual clock against real PostgreSQL (its
lease and ``schedule_entries``) and a real Redis broker. Broker failures are injected at the send
boundary (the scheduler's ``publish_slot`` raises the way kombu does when Redis blips); a PostgreSQL
outage is real (the test database stops accepting connections).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from structlog.testing import capture_logs

from catalyst.clock import ManualClock
from catalyst.db.models import Lease, ScheduleEntry, ServiceHealth
from catalyst.runtime import build_runtime, use_runtime
from catalyst.settings import get_settings
from tests.support import PG_ADMIN, environment, query, queued_messages, seed_position
import workers.scheduler as scheduler
from workers import slot_message
from workers.scheduler import LEASE, CatalystScheduler

EST = timezone(timedelta(hours=-5))
DAY = datetime(2025, 3, 4, tzinfo=EST)  # a Tuesday: 15-minute slots from the 09:30 open


def at(hour: int, minute: int) -> datetime:
    return DAY.replace(hour=hour, minute=minute).astimezone(UTC)


@pytest.fixture
def clock(tmp_path, pg_url, redis_url):
    """Real PostgreSQL + Redis settings and a runtime whose market time moves only when the test says."""
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_SCAN_INTERVAL": "900", "MONITOR_CHECK_INTERVAL": "900", "CATALYST_BEAT_LEASE_SECONDS": "20",
           "CATALYST_RECONCILE_INTERVAL": "23400",  # the watchdog once a session, at the open
           "CATALYST_RISK_CHECK_INTERVAL": "23400"}  # and the guard
    with environment(env):
        manual = ManualClock(at(10, 15))
        use_runtime(build_runtime(get_settings(), manual))
        yield manual


def production_like_app(redis_url: str) -> Celery:
    """A Celery app configured like production (celeryconfig's queues and routes), on the test Redis."""
    import celeryconfig

    celery_app = Celery("catalyst-beat-test", set_as_current=False)
    celery_app.config_from_object(celeryconfig)
    celery_app.conf.update(broker_url=redis_url, broker_transport=None,
                           broker_transport_options={"visibility_timeout": 600})
    return celery_app


def failing_flush(cause: Exception):
    """A stand-in for kombu's ``PublishBatch.flush`` whose pipeline fails with ``cause``, as kombu reports it."""
    from kombu.exceptions import BatchPublishError

    def flush(self):
        try:
            raise cause
        except type(cause) as exc:
            raise BatchPublishError("Redis publish batch failed; delivery is uncertain") from exc

    return flush


@pytest.fixture
def app(clock, redis_url):
    celery_app = production_like_app(redis_url)
    yield celery_app
    scheduler.publish_slot = slot_message.publish_slot  # a test's stand-in for one message's send goes
    celery_app.close()


class FlakySend:
    """Wraps beat's send of one message (``publish_slot``): the next ``failures`` calls raise instead of
    publishing. The ``app`` fixture puts the real one back."""

    def __init__(self, app: Celery, before_raise=None):
        self.real = scheduler.publish_slot
        self.failures = 0
        self.failed: list[str] = []
        self.before_raise = before_raise
        scheduler.publish_slot = self

    def __call__(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            self.failed.append(kwargs["headers"]["catalyst_entry"])
            if self.before_raise:
                self.before_raise()
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return self.real(*args, **kwargs)


def entry(name: str) -> ScheduleEntry:
    return query(lambda s: s.get(ScheduleEntry, name))


def sent_slots(redis_url: str, queue: str) -> Counter:
    return Counter((m["headers"]["catalyst_entry"], m["headers"]["catalyst_slot"])
                   for m in queued_messages(redis_url, queue))


def failures(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "schedule_slot_send_failed"]


def test_a_slot_whose_send_fails_is_released_and_sent_on_the_next_tick(clock, app, redis_url):
    beat = CatalystScheduler(app=app)
    flaky = FlakySend(app)
    try:
        beat.tick()  # 10:15: the scan goes out
        assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}

        clock.set(at(10, 30))
        flaky.failures = 1
        with capture_logs() as events:
            beat.tick()  # must not raise: the 10:30 send fails at the broker
        (failed,) = failures(events)
        assert failed["entry"] == "scan-market" and failed["slot"] == at(10, 30).isoformat()
        assert "Connection refused" in failed["error"]
        row = entry("scan-market")
        assert row.last_slot_at == at(10, 15) and row.total_sent == 1, "the unsent slot is still claimed"
        assert row.next_run_at == at(10, 30)
        assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}

        with capture_logs() as events:
            beat.tick()  # the broker is back: the released 10:30 slot goes out now
            beat.tick()  # ... and only once
        assert not failures(events)
        assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1,
                                                 ("scan-market", at(10, 30).isoformat()): 1}
        row = entry("scan-market")
        assert row.last_slot_at == at(10, 30) and row.total_sent == 2 and row.next_run_at == at(10, 45)
    finally:
        beat.close()


def test_each_slot_is_sent_exactly_once_across_repeated_ticks(clock, app, redis_url):
    position_id = seed_position("FLAT", 50.0, at(9, 30) - timedelta(days=1))
    beat = CatalystScheduler(app=app)
    try:
        for minute in (15, 20, 29, 30, 30, 44, 45, 45, 59):
            clock.set(at(10, minute))
            beat.tick()
            beat.tick()
    finally:
        beat.close()
    slots = [at(10, 15).isoformat(), at(10, 30).isoformat(), at(10, 45).isoformat()]
    assert sent_slots(redis_url, "scan") == {("scan-market", s): 1 for s in slots}
    assert sent_slots(redis_url, "monitor") == {(f"monitor-position-{position_id}", s): 1 for s in slots}
    assert entry("scan-market").total_sent == 3


def test_one_failed_send_does_not_stop_the_other_entries(clock, app, redis_url):
    ids = [seed_position("FLAT", 50.0, at(9, 30) - timedelta(days=1)) for _ in range(2)]
    names = {"scan-market", *(f"monitor-position-{i}" for i in ids)}
    beat = CatalystScheduler(app=app)
    flaky = FlakySend(app)
    flaky.failures = 1  # whichever entry this tick fires first
    try:
        with capture_logs() as events:
            beat.tick()
        (failed,) = failures(events)
        sent = sent_slots(redis_url, "scan") + sent_slots(redis_url, "monitor")
        assert set(sent) == {(n, at(10, 15).isoformat()) for n in names - {failed["entry"]}}
        assert entry(failed["entry"]).last_slot_at is None and entry(failed["entry"]).total_sent == 0

        beat.tick()
        beat.tick()
    finally:
        beat.close()
    sent = sent_slots(redis_url, "scan") + sent_slots(redis_url, "monitor")
    assert sent == {(n, at(10, 15).isoformat()): 1 for n in names}


def test_a_released_slot_is_sent_by_the_new_leader_when_the_old_one_lost_its_lease(clock, app, redis_url, pg_url):
    def lose_the_lease():  # the send hung past the lease: another beat may already lead
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = %s", (LEASE,))

    first = CatalystScheduler(app=app)
    flaky = FlakySend(app, before_raise=lose_the_lease)
    flaky.failures = 1
    second = CatalystScheduler(app=app)
    try:
        first.tick()  # claims 10:15, the send fails after the lease ran out
        assert flaky.failed == ["scan-market"]
        assert entry("scan-market").last_slot_at is None, "the claim was handed back even without the lease"

        second.tick()  # takes over and sends the released slot
        first.tick()  # now standby: sends nothing
        second.tick()
        assert query(lambda s: s.scalar(select(Lease.holder).where(Lease.name == LEASE))) == second.holder
    finally:
        first.close()
        second.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}


def test_a_release_that_fails_is_retried_when_postgres_returns(clock, app, redis_url, pg_url):
    database = pg_url.rsplit("/", 1)[1]

    def allow_connections(allowed: bool) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {str(allowed).lower()}")
            if not allowed:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    beat = CatalystScheduler(app=app)
    flaky = FlakySend(app, before_raise=lambda: allow_connections(False))  # Redis and PostgreSQL blip together
    flaky.failures = 1
    try:
        with capture_logs() as events:
            beat.tick()
        assert [e["event"] for e in events if e["event"].startswith("schedule_slot_re")] == [
            "schedule_slot_release_failed"]
        allow_connections(True)
        assert entry("scan-market").last_slot_at == at(10, 15), "still claimed: the release could not be written"

        beat.tick()  # releases first, then sends the slot
        beat.tick()
    finally:
        allow_connections(True)
        beat.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}
    assert entry("scan-market").total_sent == 1


def test_the_watchdog_and_the_guard_are_sent_before_any_check_at_the_first_slot_of_a_session(clock, app, redis_url):
    ids = [seed_position(s, 50.0, at(9, 0) - timedelta(days=1)) for s in ("AAA", "BBB")]
    clock.set(at(9, 29))  # before the open: nothing is due
    beat = CatalystScheduler(app=app)
    sent = FlakySend(app)  # no failures: it records the order in which beat publishes
    order = []
    real = sent.real
    sent.real = lambda *a, **kw: (order.append(kw["headers"]["catalyst_entry"]), real(*a, **kw))[1]
    try:
        beat.tick()
        assert order == ["premarket-scan"], "before the open only the pre-market scan is due"
        clock.set(at(9, 30))
        beat.tick()
    finally:
        beat.close()
    assert order[1:3] == ["reconcile", "check-risk"], "the watchdog, then the daily-loss guard, before any check"
    assert set(order[3:]) == {"scan-market", *(f"monitor-position-{i}" for i in ids)}


def test_the_premarket_scan_goes_out_once_before_each_open_and_never_after_it(clock, app, redis_url):
    beat = CatalystScheduler(app=app)
    try:
        for day, (hour, minute) in [(0, (8, 30)), (0, (8, 59)), (0, (9, 0)), (0, (9, 10)), (0, (9, 29)),
                                    (1, (9, 5)), (1, (9, 6)), (2, (9, 45))]:
            clock.set(at(hour, minute) + timedelta(days=day))
            beat.tick()
            beat.tick()
    finally:
        beat.close()
    premarket = {slot for entry_name, slot in sent_slots(redis_url, "scan") if entry_name == "premarket-scan"}
    # Tuesday's at 09:00 (30 min before the open); Wednesday's sent late (09:05, within the grace); Thursday's
    # beat only woke after the open: a pre-market scan is never sent into the session.
    assert sorted(premarket) == [at(9, 0).isoformat(), (at(9, 0) + timedelta(days=1)).isoformat()]
    assert sum(n for (e, _), n in sent_slots(redis_url, "scan").items() if e == "premarket-scan") == 2


def test_the_daily_summary_goes_out_once_after_each_close_including_an_early_close(clock, app, redis_url):
    black_friday = datetime(2025, 11, 28, 13, 0, tzinfo=EST).astimezone(UTC)  # NYSE closes at 13:00
    beat = CatalystScheduler(app=app)
    try:
        for when in (black_friday - timedelta(minutes=1), black_friday + timedelta(minutes=5),
                     black_friday + timedelta(minutes=6), black_friday + timedelta(hours=3),
                     black_friday + timedelta(days=3, hours=3, minutes=5)):  # Monday 16:05
            clock.set(when)
            beat.tick()
            beat.tick()
    finally:
        beat.close()
    summaries = sorted(slot for (e, slot) in sent_slots(redis_url, "maintenance") if e == "daily-summary")
    assert summaries == [(black_friday + timedelta(minutes=5)).isoformat(),
                         (black_friday + timedelta(days=3, hours=3, minutes=5)).isoformat()]


def set_connections(pg_url: str, allowed: bool) -> None:
    """Let the test database take connections or not (dropping the open ones): a real outage for this beat."""
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {str(allowed).lower()}")
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


def test_beat_rides_out_postgres_going_away_and_sends_the_due_slot_when_it_returns(clock, app, redis_url, pg_url):
    beat = CatalystScheduler(app=app)
    try:
        beat.tick()  # 10:15 goes out; beat holds the lease
        set_connections(pg_url, False)
        clock.set(at(10, 30))
        with capture_logs() as events:
            sleeps = [beat.tick() for _ in range(5)]  # must not raise: Celery's beat loop would exit
        assert all(0 < s <= 1 for s in sleeps), sleeps
        outages = [e["event"] for e in events if e["event"].startswith(("beat_outage", "beat_recovered"))]
        assert outages == ["beat_outage"]  # once, not once per tick
        set_connections(pg_url, True)
        with capture_logs() as events:
            beat.tick()
        assert "beat_recovered" in [e["event"] for e in events]
    finally:
        set_connections(pg_url, True)
        beat.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1,
                                             ("scan-market", at(10, 30).isoformat()): 1}


def test_beat_stops_trying_each_entry_while_redis_is_away_and_sends_every_slot_once_when_it_returns(
        clock, app, redis_url):
    ids = [seed_position(s, 50.0, at(9, 30) - timedelta(days=1)) for s in ("AAA", "BBB", "CCC", "DDD")]
    names = {"scan-market", *(f"monitor-position-{i}" for i in ids)}
    beat = CatalystScheduler(app=app)
    flaky = FlakySend(app)
    flaky.failures = 1000  # Redis is down: every send would cost its publish retries
    try:
        with capture_logs() as events:
            beat.tick()
            beat.tick()
        assert len(flaky.failed) == 3, "two attempts, then one per tick while Redis is away: not one per entry"
        (outage,) = [e for e in events if e["event"].startswith(("beat_outage", "beat_recovered"))]
        assert outage["event"] == "beat_outage" and outage["server"] == "redis"
        assert "Connection refused" in outage["error"]
        assert all(entry(n).last_slot_at is None for n in names), "nothing claimed stays claimed"
        flaky.failures = 0
        with capture_logs() as events:
            beat.tick()
            beat.tick()
        assert [e["event"] for e in events if e["event"].startswith(("beat_outage", "beat_recovered"))] == [
            "beat_recovered"]
    finally:
        beat.close()
    sent = sent_slots(redis_url, "scan") + sent_slots(redis_url, "monitor")
    assert sent == {(n, at(10, 15).isoformat()): 1 for n in names}


def test_a_bug_in_a_tick_is_logged_with_its_traceback_and_beat_carries_on(clock, app, redis_url, monkeypatch):
    beat = CatalystScheduler(app=app)
    real_sync = beat._sync_entries
    try:
        beat.tick()
        monkeypatch.setattr(beat, "_sync_entries", lambda now: 1 / 0)  # a bug, not an outage
        clock.set(at(10, 30))
        with capture_logs() as events:
            sleeps = [beat.tick() for _ in range(3)]
        assert all(0 < s <= 1 for s in sleeps)
        (failed,) = [e for e in events if e["event"] == "beat_tick_failed"]  # once, not once per tick
        assert "ZeroDivisionError" in failed["error"] and failed["exc_info"]
        assert query(lambda s: s.get(ServiceHealth, beat.service)).status == "failing"
        monkeypatch.setattr(beat, "_sync_entries", real_sync)
        with capture_logs() as events:
            beat.tick()
        assert "beat_recovered" in [e["event"] for e in events]
        assert query(lambda s: s.get(ServiceHealth, beat.service)).status == "active"
    finally:
        beat.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1,
                                             ("scan-market", at(10, 30).isoformat()): 1}


def test_an_entry_whose_send_always_fails_never_holds_back_the_others_after_a_redis_outage(clock, app, redis_url):
    ids = [seed_position(s, 50.0, at(9, 0) - timedelta(days=1)) for s in ("AAA", "BBB")]
    clock.set(at(9, 30))  # the open: the watchdog (always sent first), the scan and every check are due
    beat = CatalystScheduler(app=app)
    real = scheduler.publish_slot
    redis_down = [True]

    def send(*args, **kwargs):
        if redis_down[0]:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        if kwargs["headers"]["catalyst_entry"] == "reconcile":
            raise TypeError("Object of type Decimal is not JSON serializable")  # a bug in one entry, not an outage
        return real(*args, **kwargs)

    scheduler.publish_slot = send
    try:
        beat.tick()  # Redis is away
        redis_down[0] = False
        with capture_logs() as events:
            beat.tick()
            beat.tick()
    finally:
        beat.close()
    assert "beat_recovered" in [e["event"] for e in events]
    assert sent_slots(redis_url, "monitor") == {(f"monitor-position-{i}", at(9, 30).isoformat()): 1 for i in ids}
    assert sent_slots(redis_url, "scan") == {("scan-market", at(9, 30).isoformat()): 1}
    assert entry("reconcile").last_slot_at is None, "the failed slot was handed back, not lost"


def test_a_claim_whose_commit_reply_was_lost_is_sent_on_the_next_tick(clock, app, redis_url, monkeypatch):
    real_scope = scheduler.session_scope
    calls = []

    @contextmanager
    def second_commit_reply_lost(*args, **kwargs):  # the 1st session syncs the entries, the 2nd claims scan-market
        calls.append(1)
        with real_scope(*args, **kwargs) as s:
            yield s
        if len(calls) == 2:  # the UPDATE committed; the client never heard back
            raise SQLAlchemyOperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    beat = CatalystScheduler(app=app)
    try:
        monkeypatch.setattr(scheduler, "session_scope", second_commit_reply_lost)
        beat.tick()
        monkeypatch.setattr(scheduler, "session_scope", real_scope)
        assert entry("scan-market").last_slot_at == at(10, 15), "claimed in the database"
        assert sent_slots(redis_url, "scan") == {}, "... but never sent"
        beat.tick()
        beat.tick()
    finally:
        beat.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}


def test_a_premarket_scan_message_expires_at_the_open_so_a_late_worker_never_runs_it_in_the_session(clock, app):
    clock.set(at(9, 10))
    beat = CatalystScheduler(app=app)
    try:
        beat.tick()  # sends the 09:00 pre-market scan, 20 minutes before the open
        lifetime = {name: beat._market_lifetime(entry(name), at(9, 0)) for name in ("premarket-scan", "scan-market")}
    finally:
        beat.close()
    assert lifetime == {"premarket-scan": 20 * 60, "scan-market": 2 * 900}


# -- beat in O(changes) (issue 11) -------------------------------------------------------------------------------
def seed_positions(n: int) -> list[int]:
    """``n`` open positions in one statement (seeding hundreds one by one would dominate the test)."""
    from sqlalchemy import insert

    from catalyst.db.engine import session_scope
    from catalyst.db.models import Position
    from catalyst.records import security_id

    opened = at(9, 30) - timedelta(days=1)
    with session_scope() as s:
        sid = security_id(s, "FLAT", "XNYS")
        return list(s.scalars(insert(Position).returning(Position.id), [
            dict(security_id=sid, symbol="FLAT", qty=10, status="open", entry_price=50.0, high_watermark=50.0,
                 max_hold_seconds=864000, opened_at=opened, updated_at=opened) for _ in range(n)]))


@contextmanager
def statements():
    """The SQL statements this process runs meanwhile, heartbeats left out (they go by wall time)."""
    from sqlalchemy import event

    from catalyst.db.engine import get_engine

    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        if "service_health" not in statement:
            seen.append(" ".join(statement.split()))

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)


def claims(executed: list[str]) -> list[str]:
    return [s for s in executed if s.startswith("UPDATE schedule_entries SET") and "last_slot_at <" in s]


def test_a_tick_claims_every_due_slot_in_one_statement_whatever_the_number_of_positions(clock, app, redis_url):
    """Sending a slot costs the same SQL at 10 positions as at 500: one claim, no statement per entry."""
    few = seed_positions(10)
    clock.set(at(10, 14))
    beat = CatalystScheduler(app=app)
    try:
        beat.tick()  # the entries are created; 10:15 is due next
        clock.set(at(10, 15))
        with statements() as at_10:
            beat.tick()
        many = seed_positions(490)
        clock.set(at(10, 16))
        beat.tick()  # the 490 new entries: their first slot is 10:30
        clock.set(at(10, 30))
        with statements() as at_500:
            beat.tick()
        clock.set(at(10, 31))
        with statements() as idle:
            beat.tick()
    finally:
        beat.close()
    assert len(claims(at_10)) == len(claims(at_500)) == 1, (at_10, at_500)
    assert len(at_10) == len(at_500), (at_10, at_500)
    assert not claims(idle) and len(idle) < len(at_500)
    monitor = sent_slots(redis_url, "monitor")
    assert monitor == {**{(f"monitor-position-{i}", s.isoformat()): 1 for i in few for s in (at(10, 15), at(10, 30))},
                       **{(f"monitor-position-{i}", at(10, 30).isoformat()): 1 for i in many}}


def test_positions_opened_and_closed_between_ticks_gain_and_lose_their_entry(clock, app, redis_url):
    clock.set(at(10, 16))
    beat = CatalystScheduler(app=app)
    try:
        beat.tick()
        (opened,) = seed_positions(1)
        beat.tick()
        assert entry(f"monitor-position-{opened}") is not None, "a new position is checked from the next tick"
        from catalyst.db.engine import session_scope
        from catalyst.db.models import Position

        with session_scope() as s:
            s.get(Position, opened).status = "closed"
        beat.tick()
        assert entry(f"monitor-position-{opened}") is None, "a closed position's entry is gone"
        clock.set(at(10, 30))
        beat.tick()
    finally:
        beat.close()
    assert sent_slots(redis_url, "monitor") == {}, "the entry was created for 10:30 and removed before it"


@pytest.mark.parametrize("behind", [0, 15], ids=["same_clock", "old_leader_15s_behind"])
def test_a_slot_the_old_leader_releases_after_the_takeover_is_sent_by_the_new_leader(clock, app, redis_url, pg_url,
                                                                                     behind):
    """The new leader read the table while the slot was still claimed; it must see the later release (another
    beat's write) without reading everything again, and send the slot once, also when the old leader's host
    clock runs behind (its release is stamped in the past)."""
    first, second = CatalystScheduler(app=app), CatalystScheduler(app=app)
    real_stamp = first._stamp
    first._stamp = lambda: real_stamp() - timedelta(seconds=behind)

    def lose_the_lease_and_be_replaced():  # the send hung past the lease, and the standby took over meanwhile
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = %s", (LEASE,))
        second.tick()
        assert entry("scan-market").last_slot_at == at(10, 15), "the new leader sees the slot claimed"

    flaky = FlakySend(app, before_raise=lose_the_lease_and_be_replaced)
    flaky.failures = 1
    try:
        first.tick()  # claims 10:15; the send fails after the takeover; the claim is handed back
        assert entry("scan-market").last_slot_at is None
        second.tick()
        second.tick()
    finally:
        first.close()
        second.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}


def test_a_beat_that_loses_its_lease_while_sending_a_slot_stops_and_hands_the_rest_back(
        clock, app, redis_url, pg_url, monkeypatch):
    """The lease is renewed while a big slot goes out; when a renewal finds it taken, the rest is released
    (not sent by a beat that no longer leads) and the next leader sends it: every check once."""
    monkeypatch.setattr(scheduler, "SEND_BATCH", 2)
    monkeypatch.setattr(scheduler, "RENEW_EVERY", 2)
    ids = seed_positions(5)
    beat = CatalystScheduler(app=app)
    real = scheduler.publish_slot
    sent = []

    def send_then_lose_the_lease(*args, **kwargs):
        sent.append(kwargs["headers"]["catalyst_entry"])
        if len(sent) == 3:  # another beat takes the lease while this one is still sending
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("UPDATE leases SET holder = 'thief', token = token + 1, "
                             "expires_at = now() + interval '1 hour' WHERE name = %s", (LEASE,))
        return real(*args, **kwargs)

    scheduler.publish_slot = send_then_lose_the_lease
    try:
        with capture_logs() as events:
            beat.tick()
        assert len(sent) == 4, "the batch under way goes out, then the renewal finds the lease gone"
        assert [e["sent"] for e in events if e["event"] == "beat_lease_lost_while_sending"] == [4]
        names = {"scan-market", *(f"monitor-position-{i}" for i in ids)}
        assert {n for n in names if entry(n).last_slot_at is None} == names - set(sent), "the rest handed back"
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the thief dies
            conn.execute("UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = %s", (LEASE,))
        beat.tick()
        beat.tick()
    finally:
        scheduler.publish_slot = real
        beat.close()
    everything = sent_slots(redis_url, "scan") + sent_slots(redis_url, "monitor")
    assert everything == {(n, at(10, 15).isoformat()): 1 for n in names}


def test_a_slot_whose_pipeline_cannot_reach_redis_is_handed_back_and_beat_waits_out_the_outage(
        clock, app, redis_url, monkeypatch):
    """Messages go to Redis in one pipeline per batch; when its flush finds Redis away (Redis killed: the
    connection is refused), nothing of it counts as sent, every claim is handed back, and beat reports the
    outage and paces its retries instead of trying again at once."""
    import redis
    from kombu.transport.redis import PublishBatch

    ids = seed_positions(3)
    names = {"scan-market", *(f"monitor-position-{i}" for i in ids)}
    real_flush = PublishBatch.flush

    # what kombu raises when the pipeline's execute() finds Redis gone
    refused = failing_flush(redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. "
                                                             "Connection refused."))

    beat = CatalystScheduler(app=app)
    try:
        monkeypatch.setattr(PublishBatch, "flush", refused)
        with capture_logs() as events:
            sleeps = [beat.tick(), beat.tick()]
        assert sleeps == [scheduler_outage_retry()] * 2, "an outage's pace, not a tight loop"
        (outage,) = [e for e in events if e["event"].startswith(("beat_outage", "beat_recovered"))]
        assert outage["server"] == "redis" and "Connection refused" in outage["error"]
        assert all(entry(n).last_slot_at is None for n in names), "nothing claimed stays claimed"
        monkeypatch.setattr(PublishBatch, "flush", real_flush)
        with capture_logs() as events:
            beat.tick()
            beat.tick()
        assert "beat_recovered" in [e["event"] for e in events]
    finally:
        beat.close()
    sent = sent_slots(redis_url, "scan") + sent_slots(redis_url, "monitor")
    assert sent == {(n, at(10, 15).isoformat()): 1 for n in names}


def scheduler_outage_retry() -> float:
    from workers.scheduler import OUTAGE_RETRY

    return OUTAGE_RETRY
