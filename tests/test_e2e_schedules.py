"""A real beat on a simulated clock enqueues nothing outside the session: weekends, holidays,
after an early close, the Hong Kong lunch break; and a DST-change day opens at the right UTC instant.

The simulated clock starts when the beat builds its runtime, and a loaded machine can take
seconds to get from there to the first tick. So each run starts its clock well before the moment
under test and is stopped by what the simulated clock reads (and, where needed, by what has been
sent), never after a fixed number of wall seconds; the assertions are on the market timestamps
of the slots the beat enqueued. Those come from the beat's own record (its ``schedule_slots_sent``
log events, and ``schedule_entries.total_sent`` in PostgreSQL), not from the Redis queues: the test
Redis DB is shared, and another run's FLUSHDB or worker must not change what this beat is seen
to have sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from beat_schedule import MONITOR_PREFIX
from catalyst.db.models import ScheduleEntry
from catalyst.runtime import build_clock
from catalyst.settings import get_settings
from tests.support import environment, query, seed_position, wait_for, write_replay_csv
from tests.test_e2e_loop import cli

pytestmark = pytest.mark.e2e
NY = ZoneInfo("America/New_York")
HKT = ZoneInfo("Asia/Hong_Kong")
LIVENESS = 120  # wall seconds; only a hung beat comes near this


def checks_and_scans(entry: str) -> bool:
    return entry == "scan-market" or entry.startswith(MONITOR_PREFIX)


def sent_slots(beat) -> list[datetime]:
    """Market slots of every monitor check and scan the beat enqueued, sorted (from its JSON log)."""
    slots = []
    for line in beat.log_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:  # a line still being written
            continue
        if event.get("event") == "schedule_slots_sent":
            slot = datetime.fromisoformat(event["slot"])
            slots += [slot for name in event["entries"] if checks_and_scans(name)]
    return sorted(slots)


class BeatRun(NamedTuple):
    slots: list[datetime]       # what it enqueued for monitor checks and scans, by market time
    total_sent: dict[str, int]  # schedule_entries.total_sent of those entries


def run_beat(tmp_path, pg_url, redis_url, stack, start: datetime, speed: float, until: datetime,
             market: str = "US", done: Callable[[list[datetime]], bool] | None = None) -> BeatRun:
    """Run one beat with one open position on a clock simulated from ``start`` until the clock reads
    ``until`` (and ``done(slots sent so far)`` holds, if given)."""
    csv = write_replay_csv(tmp_path / "FLAT.csv", "FLAT", start.replace(hour=9, minute=30), [50.0] * 10)
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_MARKET_DATA": f"replay:{csv}", "CATALYST_CLOCK": f"sim:{start.isoformat()}@{speed:g}",
           "MONITOR_CHECK_INTERVAL": "60", "CATALYST_SCAN_INTERVAL": "900", "CATALYST_MARKET": market}
    with environment(env):
        cli("db", "upgrade")
        seed_position("FLAT", 50.0, start - timedelta(days=1))
        beat = stack.beat()
        wait_for(lambda: "beat_active" in beat.log_text(), 60, what="beat to become active")
        clock = build_clock(get_settings())  # the beat set the anchor: this reads the same simulated time
        wait_for(lambda: clock.now() >= until and (done is None or done(sent_slots(beat))), LIVENESS, interval=0.05,
                 what=f"the simulated clock to pass {until.isoformat()}" + (" and the expected slots" if done else ""))
        beat.stop()
        totals = query(lambda s: {e.name: e.total_sent for e in s.scalars(select(ScheduleEntry))
                                  if checks_and_scans(e.name)})
        return BeatRun(sent_slots(beat), totals)


@pytest.mark.parametrize("label, start", [
    ("saturday", datetime(2026, 11, 21, 9, 0, tzinfo=NY)),
    ("thanksgiving", datetime(2026, 11, 26, 9, 0, tzinfo=NY)),
    ("good_friday", datetime(2026, 4, 3, 9, 0, tzinfo=NY)),
])
def test_nothing_is_enqueued_when_the_exchange_is_closed_all_day(label, start, tmp_path, pg_url, redis_url, stack):
    # 09:00-17:00 of the closed day at 3600x (about 8 wall seconds): hundreds of slots on a normal day
    run = run_beat(tmp_path, pg_url, redis_url, stack, start, 3600, start.replace(hour=17))
    assert run.slots == []
    # the beat did keep both entries all day (the seeded position is the first in a fresh database)
    # and claimed no slot for either
    assert run.total_sent == {"scan-market": 0, f"{MONITOR_PREFIX}1": 0}


def test_nothing_is_enqueued_after_an_early_close(tmp_path, pg_url, redis_url, stack):
    start = datetime(2026, 11, 27, 12, 40, tzinfo=NY)  # the day after Thanksgiving closes at 13:00
    close = datetime(2026, 11, 27, 13, 0, tzinfo=NY)
    sent = run_beat(tmp_path, pg_url, redis_url, stack, start, 180, close + timedelta(minutes=10)).slots
    assert sent, "the minutes before the early close should still be monitored"
    assert all(s < close for s in sent), [s.astimezone(NY).isoformat() for s in sent if s >= close]


def test_first_slot_after_the_spring_dst_change_is_0930_new_york(tmp_path, pg_url, redis_url, stack):
    start = datetime(2026, 3, 9, 9, 10, tzinfo=NY)  # Monday after clocks went forward on 2026-03-08
    sent = run_beat(tmp_path, pg_url, redis_url, stack, start, 180, start.replace(minute=40)).slots
    assert sent, "slots after the open were expected"
    assert sent[0] == datetime(2026, 3, 9, 13, 30, tzinfo=timezone.utc)


def test_no_checks_during_the_hong_kong_lunch_break(tmp_path, pg_url, redis_url, stack):
    start = datetime(2025, 3, 4, 10, 0, tzinfo=HKT)  # two simulated hours of morning session before 12:00
    lunch_start, lunch_end = datetime(2025, 3, 4, 12, 0, tzinfo=HKT), datetime(2025, 3, 4, 13, 0, tzinfo=HKT)
    sent = run_beat(tmp_path, pg_url, redis_url, stack, start, 900, lunch_end + timedelta(minutes=5), market="HK",
                    done=lambda slots: any(s >= lunch_end for s in slots)).slots
    local = [s.astimezone(HKT).strftime("%H:%M") for s in sent]
    assert any(s < lunch_start for s in sent), f"no check was sent before the lunch break: {local}"
    assert not [s for s in sent if lunch_start <= s < lunch_end], f"checks were sent during the lunch break: {local}"
    assert any(s >= lunch_end for s in sent), f"checks did not resume after the lunch break: {local}"
