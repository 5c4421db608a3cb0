"""The `catalyst` command: operate Catalyst from a shell. Every listing takes --json."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click
from sqlalchemy import select

from catalyst.db.engine import NotMigrated, ensure_migrated, session_scope, upgrade
from catalyst.db.models import Position, PositionMonitorStatus, ScheduleEntry, ServiceHealth
from catalyst.core.domain import CatalystError
from catalyst.reports import position_dict, table
from catalyst.settings import get_settings


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


def _ready():
    """Settings valid and database migrated, or a clear error."""
    try:
        settings = get_settings()
        ensure_migrated(settings.sqlalchemy_url)
        return settings
    except (CatalystError, NotMigrated) as exc:
        _fail(exc)


def _runtime():
    _ready()
    from catalyst.runtime import get_runtime

    try:
        return get_runtime()
    except CatalystError as exc:
        _fail(exc)


def _emit(data, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def database_problem(exc: Exception, url: str | None) -> str:
    """One line an operator can act on for a database that cannot be used; never the URL's password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. postgresql://user:password@host:5432/catalyst"
    if isinstance(exc, NoSuchModuleError):
        return (f"DATABASE_URL names a database kind Catalyst cannot use ({make_url(url).drivername}); "
                f"use PostgreSQL, {example}")
    if isinstance(exc, ArgumentError) or url is None:  # not parseable: echo nothing of it (it may hold a password)
        return f"DATABASE_URL is not a database URL ({example})"
    parsed = make_url(url)
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    for secret in {parsed.password, url.partition("://")[2].rpartition("@")[0].partition(":")[2]} - {None, ""}:
        reason = reason.replace(str(secret), "***")
    return (f"cannot use the database at {parsed.render_as_string(hide_password=True)}: {reason} "
            "(check DATABASE_URL and that the server is running)")


class _CatalystGroup(click.Group):
    """Every command: a database that cannot be reached or a malformed DATABASE_URL is one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

        try:
            return super().invoke(ctx)
        except (ArgumentError, InterfaceError, OperationalError) as exc:
            try:
                url = get_settings().sqlalchemy_url
            except CatalystError:
                url = None
            raise click.ClickException(database_problem(exc, url)) from None


@click.group(cls=_CatalystGroup)
def main() -> None:
    """Catalyst: event-driven trading automation (paper trading unless told otherwise)."""
    from catalyst.logs import configure_logging

    import os

    try:  # the CLI speaks in tables; its logs stay quiet unless LOG_LEVEL asks for more
        configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
        get_settings()
    except CatalystError as exc:
        _fail(exc)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every Alembic migration (safe to run on every release)."""
    try:
        settings = get_settings()
        head = upgrade(settings.sqlalchemy_url)
    except CatalystError as exc:
        _fail(exc)
    click.echo(f"database at revision {head}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Clock, session, next scan, trading state, today's P&L, services (heartbeats), positions and schedule."""
    from catalyst.guard import status_view

    rt = _runtime()
    now = rt.clock.now()
    wall = datetime.now(UTC)
    tz = rt.calendar.tz
    with session_scope() as s:
        services = s.scalars(select(ServiceHealth).order_by(ServiceHealth.service_name)).all()
        entries = s.scalars(select(ScheduleEntry).order_by(ScheduleEntry.name)).all()
        held = s.scalars(select(Position).where(Position.status != "closed").order_by(Position.id)).all()
        refused = [p for p in held if p.status == "closing" and p.exit_blocked_until is not None]
    trading = status_view(rt)
    session = rt.calendar.next_session(now)
    scan = _next_scan(rt, now)
    interval = rt.settings.heartbeat_interval
    data = {
        "clock": now.isoformat(), "clock_spec": rt.settings.clock, "market": rt.settings.market,
        "timezone": str(tz), "market_open": rt.calendar.is_open(now), "next_or_current_session": {
            "open": session.open.astimezone(tz).isoformat(), "close": session.close.astimezone(tz).isoformat()},
        "next_scan": scan,
        "halted": trading["state"] == "HALTED", "trading": trading, "open_positions": len(held),
        "positions": [position_dict(p) for p in held],
        "exits_refused": [{"position_id": p.id, "symbol": p.symbol, "reason": p.exit_blocked_reason,
                           "retry_at": p.exit_blocked_until.isoformat()} for p in refused],
        "broker": rt.settings.broker, "market_data": rt.market_data.name,
        "heartbeat_interval_seconds": interval, "stale_after_seconds": _stale_seconds(interval),
        "services": [_service(h, wall, interval) for h in services],
        "schedule": [_schedule_entry(e, now, tz) for e in entries],
    }
    _emit(data, as_json, _status_text(data, rt, now, session, entries))


def _status_text(data: dict, rt, now: datetime, session, entries) -> str:
    """The operator's page: every time in the market's time zone, named."""
    tz = rt.calendar.tz
    scan = data["next_scan"]
    services = data["services"]
    lines = [
        f"clock     {now.astimezone(tz):%Y-%m-%d %H:%M:%S %Z} ({rt.settings.clock})",
        f"market    {rt.settings.market} {'OPEN' if data['market_open'] else 'closed'}; "
        f"session {session.open.astimezone(tz):%Y-%m-%d %H:%M}-{session.close.astimezone(tz):%H:%M %Z}",
        f"next scan {_market_time(datetime.fromisoformat(scan['at']), tz)} ({_until(scan['in_seconds'])}; "
        f"{scan['entry']})" if scan else "next scan none in the exchange calendar",
        f"trading   {_trading_line(data['trading'])}",
        f"today     {_pnl_line(data['trading']['daily_pnl'])}",
        f"broker    {rt.settings.broker}; data {rt.market_data.name}; open positions {data['open_positions']}",
        *[f"EXIT REFUSED  position {r['position_id']} {r['symbol']}: {r['reason']} (stop in place; retry "
          f"{r['retry_at']})" for r in data["exits_refused"]],
        "",
        table(["service", "kind", "status", "heartbeat age s", "checks", "exits", "errors"],
              [[s["name"], s["kind"], f"STALE (last said {s['reported_status']})" if s["stale"] else s["status"],
                s["age_seconds"], s["checks"], s["exits_executed"], s["errors"]] for s in services],
              "lllrrrr") if services else "services  none has ever reported (no worker or beat started?)",
        f"(stale: no heartbeat for {data['stale_after_seconds']:g} s, 3 intervals: crashed, killed, hung or cut off; "
        "offline: stopped and said so)",
        "",
        table(["position", "symbol", "qty", "status", "entry", "last", "unrealized P&L", "opened"],
              [[p["id"], p["symbol"], p["qty"], p["status"], p["entry_price"], p["last_price"], p["unrealized_pnl"],
                _market_time(datetime.fromisoformat(p["opened_at"]), tz)] for p in data["positions"]],
              "rlrlrrrl") if data["positions"] else "positions none open",
        "",
        table(["schedule entry", "task", "next run", "sent"],
              [[e.name, e.task, e.next_run_at and _market_time(e.next_run_at, tz)
                + (" (overdue: is beat running?)" if e.next_run_at < now else ""), e.total_sent] for e in entries],
              "lllr") if entries else "schedule  empty (beat has not run yet)",
    ]
    return "\n".join(lines)


def _next_scan(rt, now: datetime) -> dict | None:
    """The next time beat sends ``catalyst.scan_market``, from the exchange calendar and the schedule beat
    itself derives (the pre-market scan and the in-session grid), so it is right even while beat is down.
    Aware, in the market's time zone; ``None`` past the calendar's end."""
    import beat_schedule
    from datetime import timedelta

    cal, found = rt.calendar, []
    for e in beat_schedule.static_entries(rt.settings):
        if e.task != "catalyst.scan_market":
            continue
        try:
            if e.anchor == "session":
                found.append((cal.next_slot(now, timedelta(seconds=e.interval_seconds)), e.name))
            else:
                found.append((cal.next_anchored(now, e.anchor, timedelta(seconds=e.offset_seconds)), e.name))
        except CatalystError:  # beyond the calendar's last session
            continue
    if not found:
        return None
    at, entry = min(found)
    return {"at": at.astimezone(cal.tz).isoformat(), "timezone": str(cal.tz), "entry": entry,
            "in_seconds": round((at - now).total_seconds(), 1)}


def _schedule_entry(e: ScheduleEntry, now: datetime, tz) -> dict:
    """A row of ``schedule_entries`` in market time; ``overdue``: its slot passed and beat has not sent it."""
    return {"name": e.name, "task": e.task, "next_run_at": e.next_run_at and e.next_run_at.astimezone(tz).isoformat(),
            "overdue": bool(e.next_run_at and e.next_run_at < now),
            "last_slot_at": e.last_slot_at and e.last_slot_at.astimezone(tz).isoformat(), "sent": e.total_sent}


def _market_time(when: datetime, tz) -> str:
    return f"{when.astimezone(tz):%Y-%m-%d %H:%M %Z}"


def _until(seconds: float) -> str:
    """``in 2 h 10 min``: the two largest units, never a bare number an operator must convert."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"in {seconds} s"
    days, rest = divmod(seconds // 60, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
    return "in " + " ".join(parts[:2])


def _stale_seconds(interval: float) -> float:
    from catalyst.alerts import stale_after

    return stale_after(interval).total_seconds()


def _service(h: ServiceHealth, wall: datetime, interval: float) -> dict:
    verdict = _liveness(h, wall, interval)
    return {"name": h.service_name, "kind": h.kind, "status": verdict, "reported_status": h.status,
            "stale": verdict == "stale", "hostname": h.hostname, "pid": h.pid,
            "started_at": h.started_at.isoformat(), "last_heartbeat": h.last_heartbeat.isoformat(),
            "age_seconds": round((wall - h.last_heartbeat).total_seconds(), 1),
            "checks": h.checks, "positions_checked": h.positions_checked,
            "exits_executed": h.exits_executed, "advisor_calls": h.advisor_calls, "errors": h.errors}


def _trading_line(t: dict) -> str:
    if t["state"] == "ACTIVE":
        return "ACTIVE: entries allowed" + (
            f" (resumed by {t['resumed_by']} at {t['resumed_at']})" if t.get("resumed_by") else "")
    closing = "; closing every position" if t["closing_positions"] else ""
    return f"{t['state']}: {t['reason']} (by {t['by']} at {t['at']}){closing}"


def _pnl_line(p: dict) -> str:
    used = p["used_pct"] or 0.0  # never "-0%"
    return (f"P&L {p['total']:+,.2f} (realized {p['realized']:+,.2f}, unrealized {p['unrealized']:+,.2f}) "
            f"= {used:.0f}% of the {p['limit']:,.2f} daily loss limit (warning at {p['warning_at']:,.2f})")


def _liveness(h: ServiceHealth, wall: datetime, interval: float) -> str:
    """A service that claims to run but has stopped beating is called out, not trusted (one definition of
    stale, shared with the alert watch and retention: :func:`catalyst.alerts.liveness`)."""
    from catalyst.alerts import liveness

    return liveness(h.status, h.last_heartbeat, wall, interval)


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include closed positions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def positions(show_all: bool, as_json: bool) -> None:
    """Open positions with why each is held (and closed ones with --all)."""
    _ready()
    with session_scope() as s:
        query = select(Position).order_by(Position.id)
        if not show_all:
            query = query.where(Position.status != "closed")
        found = s.scalars(query).all()
        status = {m.position_id: m for m in s.scalars(select(PositionMonitorStatus).where(
            PositionMonitorStatus.position_id.in_([p.id for p in found])))}
        rows = [{**position_dict(p), "monitor": _monitor_dict(status.get(p.id))} for p in found]

    def why(r) -> str:
        if r["status"] == "closed":
            return r["exit_reason"] or "-"
        if r["status"] == "closing" and r["exit_blocked_until"]:
            return f"EXIT REFUSED by the broker: {r['exit_blocked_reason']}; stop in place, retry {r['exit_blocked_until']}"
        m = r["monitor"]
        if not m:
            return "not checked yet"
        sigs = ", ".join(f"{s['name']} {s['strength'].lower()}" for s in m["active_signals"]) or "no signals"
        return f"{m['last_decision']} ({sigs})"

    text = table(["id", "symbol", "qty", "status", "entry", "last", "stop", "target", "exit", "P&L", "why"],
                 [[r["id"], r["symbol"], r["qty"], r["status"], r["entry_price"], r["last_price"],
                   r["stop_loss_price"], r["take_profit_price"], r["exit_price"],
                   r["realized_pnl"] if r["status"] == "closed" else r["unrealized_pnl"], why(r)] for r in rows],
                 "rlrlrrrrrrl") if rows else "no positions"
    _emit(rows, as_json, text)


def _monitor_dict(m: PositionMonitorStatus | None) -> dict | None:
    if m is None:
        return None
    return {"last_check_at": m.last_check_at.isoformat(), "price": m.price, "pnl_pct": m.pnl_pct,
            "high_watermark": m.high_watermark, "active_signals": m.active_signals,
            "last_decision": m.last_decision, "checks": m.checks}


@main.command("open")
@click.argument("symbol")
@click.option("--qty", type=float, required=True, help="Shares to buy (above zero).")
@click.option("--stop", type=float, default=None, help="Stop-loss price (default: entry - stop_loss_pct).")
@click.option("--target", type=float, default=None, help="Take-profit price (default: entry + take_profit_pct).")
@click.option("--json", "as_json", is_flag=True)
def open_cmd(symbol: str, qty: float, stop: float | None, target: float | None, as_json: bool) -> None:
    """Open a position by hand, through the same enter_position task the scanner uses."""
    if qty <= 0:
        raise click.BadParameter(f"must be above zero, got {qty:g}", param_hint="--qty")
    _runtime()
    import uuid

    from tasks.trading import enter_position

    result = enter_position.apply(kwargs={"symbol": symbol, "qty": qty, "stop": stop, "target": target,
                                          "client_order_id": f"manual-{uuid.uuid4().hex[:24]}"})
    if result.failed():
        _fail(result.result)
    with session_scope() as s:
        data = position_dict(s.get(Position, result.result))
    _emit(data, as_json, f"opened position {data['id']}: {data['qty']:g} {data['symbol']} @ "
                         f"{data['entry_price']:.2f} (stop {data['stop_loss_price']}, target {data['take_profit_price']})")


class _RowId(click.ParamType):
    """A row id as the tasks take it (ASCII digits within PostgreSQL's integer), refused by click otherwise."""

    name = "id"

    def convert(self, value, param, ctx):
        from catalyst import task_args

        try:
            return task_args.row_id(value, param.human_readable_name if param else "id")
        except CatalystError as exc:
            self.fail(str(exc), param, ctx)


OPERATOR_REASON_LENGTH = 500


@main.command("close")
@click.argument("position_id", type=_RowId(), required=False)
@click.option("--all", "close_all", is_flag=True, help="Close every open position (needs --reason).")
@click.option("--reason", default=None, help="Why, in your words (recorded with who and when; required with --all).")
@click.option("--json", "as_json", is_flag=True)
def close_cmd(position_id: int | None, close_all: bool, reason: str | None, as_json: bool) -> None:
    """Close a position now, or every open one with --all (exit reason: manual), exactly once."""
    if (position_id is None) == (not close_all):
        raise click.UsageError("give a position ID or --all (not both)")
    note = _operator_note(reason, required=close_all)
    rt = _runtime()
    if close_all:
        _close_all(rt, note, as_json)
        return
    from catalyst.positions import request_exit
    from tasks.monitoring import exit_position

    with session_scope() as s:
        position = s.get(Position, position_id)
        if position is None:
            _fail(CatalystError(f"unknown position id {position_id}"))
        if position.status == "closed":
            _fail(CatalystError(f"position {position_id} is already closed ({position.exit_reason})"))
        symbol = position.symbol
    if request_exit(rt, position_id, "manual") and note:
        _record_close(rt, position_id, symbol, note, "close")
    result = exit_position.apply(args=[position_id])
    if result.failed():
        _fail(result.result)
    with session_scope() as s:
        data = position_dict(s.get(Position, position_id))
    _emit(data, as_json, f"position {position_id} {data['status']}: exit {data['exit_price']} "
                         f"({data['exit_reason']}), P&L {data['realized_pnl']}")


def _operator_note(reason: str | None, required: bool) -> str | None:
    note = (reason or "").strip()
    if required and not note:
        raise click.UsageError("--all needs --reason TEXT: say why every position is closed; nothing was changed")
    if len(note) > OPERATOR_REASON_LENGTH:
        raise click.BadParameter(f"at most {OPERATOR_REASON_LENGTH} characters, got {len(note)}",
                                 param_hint="--reason")
    return note or None


def _record_close(rt, position_id: int, symbol: str, note: str, command: str) -> None:
    """Who closed it by hand and why, in their words, beside the exit request (exit reason stays ``manual``)."""
    from catalyst.guard import operator
    from catalyst.records import record_activity, record_decision

    by, now = operator(), rt.clock.now()
    with session_scope() as s:
        record_decision(s, kind="operator", action="close", reason="manual", symbol=symbol, position_id=position_id,
                        decided_at=now, worker=by[:128], details={"by": by, "note": note, "command": command})
        record_activity(s, "operator_close", now, position_id=position_id, symbol=symbol, by=by, note=note,
                        command=command)


def _close_all(rt, note: str, as_json: bool) -> None:
    """Every open position: ``open → closing`` (one winner each), then each exit runs here through the exit task."""
    from catalyst.guard import operator
    from catalyst.positions import request_exit
    from tasks.monitoring import exit_position

    with session_scope() as s:
        found = s.execute(select(Position.id, Position.symbol, Position.status)
                          .where(Position.status != "closed").order_by(Position.id)).all()
    requested, already = [], []
    for pid, symbol, status in found:
        if status == "open" and request_exit(rt, pid, "manual"):
            _record_close(rt, pid, symbol, note, "close --all")
            requested.append(pid)
        else:
            already.append(pid)
    failed = {}
    for pid in requested:
        result = exit_position.apply(args=[pid])
        if result.failed():
            failed[pid] = str(result.result)
    with session_scope() as s:
        touched = {p.id: position_dict(p) for p in s.scalars(
            select(Position).where(Position.id.in_(requested + already)).order_by(Position.id))}
    by = operator()
    data = {"by": by, "reason": note, "exit_reason": "manual", "requested": requested, "already_closing": already,
            "closed": [pid for pid in requested if touched[pid]["status"] == "closed"], "failed": failed,
            "positions": [touched[pid] for pid in requested + already]}
    lines = [f"closing every open position (manual) by {by}: {note}"] if found else []
    for pid in requested:
        p = touched[pid]
        lines.append(f"  position {pid} {p['symbol']}: " + (
            f"closed at {p['exit_price']:.2f}, P&L {p['realized_pnl']:.2f}" if p["status"] == "closed"
            else f"{p['status']} (its exit is retried until it fills)" + (f": {failed[pid]}" if pid in failed else "")))
    if already:
        lines.append("already closing (left to their exit): " + ", ".join(map(str, already)))
    lines.append(f"positions closed: {len(data['closed'])} of {len(requested)}" if requested
                 else "no open positions: nothing to close")
    _emit(data, as_json, "\n".join(lines))
    if failed:
        raise click.ClickException(f"{len(failed)} exit(s) not completed yet: " + ", ".join(map(str, failed)))


@main.command()
@click.option("-c", "--command", default=None, help="Run this Python code with the shell's names, then exit.")
@click.option("--plain", is_flag=True, help="The standard Python prompt even when IPython is installed.")
def shell(command: str | None, plain: bool) -> None:
    """A Python prompt with app, session_scope, rt (the runtime), every task and the models loaded."""
    _runtime()
    from catalyst.shell import run

    sys.exit(run(command=command, plain=plain))


@main.command()
@click.option("--reason", required=True, help="Why trading is halted (recorded with who and when).")
@click.option("--keep-positions", is_flag=True,
              help="Only halt entries (and cancel open entry orders); open positions stay monitored.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def halt(reason: str, keep_positions: bool, as_json: bool) -> None:
    """Emergency stop: halt entries, cancel open entry orders and close every position (emergency_stop)."""
    if not reason.strip():
        raise click.BadParameter("say why trading is halted", param_hint="--reason")
    rt = _runtime()
    from catalyst.guard import halt as halt_trading, operator

    by = operator()
    report = halt_trading(rt, reason=reason.strip(), by=by, close_positions=not keep_positions,
                          dispatch=_exit_in_process)
    with session_scope() as s:
        touched = {p.id: position_dict(p) for p in s.scalars(select(Position).where(
            Position.id.in_(report.closing + report.already_closing)).order_by(Position.id))}
    data = {"state": "HALTED", "by": by, "reason": reason.strip(), "close_positions": not keep_positions,
            **report.as_dict(), "positions": list(touched.values())}
    lines = [f"trading HALTED by {by}: {reason.strip()}",
             f"entry orders cancelled: {len(report.cancelled)}" + (f" ({', '.join(report.cancelled)})"
                                                                   if report.cancelled else "")]
    if report.filled_first:
        lines.append(f"entries that filled before their cancel (now positions, closed): {', '.join(report.filled_first)}")
    if report.unresolved:
        lines.append("entries still in flight or not settled at the broker (not cancelled yet; the risk monitor "
                     f"looks again every minute): {', '.join(report.unresolved)}")
    if keep_positions:
        lines.append("positions kept (still monitored): " + (", ".join(
            f"{p['id']} {p['symbol']}" for p in touched.values()) or "none"))
    else:
        lines.append(f"positions closing (emergency_stop): {len(report.closing)}")
        lines += [f"  position {pid} {touched[pid]['symbol']}: {touched[pid]['status']}"
                  + (f" at {touched[pid]['exit_price']:.2f}, P&L {touched[pid]['realized_pnl']:.2f}"
                     if touched[pid]["status"] == "closed" else " (its exit is retried until it fills)")
                  for pid in report.closing if pid in touched]
        if report.already_closing:
            lines.append("already closing (left to their exit): " + ", ".join(map(str, report.already_closing)))
        if report.close_failed:
            lines.append("positions whose exit could not be started (retried by the risk monitor and each "
                         "position's monitor): " + ", ".join(map(str, report.close_failed)))
    lines.append("nothing enters until `catalyst resume --confirm`")
    _emit(data, as_json, "\n".join(lines))


def _exit_in_process(position_id: int) -> None:
    """The operator waits for the exits: each runs here, through the same exit task the workers run."""
    from tasks.monitoring import exit_position

    exit_position.apply(args=[position_id])


@main.command()
@click.option("--confirm", is_flag=True, help="Required: the account has been checked and entries may start again.")
def resume(confirm: bool) -> None:
    """Lift HALTED (or REDUCING): entries are admitted again. Needs --confirm."""
    rt = _runtime()
    from catalyst.guard import operator, resume as resume_trading, status_view

    if not confirm:
        view = status_view(rt)
        why = f" (by {view['by']}: {view['reason']})" if view["state"] != "ACTIVE" else ""
        raise click.ClickException(f"not resumed: trading is {view['state']}{why}. Check the account and the "
                                   "positions, then run `catalyst resume --confirm`; nothing was changed")
    before, pnl = resume_trading(rt, by=operator())
    if before.state.value == "ACTIVE":
        click.echo("trading is already ACTIVE: nothing to resume")
        return
    click.echo(f"trading resumed (was {before.state.value}: {before.reason}; by {before.by})")
    if pnl is not None and pnl.level.value != "ACTIVE":
        click.echo(f"note: {pnl.describe()}; the risk monitor puts trading back into {pnl.level.value} at its next "
                   "check unless max_daily_loss_usd is raised (or on the next market day)")


@main.command("reconcile")
@click.option("--fix", is_flag=True, help="Apply the safe mends (never sells, never changes risk settings).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reconcile_cmd(fix: bool, as_json: bool) -> None:
    """Compare our books with the broker's: report every disagreement (and mend the safe ones with --fix)."""
    rt = _runtime()
    from catalyst.reconcile import LEASE_SECONDS as LEASE_WAIT, reconcile

    try:
        findings = [f.as_dict() for f in reconcile(rt, fix=fix, worker="cli", wait=LEASE_WAIT)]
    except CatalystError as exc:
        _fail(exc)
    text = table(["kind", "severity", "symbol", "position", "detail", "action"],
                 [[f["kind"], f["severity"], f["symbol"] or "-", f["position_id"] or "-", f["detail"], f["action"]]
                  for f in findings], "llllll") if findings else "books and broker agree: nothing to reconcile"
    _emit(findings, as_json, text)


@main.command("prune")
@click.option("--days", type=float, default=None, help="Keep this many days (default: the retention_days setting).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def prune_cmd(days: float | None, as_json: bool) -> None:
    """Delete the audit trail older than the retention window, in batches (never an open position's rows)."""
    rt = _runtime()
    from catalyst.retention import prune

    days = getattr(rt.settings, "retention_days", 30) if days is None else days
    try:
        counts = prune(days, market_now=rt.clock.now())
    except CatalystError as exc:
        _fail(exc)
    text = table(["table", "deleted"], [[name, n] for name, n in counts.items()], "lr")
    _emit({"days": days, "deleted": counts, "total": sum(counts.values())}, as_json,
          f"{text}\n{sum(counts.values())} rows older than {days:g} days deleted")


@main.command()
@click.option("--data", "data", required=True, multiple=True,
              help="Replay CSV with 1-minute bars, or a directory of them (repeat for several).")
@click.option("--positions", "positions_file", required=True, type=click.Path(dir_okay=False),
              help="CSV: symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price")
@click.option("--json", "as_json", is_flag=True)
def replay(data: tuple[str, ...], positions_file: str, as_json: bool) -> None:
    """What the monitor would have done: replay recorded bars through the same tasks."""
    from catalyst.replay import run_replay

    try:
        reports = run_replay(list(data), positions_file)
    except CatalystError as exc:
        _fail(exc)
    def local(ts: str | None) -> str:
        if not ts:
            return "-"
        from catalyst.core.sessions import SessionCalendar

        tz = SessionCalendar.for_market(get_settings().market).tz
        return datetime.fromisoformat(ts).astimezone(tz).strftime("%Y-%m-%d %H:%M")

    rows = [[r["symbol"], r["qty"], local(r["opened_at"]), r["status"], local(r["closed_at"]),
             r["exit_price"], r["exit_reason"], r["realized_pnl"],
             ", ".join(f"{s['name']}:{s['strength'][0]}" for s in r["signals"])] for r in reports]
    _emit(reports, as_json, table(["symbol", "qty", "opened", "status", "closed", "exit $", "reason", "P&L $",
                                   "signals (S/M/W)"], rows, "lrllrrlrl"))


@main.command()
@click.option("--speed", type=float, default=None, help="Simulated seconds per real second (default fits 3 min).")
@click.option("--date", "day", default=None, help="Session date to simulate (YYYY-MM-DD; default: a recent one).")
@click.option("--scenario", type=click.Choice(["normal", "crash"]), default="normal", show_default=True,
              help="crash: a market-wide slide and a flash crash that trip the daily loss limit.")
def demo(speed: float | None, day: str | None, scenario: str) -> None:
    """Run one whole simulated session with a real worker and beat on the embedded default."""
    from catalyst.demo import run_demo

    try:
        code = run_demo(speed=speed, day=day, scenario=scenario)
    except CatalystError as exc:
        _fail(exc)
    sys.exit(code)


def _register_commands() -> None:
    """Commands that live in modules of their own (each keeps its heavy imports inside the command)."""
    from catalyst.cli_metrics import metrics
    from catalyst.cli_report import report

    main.add_command(report)
    main.add_command(metrics)


_register_commands()

if __name__ == "__main__":
    main()
