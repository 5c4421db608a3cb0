"""`catalyst demo`: one whole simulated session, open to close, with a real worker and beat.

Runs on the embedded default (SQLite + kombu's SQLAlchemy transport under var/demo): no
servers, no keys. Simulated time is shared by every process through the clock anchor, so
the worker, the beat and this progress display all agree on the minute.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from catalyst.db.engine import dispose_all, session_scope, upgrade
from catalyst.db.models import Decision, Position, ServiceHealth
from catalyst.core.domain import BadInput
from catalyst.processes import spawn_beat, spawn_worker
from catalyst.reports import table, trades_table
from catalyst.runtime import get_runtime, reset_clock_anchor, reset_runtime
from catalyst.core.sessions import SessionCalendar

WALL_BUDGET = 150.0  # seconds of wall time for the session itself; start-up and summary fit in 3 minutes
LEAD_IN = timedelta(minutes=3)
TAIL = timedelta(minutes=3)
DEMO_ENV = {
    "CATALYST_MARKET_DATA": "synthetic",
    "CATALYST_BROKER": "paper",
    "CATALYST_MARKET": "US",
    "MONITOR_CHECK_INTERVAL": "60",
    "MONITOR_DRY_RUN": "false",
    "CATALYST_SCAN_INTERVAL": "1800",
    "CATALYST_MAX_HOLD_HOURS": "2",
    "CATALYST_MAX_POSITIONS": "5",
    "CATALYST_POSITION_SIZE_USD": "5000",
}
UNSET = ("DATABASE_URL", "REDIS_URL", "CATALYST_CONFIG", "CATALYST_CLOCK", "CATALYST_TEST_PAUSE")


def pick_session(cal: SessionCalendar, day: str | None):
    if day:
        try:
            wanted = date.fromisoformat(day)
        except ValueError:
            raise BadInput(f"--date {day!r} is not YYYY-MM-DD") from None
        session = cal.session_on(wanted)
        if session is None:
            raise BadInput(f"{wanted} is not a trading session on {cal.code} (weekend or holiday)")
        return session
    probe = datetime.now(UTC) - timedelta(days=1)
    while True:  # the latest full-length session before today
        session = cal.session_at(probe) or cal.next_session(probe - timedelta(days=1))
        if session.close <= datetime.now(UTC) and session.close - session.open >= timedelta(hours=6):
            return session
        probe -= timedelta(days=1)


def run_demo(speed: float | None = None, day: str | None = None) -> int:
    root = Path.cwd()
    var_dir = root / "var" / "demo"
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    for name in UNSET:
        os.environ.pop(name, None)
    os.environ.update(DEMO_ENV, CATALYST_VAR_DIR=str(var_dir))
    cal = SessionCalendar.for_market("US")
    session = pick_session(cal, day)
    span = (session.close - session.open + LEAD_IN + TAIL).total_seconds()
    speed = speed or round(span / WALL_BUDGET, 1)
    start = session.open - LEAD_IN
    os.environ["CATALYST_CLOCK"] = f"sim:{start.isoformat()}@{speed:g}"
    reset_runtime()
    dispose_all()
    from catalyst.settings import get_settings

    settings = get_settings()
    upgrade(settings.sqlalchemy_url)
    reset_clock_anchor(settings)
    rt = get_runtime()
    tz = cal.tz
    print(f"Catalyst demo: {session.day:%A %Y-%m-%d} on XNYS, simulated at {speed:g}x "
          f"({session.open.astimezone(tz):%H:%M}-{session.close.astimezone(tz):%H:%M} New York), "
          f"synthetic market, paper broker, embedded SQLite broker under {var_dir.relative_to(root)}")
    logs = var_dir / "logs"
    procs = [spawn_worker({}, logs, name="worker", pool="threads", concurrency=4), spawn_beat({}, logs)]
    wall_start = time.monotonic()
    code = 0
    try:
        code = _watch(rt, session, procs, tz, wall_start)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping worker and beat", file=sys.stderr)
        code = 130
    finally:
        for p in reversed(procs):
            p.stop()
    _summary(rt, tz, time.monotonic() - wall_start)
    print(f"(the demo database stays in {var_dir.relative_to(root)} until the next run; logs in "
          f"{logs.relative_to(root)}; look around with CATALYST_VAR_DIR={var_dir.relative_to(root)} "
          f"catalyst positions --all)")
    return code


def _watch(rt, session, procs, tz, wall_start) -> int:
    tty = sys.stdout.isatty()
    last_printed = None
    end = session.close + TAIL
    while True:
        now = rt.clock.now()
        for p in procs:
            if not p.alive():
                print(f"\n{p.name} exited with code {p.popen.returncode}; last log lines:\n" +
                      "\n".join(p.log_text().splitlines()[-20:]), file=sys.stderr)
                return 1
        with session_scope() as s:
            open_n = s.scalar(select(func.count()).select_from(Position).where(Position.status != "closed"))
            closed = s.scalars(select(Position).where(Position.status == "closed")).all()
            checks = s.scalar(select(func.count()).select_from(Decision).where(Decision.kind == "monitor"))
        pnl = sum(p.realized_pnl or 0 for p in closed)
        line = (f"{now.astimezone(tz):%H:%M} New York | open positions {open_n} | exits {len(closed)} | "
                f"monitor checks {checks} | realized P&L {pnl:+,.2f} | wall {time.monotonic() - wall_start:5.1f}s")
        if tty:
            print("\r" + line, end="", flush=True)
        elif last_printed is None or now - last_printed >= timedelta(minutes=30):
            print(line, flush=True)
            last_printed = now
        if now >= end:
            print("\r" + line if tty else line)
            return 0
        time.sleep(0.5)


def _summary(rt, tz, wall: float) -> None:
    with session_scope() as s:
        positions = s.scalars(select(Position).order_by(Position.id)).all()
        health = s.scalars(select(ServiceHealth).order_by(ServiceHealth.service_name)).all()
    text, totals = trades_table(positions, tz)
    print("\nTrades\n" + (text if positions else "no trades"))
    print(f"\nTotals: {totals['trades']} trades, {totals['closed']} closed ({totals['wins']} winners), "
          f"{totals['open']} still open; realized P&L {totals['realized_pnl']:+,.2f}, "
          f"unrealized {totals['unrealized_pnl']:+,.2f}")
    print("\nServices\n" + table(["service", "status", "checks", "exits", "errors"],
                                 [[h.service_name, h.status, h.checks, h.exits_executed, h.errors] for h in health],
                                 "llrrr"))
    print(f"\nwall time {wall:.1f}s")
