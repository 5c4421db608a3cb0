"""`catalyst demo`: one whole simulated session, open to close, with a real worker and beat.

Runs on the embedded default (SQLite + kombu's SQLAlchemy transport under var/demo): no
servers, no keys. Simulated time is shared by every process through the clock anchor, so
the worker, the beat and this progress display all agree on the minute. Alerts go to a webhook
receiver the demo runs on 127.0.0.1, so the summary can list what was delivered.

``--scenario crash`` lays a market-wide crash over the synthetic market (a slide from 11:00, a
flash crash at 12:00) with a daily loss limit the slide warns on and the crash breaks: the risk
monitor reduces, then stops everything; the summary shows the halted state, a resume refused
without ``--confirm`` and accepted with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from catalyst.db.engine import dispose_all, session_scope, upgrade
from catalyst.db.models import Decision, Notification, Position, PositionMonitorStatus, ServiceHealth, TradingCycle
from catalyst.core.domain import BadInput
from catalyst.processes import spawn_beat, spawn_worker
from catalyst.reports import entries_table, funnel_table, notifications_table, table, trades_table
from catalyst.runtime import get_runtime, reset_clock_anchor, reset_runtime
from catalyst.core.sessions import SessionCalendar

WALL_BUDGET = 150.0  # seconds of wall time for the session itself; start-up and summary fit in 3 minutes
LEAD_IN = timedelta(minutes=35)  # from 08:55: the pre-market scan at 09:00 is part of the show
TAIL = timedelta(minutes=8)  # to 16:08: the daily summary goes out at 16:05
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
    # The synthetic market repeats its script every day, so today's volume is always about a usual
    # day's: the relative-volume filter would pass symbols by chance. Gaps of a few % down may reclaim.
    "CATALYST_SCAN_MIN_RELATIVE_VOLUME": "0",
    "CATALYST_SCAN_MIN_GAP_PCT": "-5",
}
# The crash: an operator with 8 % stops who lets winners run (no RSI exits). Three positions of up to
# 5,000 USD risk about 1,200 to their stops, inside the 1,300 daily loss limit. The 11:00 slide stops
# one of them out and drags the others past the 75 % warning; the 12:00 flash crash jumps every stop
# and breaks the limit.
SCENARIOS = {
    "normal": {},
    "crash": {"CATALYST_MARKET_DATA": "synthetic:crash", "CATALYST_MAX_DAILY_LOSS_USD": "1300",
              "CATALYST_MAX_POSITIONS": "3", "CATALYST_STOP_LOSS_PCT": "0.08", "CATALYST_TAKE_PROFIT_PCT": "0.2",
              "CATALYST_MAX_HOLD_HOURS": "6",
              "CATALYST_SIGNALS": '{"stop_loss_strong": -8, "stop_loss_moderate": -6, "stop_loss_weak": -3, '
                                  '"rsi_strong": null, "rsi_moderate": null}'},
}
UNSET = ("DATABASE_URL", "REDIS_URL", "CATALYST_CONFIG", "CATALYST_CLOCK", "CATALYST_TEST_PAUSE",
         "CATALYST_WEBHOOK_URL", "SMTP_HOST", "ALERT_EMAIL_TO")


class _Receiver(BaseHTTPRequestHandler):
    """The demo's webhook: takes each alert's JSON and answers 200, like a chat service would."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.received.append(json.loads(body))
        except ValueError:
            self.received.append({"text": body[:200].decode(errors="replace")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet: the summary lists what arrived
        pass


def _start_receiver() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, name="demo-webhook", daemon=True).start()
    return server


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


def run_demo(speed: float | None = None, day: str | None = None, scenario: str = "normal") -> int:
    if scenario not in SCENARIOS:
        raise BadInput(f"--scenario {scenario!r} is not one of {', '.join(SCENARIOS)}")
    root = Path.cwd()
    var_dir = root / "var" / "demo"
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    for name in UNSET:
        os.environ.pop(name, None)
    receiver = _start_receiver()
    os.environ.update(DEMO_ENV, **SCENARIOS[scenario], CATALYST_VAR_DIR=str(var_dir),
                      CATALYST_WEBHOOK_URL=f"http://127.0.0.1:{receiver.server_port}/catalyst-demo")
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
          f"{'synthetic market with a crash' if scenario == 'crash' else 'synthetic market'}, paper broker, "
          f"embedded SQLite broker under {var_dir.relative_to(root)}")
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
    report_line = _write_report(rt, session, root)
    print(f"{len(_Receiver.received)} alerts reached the demo's webhook receiver on 127.0.0.1:{receiver.server_port}")
    receiver.shutdown()
    if scenario == "crash":
        _show_resume(root)
    print(f"(the demo database stays in {var_dir.relative_to(root)} until the next run; logs in "
          f"{logs.relative_to(root)}; look around with CATALYST_VAR_DIR={var_dir.relative_to(root)} "
          f"catalyst positions --all)")
    print(report_line)
    return code


def _write_report(rt, session, root: Path) -> str:
    """The session's report in var/reports/<date>/ (charts and all): the line the demo ends with."""
    from catalyst.cli_report import REPORTS_DIR, write_report

    try:
        _, index = write_report(rt, session.day, root / REPORTS_DIR / session.day.isoformat())
    except Exception as exc:  # noqa: BLE001 - the session ran; a report that cannot be drawn is said, not raised
        return f"report: not written ({type(exc).__name__}: {exc})"
    shown = index.relative_to(root) if index.is_relative_to(root) else index
    return f"report: {shown}"


def _show_resume(root: Path) -> None:
    """What an operator sees after an emergency stop: the halted state, and resume only on command."""
    for args in (["status"], ["resume"], ["resume", "--confirm"]):
        done = subprocess.run([sys.executable, "-m", "catalyst.cli", *args], capture_output=True, text=True,
                              cwd=root, timeout=120)
        shown = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                           if line.strip() and not line.startswith("{"))  # the CLI's JSON log lines are for machines
        if args == ["status"]:
            shown = "\n".join(line for line in shown.splitlines() if line.startswith(("trading", "  ", "today")))
        print(f"\n$ catalyst {' '.join(args)}   (exit code {done.returncode})\n{shown}")


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
            checks = s.scalar(select(func.coalesce(func.sum(PositionMonitorStatus.checks), 0)))
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
        cycles = s.scalars(select(TradingCycle).order_by(TradingCycle.slot_at)).all()
        entries = s.scalars(select(Decision).where(Decision.kind == "evaluate", Decision.action == "enter")
                            .order_by(Decision.decided_at, Decision.id)).all()
        notes = s.scalars(select(Notification).order_by(Notification.occurred_at, Notification.id)).all()
        guard = s.scalars(select(Decision).where(Decision.kind == "risk").order_by(Decision.decided_at)).all()
        refused = s.execute(select(Decision.reason, func.count()).where(
            Decision.kind == "evaluate", Decision.action == "skip",
            Decision.reason.in_(("trading_reducing", "trading_halted"))).group_by(Decision.reason)).all()
    entered = {}
    for p in positions:
        if p.cycle_id is not None:
            entered[p.cycle_id] = entered.get(p.cycle_id, 0) + 1
    print("\nFunnel: symbols left after each stage of each scan (scan_results keeps every number)\n"
          + (funnel_table(cycles, entered, tz) if cycles else "no scans"))
    print("\nEntries the rules decided (sized by the rules, capped by the maximum position value)\n"
          + (entries_table(entries, tz) if entries else "no entries"))
    if guard or refused:
        rows = [[d.decided_at.astimezone(tz).strftime("%H:%M"), d.action, (d.details or {}).get("state"), d.reason]
                for d in guard]
        closed = [p for p in positions if p.status == "closed"]
        reasons = ", ".join(f"{r} {sum(p.exit_reason == r for p in closed)}" for r in sorted({p.exit_reason for p in closed}))
        print("\nDaily-loss guard\n" + table(["time", "change", "state", "why"], rows)
              + "".join(f"\n{n} candidates refused: {reason}" for reason, n in refused)
              + f"\n{len(closed)} of {len(positions)} positions closed, each exactly once ({reasons}); "
                f"{sum(p.status != 'closed' for p in positions)} still open")
    text, totals = trades_table(positions, tz)
    print("\nTrades\n" + (text if positions else "no trades"))
    print(f"\nTotals: {totals['trades']} trades, {totals['closed']} closed ({totals['wins']} winners), "
          f"{totals['open']} still open; realized P&L {totals['realized_pnl']:+,.2f}, "
          f"unrealized {totals['unrealized_pnl']:+,.2f}")
    print("\nServices\n" + table(["service", "status", "checks", "exits", "errors"],
                                 [[h.service_name, h.status, h.checks, h.exits_executed, h.errors] for h in health],
                                 "llrrr"))
    print("\nNotifications\n" + (notifications_table(notes, tz) if notes else "none"))
    print(f"\nwall time {wall:.1f}s")
