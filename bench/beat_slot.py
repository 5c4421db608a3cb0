#!/usr/bin/env python
"""Seconds beat takes to send one slot of N monitor entries, and SQL statements per tick.

An in-process ``CatalystScheduler`` on a manual clock against a fresh PostgreSQL database (cloned like the
tests' ``pg_url``) and a real Redis database (``CATALYST_TEST_REDIS``; flushed before and after, never
another). Logging is configured as in production (JSON lines, to stderr: redirect it). For each N:
the first tick (entries created), the slot tick (N+1 messages), and idle ticks.

    CATALYST_TEST_REDIS=redis://127.0.0.1:6379/11 .venv/bin/python bench/beat_slot.py 1000 5000 10000 2>/dev/null
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from celery import Celery  # noqa: E402
from sqlalchemy import event, insert  # noqa: E402

from catalyst.clock import ManualClock  # noqa: E402
from catalyst.db.engine import get_engine, session_scope  # noqa: E402
from catalyst.db.models import Position  # noqa: E402
from catalyst.logs import configure_logging  # noqa: E402
from catalyst.records import security_id  # noqa: E402
from catalyst.runtime import build_runtime, use_runtime  # noqa: E402
from catalyst.settings import get_settings  # noqa: E402
from tests.support import REDIS_TEST, drop_pg, drop_template, environment, fresh_pg_url  # noqa: E402
from workers.scheduler import CatalystScheduler  # noqa: E402

EST = timezone(timedelta(hours=-5))


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2025, 3, 4, hour, minute, second, tzinfo=EST).astimezone(UTC)


def seed(n: int) -> None:
    opened = at(9, 0) - timedelta(days=1)
    with session_scope() as s:
        sid = security_id(s, "FLAT", "XNYS")
        s.execute(insert(Position), [dict(security_id=sid, symbol="FLAT", qty=10, status="open", entry_price=50.0,
                                          high_watermark=50.0, max_hold_seconds=864000, opened_at=opened,
                                          updated_at=opened) for _ in range(n)])


class Statements:
    """Counts SQL statements the beat's engine executes."""

    def __init__(self):
        self.n = 0
        event.listen(get_engine(), "before_cursor_execute", self._count)

    def _count(self, *args):
        self.n += 1


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - t0, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def run(n: int, redis_url: str) -> dict:
    import celeryconfig

    pg_url = fresh_pg_url()
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": tempfile.mkdtemp(),
           "CATALYST_SCAN_INTERVAL": "900", "MONITOR_CHECK_INTERVAL": "900", "CATALYST_BEAT_LEASE_SECONDS": "20"}
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        with environment(env):
            configure_logging("INFO", service="beat-bench", persist=False)
            clock = ManualClock(at(10, 14))
            use_runtime(build_runtime(get_settings(), clock))
            seed(n)
            app = Celery("beat-bench", set_as_current=False)
            app.config_from_object(celeryconfig)
            app.conf.update(broker_url=redis_url, broker_transport=None)
            beat = CatalystScheduler(app=app)
            stmts = Statements()
            try:
                first = timed(beat.tick)
                clock.set(at(10, 14, 30))
                stmts.n = 0
                idle = timed(beat.tick)
                idle_statements = stmts.n
                clock.set(at(10, 15))
                stmts.n = 0
                slot = timed(beat.tick)
                slot_statements = stmts.n
                sent = client.llen("monitor")
                idle_after = []
                for second in (1, 2, 3, 4, 5):  # right after the slot: the rows it claimed are recent
                    clock.set(at(10, 15, second))
                    idle_after.append(timed(beat.tick))
            finally:
                beat.close()
                app.close()
        return {"n": n, "first_tick_s": first[0], "slot_s": slot[0], "slot_cpu_s": slot[1], "sent": sent,
                "slot_statements": slot_statements, "idle_s": idle[0], "idle_cpu_s": idle[1],
                "idle_statements": idle_statements,
                "idle_after_slot_cpu_s": max(c for _, c in idle_after)}
    finally:
        client.flushdb()
        drop_pg(pg_url)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 5000, 10000]
    redis_url = os.environ.get("CATALYST_TEST_REDIS", REDIS_TEST)
    try:
        for n in sizes:
            r = run(n, redis_url)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
    finally:
        drop_template()


if __name__ == "__main__":
    main()
