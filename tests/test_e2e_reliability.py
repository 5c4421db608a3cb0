"""Failure drills on real processes, PostgreSQL and Redis: a worker killed mid-exit, a flushed Redis,
two beats at once and a beat that dies."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import redis
from sqlalchemy import func, select

from catalyst.db.models import Decision, Order, PaperOrder, Position, ServiceHealth
from catalyst.runtime import build_clock
from catalyst.settings import get_settings
from tests.support import environment, query, queued_messages, seed_position, wait_for, write_replay_csv
from tests.test_e2e_loop import SESSION_OPEN, base_env, cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def pg_redis_env(tmp_path, pg_url, redis_url):
    env = base_env(tmp_path)
    env.update(DATABASE_URL=pg_url, REDIS_URL=redis_url)
    with environment(env):
        yield env


def test_stop_loss_exits_once_when_worker_killed_mid_exit(pg_redis_env, stack, tmp_path):
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    (pause_dir / "exit_after_submit.hold").write_text("hold")
    first = stack.worker(name="doomed", env_extra={"CATALYST_TEST_PAUSE": f"exit_after_submit:{pause_dir}"})
    stack.beat()
    position_id = json.loads(cli("open", "TEST", "--qty", "10", "--stop", "95", "--json").stdout)["id"]

    wait_for(lambda: (pause_dir / "exit_after_submit.reached").exists(), 90, what="exit_position to pause")
    first.kill()  # SIGKILL the whole worker while the sell is at the broker but not yet recorded
    position = query(lambda s: s.get(Position, position_id))
    assert position.status == "closing" and position.exit_reason == "stop_loss"
    assert query(lambda s: s.scalar(select(func.count()).select_from(PaperOrder).where(PaperOrder.side == "sell"))) == 1
    (exit_row,) = query(lambda s: s.scalars(select(Order).where(Order.position_id == position_id,
                                                                 Order.purpose == "exit")).all())
    assert exit_row.status == "pending_submit"  # the broker sold; our books had not heard yet

    stack.worker(name="survivor", env_extra={"CATALYST_TEST_PAUSE": ""})
    closed = wait_for(lambda: query(lambda s: (p := s.get(Position, position_id)).status == "closed" and p), 60,
                      what="the restarted worker to finish the exit")
    assert closed.exit_reason == "stop_loss"
    exits = query(lambda s: s.scalars(select(Order).where(Order.position_id == position_id,
                                                          Order.purpose == "exit")).all())
    assert [o.status for o in exits] == ["filled"]
    time.sleep(3)  # further monitor slots and redeliveries must not sell again
    assert query(lambda s: s.scalar(select(func.count()).select_from(PaperOrder).where(PaperOrder.side == "sell"))) == 1


FLAT = ("FLAT", "FLAU", "FLAV")  # one position per symbol: entries refuse a second one in a held symbol


def _flat_env(env, tmp_path):
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [50.0] * 300)) for s in FLAT]
    env["CATALYST_MARKET_DATA"] = "replay:" + ",".join(paths)
    env["MONITOR_RECORD_HOLDS"] = "true"  # every check leaves a decisions row with its slot, plain holds too
    return env


def test_monitoring_resumes_for_every_position_after_redis_flush(tmp_path, pg_url, redis_url, stack):
    env = _flat_env(base_env(tmp_path), tmp_path)
    env.update(DATABASE_URL=pg_url, REDIS_URL=redis_url)
    with environment(env):
        cli("db", "upgrade")
        ids = [json.loads(cli("open", sym, "--qty", str(q), "--json").stdout)["id"] for sym, q in zip(FLAT, (1, 2, 3))]
        stack.worker()
        stack.beat()

        def checked_slots(since):
            """Per position, the market slots of the monitor checks recorded after wall time ``since``."""
            rows = query(lambda s: s.execute(select(Decision.position_id, Decision.details).where(
                Decision.kind == "monitor", Decision.recorded_at > since)).all())
            found: dict[int, list[datetime]] = {}
            for position_id, details in rows:
                found.setdefault(position_id, []).append(datetime.fromisoformat(details["slot"]))
            return found

        t0 = datetime.now(timezone.utc)
        wait_for(lambda: len(checked_slots(t0)) == 3, 60, what="first checks of all three positions")
        redis.Redis.from_url(redis_url).flushdb()  # every queued and unacked message is gone
        flushed = datetime.now(timezone.utc)
        flushed_market = build_clock(get_settings()).now()
        # Anything enqueued before the flush is for a slot at or before the market time of the flush
        # (a slot is sent once due), so a check of a later slot was scheduled and delivered after it.
        # Liveness only: at 60x a new slot is due every wall second.
        resumed = wait_for(lambda: (c := {pid: slots for pid, slots in checked_slots(flushed).items()
                                          if max(slots) > flushed_market}) and len(c) == 3 and c, 90,
                           what="every position to be checked for a slot after the FLUSHDB")
        assert set(resumed) == set(ids)


def test_two_beats_never_enqueue_the_same_slot_and_a_dead_leader_is_replaced(tmp_path, pg_url, redis_url, stack):
    env = _flat_env(base_env(tmp_path, speed=120), tmp_path)
    env.update(DATABASE_URL=pg_url, REDIS_URL=redis_url, CATALYST_BEAT_LEASE_SECONDS="10")
    with environment(env):
        cli("db", "upgrade")
        for _ in range(3):
            seed_position("FLAT", 50.0, SESSION_OPEN)
        first, second = stack.beat(name="beat-a"), stack.beat(name="beat-b")
        wait_for(lambda: len(queued_messages(redis_url, "monitor")) >= 30, 30, what="monitor slots to be enqueued")

        leader = query(lambda s: s.scalar(select(ServiceHealth.pid).where(ServiceHealth.kind == "beat",
                                                                         ServiceHealth.status == "active")))
        dead, survivor = (first, second) if first.popen.pid == leader else (second, first)
        dead.kill()
        killed_at = time.monotonic()
        before = len(queued_messages(redis_url, "monitor"))
        wait_for(lambda: len(queued_messages(redis_url, "monitor")) > before + 6, 60,
                 what="the standby beat to take over")
        assert time.monotonic() - killed_at < 60
        assert survivor.alive()

        slots = Counter((m["headers"]["catalyst_entry"], m["headers"]["catalyst_slot"])
                        for m in queued_messages(redis_url, "monitor"))
        duplicates = {k: n for k, n in slots.items() if n > 1}
        assert not duplicates, f"slots enqueued twice: {duplicates}"
