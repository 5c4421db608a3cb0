"""Pull the plug on Redis or PostgreSQL mid-session: nothing is restarted by hand, nothing is missed.

Private servers started by the test (never the shared ones), real worker and beat processes and
no supervisor. After each outage the same beat and worker processes carry on, every open
position is checked again for the slot current when the server returned (or the one after it:
within one check interval, counted in market time so that a loaded machine cannot fake a
failure), and a stop crossed while PostgreSQL was down exits exactly once.

Market time runs at 2x, so a check interval of 10 market seconds is 5 wall seconds.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from catalyst.db.engine import dispose_all
from catalyst.db.models import Decision, Order, PaperOrder, Position
from catalyst.runtime import build_clock
from catalyst.settings import get_settings
from tests.private_servers import PrivateRedis
from tests.support import environment, query, wait_for, write_replay_csv
from tests.test_e2e_loop import SESSION_OPEN, base_env, cli

pytestmark = pytest.mark.e2e

SPEED = 2
INTERVAL = 10  # market seconds between checks of one position (5 wall seconds)
START = SESSION_OPEN + timedelta(minutes=30)  # 10:00 market time
DROP_AT = START + timedelta(minutes=3)  # DROP trades at 90 from here: below its 95 stop (90 wall s of set-up room)
FLAT = ("FLAT", "FLAU")


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


def outage_env(tmp_path, database_url: str, redis_url: str) -> dict[str, str]:
    minutes_before_drop = int((DROP_AT - SESSION_OPEN).total_seconds() // 60)
    paths = [write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [50.0] * 300) for s in FLAT]
    paths.append(write_replay_csv(tmp_path / "DROP.csv", "DROP", SESSION_OPEN,
                                  [100.0] * minutes_before_drop + [90.0] * 200))
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
            "CATALYST_MARKET_DATA": "replay:" + ",".join(map(str, paths)),
            "CATALYST_CLOCK": f"sim:{START.isoformat()}@{SPEED}", "MONITOR_CHECK_INTERVAL": str(INTERVAL),
            "MONITOR_RECORD_HOLDS": "true",  # every check leaves a decisions row with its slot, plain holds too
            "CATALYST_AUTO_ENTRIES": "false", "CATALYST_HEARTBEAT_INTERVAL": "2"}


def open_positions(with_drop: bool) -> dict[str, int]:
    cli("db", "upgrade")
    opened = {s: json.loads(cli("open", s, "--qty", "10", "--stop", "45", "--json").stdout)["id"] for s in FLAT}
    if with_drop:
        opened["DROP"] = json.loads(cli("open", "DROP", "--qty", "10", "--stop", "95", "--json").stdout)["id"]
    return opened


_clock = {}


def market_now() -> datetime:
    """Market time (the shared simulated clock is read from the database once, before any outage)."""
    url = get_settings().sqlalchemy_url
    if url not in _clock:
        _clock[url] = build_clock(get_settings())
    return _clock[url].now()


def first_checks_after(wall: datetime) -> dict[int, datetime]:
    """Per position, the market slot of its first monitor check recorded after wall time ``wall``."""
    rows = query(lambda s: s.execute(select(Decision.position_id, Decision.details, Decision.recorded_at).where(
        Decision.kind == "monitor", Decision.recorded_at > wall).order_by(Decision.recorded_at)).all())
    first: dict[int, datetime] = {}
    for position_id, details, _ in rows:
        first.setdefault(position_id, datetime.fromisoformat(details["slot"]))
    return first


def recovery_seconds(wall: datetime) -> float:
    """Wall seconds from ``wall`` until the last position's first check after it was recorded."""
    rows = query(lambda s: s.execute(select(Decision.position_id, func.min(Decision.recorded_at)).where(
        Decision.kind == "monitor", Decision.recorded_at > wall).group_by(Decision.position_id)).all())
    return max((at - wall).total_seconds() for _, at in rows)


def assert_resumed_within_one_interval(ids, back_wall: datetime, back_market: datetime) -> None:
    """Each position's first check after the return is for a slot due at most one interval after it: beat
    sent again at once and the worker was consuming before that slot's message expired. (The slot may be
    older: a tick that began just before the return sends the slot that was current then.)"""
    resumed = wait_for(lambda: (c := first_checks_after(back_wall)) and set(ids) <= set(c) and c, 120,
                       what="every position to be checked again after the outage")
    late = {pid: slot.isoformat() for pid, slot in resumed.items()
            if pid in ids and slot > back_market + timedelta(seconds=INTERVAL)}
    assert not late, f"back at {back_market.isoformat()}: first checks later than one interval: {late}"


def test_monitoring_resumes_within_one_interval_after_redis_is_killed_for_30_seconds(
        tmp_path, pg_url, private_redis, stack):
    with environment(outage_env(tmp_path, pg_url, private_redis.url)):
        ids = list(open_positions(with_drop=False).values())
        market_now()
        worker, beat = stack.worker(), stack.beat()
        started = datetime.now(timezone.utc)
        wait_for(lambda: set(ids) <= set(first_checks_after(started)), 90, what="first checks of every position")

        private_redis.kill()  # every queued and unacked message is lost with it
        time.sleep(30)
        assert worker.alive() and beat.alive(), "a Redis outage ended a process:\n" + stack.logs()
        private_redis.start()  # empty, on the same port
        back_wall, back_market = datetime.now(timezone.utc), market_now()

        assert_resumed_within_one_interval(ids, back_wall, back_market)
        assert worker.alive() and beat.alive(), "the same processes carry on"
        print(f"\nredis outage 30 s: every position checked again {recovery_seconds(back_wall):.1f} s after return")
        assert "beat_outage" in beat.log_text() and "beat_recovered" in beat.log_text()


def test_a_worker_in_the_middle_of_an_exit_survives_redis_dying_and_the_exit_completes_once(
        tmp_path, pg_url, private_redis, stack):
    """Redis dies while the worker holds an unacknowledged exit: Celery's clean-up of the lost connection
    used to raise an error it calls unrecoverable, and the worker exited with the exit half done."""
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    (pause_dir / "exit_after_submit.hold").write_text("hold")
    env = base_env(tmp_path)
    env.update(DATABASE_URL=pg_url, REDIS_URL=private_redis.url)
    with environment(env):
        cli("db", "upgrade")
        worker = stack.worker(env_extra={"CATALYST_TEST_PAUSE": f"exit_after_submit:{pause_dir}"})
        beat = stack.beat()
        position_id = json.loads(cli("open", "TEST", "--qty", "10", "--stop", "95", "--json").stdout)["id"]
        wait_for(lambda: (pause_dir / "exit_after_submit.reached").exists(), 90, what="exit_position to pause")

        private_redis.kill()  # the exit's message is unacknowledged: the worker must let it go, not exit
        wait_for(lambda: "Connection to broker lost" in worker.log_text(), 30, what="the worker to notice")
        time.sleep(2)
        assert worker.alive(), "the worker ended when Redis died:\n" + stack.logs()
        private_redis.start()
        (pause_dir / "exit_after_submit.hold").unlink()

        closed = wait_for(lambda: (p := query(lambda s: s.get(Position, position_id))).status == "closed" and p,
                          90, what="the exit to complete")
        assert closed.exit_reason == "stop_loss"
        time.sleep(3)  # later checks and redeliveries must not sell again
        sells = query(lambda s: s.scalars(select(PaperOrder).where(PaperOrder.side == "sell")).all())
        assert [o.qty for o in sells] == [10]
        assert worker.alive() and beat.alive()


def test_a_stop_crossed_while_postgres_is_down_exits_once_when_it_returns(tmp_path, private_pg, private_redis, stack):
    url = private_pg.create_database("catalyst")
    with environment(outage_env(tmp_path, url, private_redis.url)):
        opened = open_positions(with_drop=True)
        market_now()
        worker, beat = stack.worker(), stack.beat()
        started = datetime.now(timezone.utc)
        wait_for(lambda: set(opened.values()) <= set(first_checks_after(started)), 90,
                 what="first checks of every position")
        # Stop PostgreSQL 20 market seconds before DROP falls through its stop: it falls during the outage.
        wait_for(lambda: market_now() >= DROP_AT - timedelta(seconds=20), 120, what="the minute before the drop")
        assert market_now() < DROP_AT, "set-up took too long: the drop happened before the outage"
        assert query(lambda s: s.get(Position, opened["DROP"]).status) == "open"

        dispose_all()  # this process's pooled connections die with the server too
        private_pg.stop()
        time.sleep(60)
        assert market_now() > DROP_AT + timedelta(seconds=60), "the stop was crossed during the outage"
        assert worker.alive() and beat.alive(), "a PostgreSQL outage ended a process:\n" + stack.logs()
        private_pg.start()
        back_wall, back_market = datetime.now(timezone.utc), market_now()

        assert_resumed_within_one_interval(list(opened.values()), back_wall, back_market)
        closed = wait_for(lambda: (p := query(lambda s: s.get(Position, opened["DROP"]))).status == "closed" and p,
                          60, what="DROP to exit")
        assert closed.exit_reason == "stop_loss"
        time.sleep(3 * INTERVAL / SPEED)  # later checks and any redelivery must not sell again
        sells = query(lambda s: s.scalars(select(PaperOrder).where(PaperOrder.symbol == "DROP",
                                                                   PaperOrder.side == "sell")).all())
        assert len(sells) == 1 and sells[0].qty == 10
        exits = query(lambda s: s.scalars(select(Order.status).where(Order.position_id == opened["DROP"],
                                                                     Order.purpose == "exit")).all())
        assert exits == ["filled"]
        assert {query(lambda s: s.get(Position, opened[sym]).status) for sym in FLAT} == {"open"}
        assert worker.alive() and beat.alive(), "the same processes carry on"
        print(f"\npostgres outage 60 s: every position checked again {recovery_seconds(back_wall):.1f} s after return")
        assert "beat_outage" in beat.log_text() and "beat_recovered" in beat.log_text()


def test_beat_and_worker_started_while_postgres_is_down_wait_for_it_and_then_monitor(
        tmp_path, private_pg, private_redis, stack):
    url = private_pg.create_database("catalyst")
    with environment(outage_env(tmp_path, url, private_redis.url)):
        ids = list(open_positions(with_drop=False).values())
        dispose_all()
        private_pg.stop()  # a host restarted in the middle of an outage
        worker, beat = stack.worker(), stack.beat()
        wait_for(lambda: "database_unreachable" in worker.log_text() and "database_unreachable" in beat.log_text(),
                 60, what="both processes to report the database unreachable")
        time.sleep(2)
        assert worker.alive() and beat.alive(), "a process gave up while the database was away:\n" + stack.logs()
        private_pg.start()
        back = datetime.now(timezone.utc)
        wait_for(lambda: set(ids) <= set(first_checks_after(back)), 90, what="every position to be checked")
        assert worker.alive() and beat.alive()
