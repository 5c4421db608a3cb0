"""A real beat on a simulated clock enqueues nothing outside the session: weekends, holidays,
after an early close; and a DST-change day opens at the right UTC instant."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.support import environment, queued_messages, seed_position, wait_for, write_replay_csv
from tests.test_e2e_loop import cli

pytestmark = pytest.mark.e2e
NY = ZoneInfo("America/New_York")


def run_beat(tmp_path, pg_url, redis_url, stack, start: datetime, speed: float, wall_seconds: float,
             market: str = "US") -> list[dict]:
    """Run one beat from ``start`` for ``wall_seconds`` with one open position; return what it enqueued."""
    csv = write_replay_csv(tmp_path / "FLAT.csv", "FLAT", start.replace(hour=9, minute=30), [50.0] * 10)
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_MARKET_DATA": f"replay:{csv}", "CATALYST_CLOCK": f"sim:{start.isoformat()}@{speed:g}",
           "MONITOR_CHECK_INTERVAL": "60", "CATALYST_SCAN_INTERVAL": "900", "CATALYST_MARKET": market}
    with environment(env):
        cli("db", "upgrade")
        seed_position("FLAT", 50.0, start - timedelta(days=1))
        beat = stack.beat()
        wait_for(lambda: "beat_active" in beat.log_text(), 30, what="beat to become active")
        time.sleep(wall_seconds)
        beat.stop()
    return queued_messages(redis_url, "monitor") + queued_messages(redis_url, "scan")


def slots(messages: list[dict]) -> list[datetime]:
    return sorted(datetime.fromisoformat(m["headers"]["catalyst_slot"]) for m in messages)


@pytest.mark.parametrize("label, start", [
    ("saturday", datetime(2026, 11, 21, 9, 0, tzinfo=NY)),
    ("thanksgiving", datetime(2026, 11, 26, 9, 0, tzinfo=NY)),
    ("good_friday", datetime(2026, 4, 3, 9, 0, tzinfo=NY)),
])
def test_nothing_is_enqueued_when_the_exchange_is_closed_all_day(label, start, tmp_path, pg_url, redis_url, stack):
    # 8 wall seconds at 3600x sweep 09:00-17:00 of the closed day: hundreds of slots on a normal day
    assert run_beat(tmp_path, pg_url, redis_url, stack, start, 3600, 8) == []


def test_nothing_is_enqueued_after_an_early_close(tmp_path, pg_url, redis_url, stack):
    start = datetime(2026, 11, 27, 12, 55, tzinfo=NY)  # the day after Thanksgiving closes at 13:00
    sent = slots(run_beat(tmp_path, pg_url, redis_url, stack, start, 120, 10))  # ~20 simulated minutes
    assert sent, "the minutes before the early close should still be monitored"
    close = datetime(2026, 11, 27, 13, 0, tzinfo=NY)
    assert all(s < close for s in sent), [s.astimezone(NY).isoformat() for s in sent if s >= close]


def test_first_slot_after_the_spring_dst_change_is_0930_new_york(tmp_path, pg_url, redis_url, stack):
    start = datetime(2026, 3, 9, 9, 25, tzinfo=NY)  # Monday after clocks went forward on 2026-03-08
    sent = slots(run_beat(tmp_path, pg_url, redis_url, stack, start, 120, 8))
    assert sent, "slots after the open were expected"
    assert sent[0] == datetime(2026, 3, 9, 13, 30, tzinfo=timezone.utc)


def test_no_checks_during_the_hong_kong_lunch_break(tmp_path, pg_url, redis_url, stack):
    hkt = ZoneInfo("Asia/Hong_Kong")
    start = datetime(2025, 3, 4, 11, 50, tzinfo=hkt)
    sent = slots(run_beat(tmp_path, pg_url, redis_url, stack, start, 900, 8, market="HK"))  # ~2 simulated hours
    local = [s.astimezone(hkt) for s in sent]
    assert any(t.hour < 12 for t in local) and any(t.hour >= 13 for t in local), local
    assert not [t for t in local if 12 <= t.hour < 13], "monitor slots were sent during the lunch break"
