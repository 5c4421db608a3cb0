"""Alerts that come from looking, not from an event: stale services and the day's summary.

Both are idempotent without state of their own: the dedupe key names the fact. A stale episode
is keyed by the heartbeat the service went quiet after (a service that goes quiet again later
has a newer last heartbeat, hence a new episode), the summary by its market day.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import func, select

from catalyst.db.engine import session_scope
from catalyst.db.models import AgentLog, Notification, Position, ServiceHealth
from catalyst.notify import bounded_key, notify

if TYPE_CHECKING:  # only for annotations: the liveness functions stay cheap to import (catalyst.healthcheck)
    from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.alerts")

STALE_AFTER_BEATS = 3  # a service is stale once its last heartbeat is older than this many intervals
GONE_STATUSES = ("offline", "stopped")  # said goodbye ("stopped": what a beat wrote before it said "offline")


# -- liveness: the one definition of stale, used by the watch, `catalyst status` and retention ------------------
def stale_after(interval: float) -> timedelta:
    """How old a heartbeat may get: three intervals, so one late or lost beat is never an alarm."""
    return timedelta(seconds=STALE_AFTER_BEATS * interval)


def is_stale(last_heartbeat: datetime, now: datetime, interval: float) -> bool:
    """True once ``last_heartbeat`` (wall time) is older than :func:`stale_after`."""
    return now - last_heartbeat > stale_after(interval)


def liveness(status: str, last_heartbeat: datetime, now: datetime, interval: float) -> str:
    """What to believe about a service: ``offline`` (it said goodbye), ``stale`` (it claims to run but has
    stopped beating: crashed, killed, hung or cut off) or the status it reported itself."""
    if status in GONE_STATUSES:
        return "offline"
    return "stale" if is_stale(last_heartbeat, now, interval) else status


# -- stale services ----------------------------------------------------------------------------------
def check_services(rt: Runtime, now: datetime | None = None) -> list[int]:
    """``service_stale`` (warning) once per stale episode of each service that is not ``offline`` — as a
    notification and as an ``agent_logs`` warning of its own; ``service_recovered`` (info) once when it beats
    again. Heartbeats are wall time. Returns new ids."""
    now = now or datetime.now(UTC)
    interval = rt.settings.heartbeat_interval
    with session_scope() as s:
        services = [(h.service_name, h.kind, h.status, h.last_heartbeat, h.hostname, h.pid)
                    for h in s.scalars(select(ServiceHealth).order_by(ServiceHealth.service_name))]
    ids = []
    for name, kind, status, last, hostname, pid in services:
        verdict = liveness(status, last, now, interval)
        if verdict == "offline":
            continue  # a clean shutdown said goodbye: not an outage
        if verdict == "stale":
            age = (now - last).total_seconds()
            context = {"service": name, "kind": kind, "status": status, "hostname": hostname, "pid": pid,
                       "last_heartbeat": last.isoformat(), "age_seconds": round(age, 1)}
            nid = notify("service_stale", "warning", f"{kind} {name} is not responding",
                         f"No heartbeat from {kind} {name} for {age:.0f} s (expected every "
                         f"{interval:g} s); last seen {last.isoformat()} as {status}.",
                         context=context, dedupe_key=_stale_key(name, last), occurred_at=now)
            if nid is not None:
                _log_stale(context, nid, interval, now)
        else:
            nid = _recovered(name, kind, last, now)
        if nid is not None:
            ids.append(nid)
    return ids


def _log_stale(context: dict, notification_id: int, interval: float, now: datetime) -> None:
    """The episode's ``service_stale`` warning in ``agent_logs`` (with the service, its age and last heartbeat),
    written once per episode: a later round of the same episode finds it and writes nothing. Written directly
    rather than through the log processor, so the escalation does not depend on how logging is configured."""
    name, last = context["service"], context["last_heartbeat"]
    with session_scope() as s:
        earlier = s.scalars(select(AgentLog.context).where(AgentLog.event == "service_stale", AgentLog.service == name)
                            .order_by(AgentLog.id.desc()).limit(5)).all()
        if any((c or {}).get("last_heartbeat") == last for c in earlier):
            return
        s.add(AgentLog(timestamp=now, level="WARNING", event="service_stale", service=name,
                       context={**context, "notification_id": notification_id,
                                "stale_after_seconds": stale_after(interval).total_seconds()}))
    # Info, not warning: the warning row is the one just written (a warning line would be persisted twice).
    log.info("service_stale_escalated", **{k: v for k, v in context.items() if k != "service"},
             stale_service=name, notification_id=notification_id)


def _stale_key(name: str, last: datetime) -> str:
    return bounded_key(f"service_stale:{name}:{last.astimezone(UTC).isoformat()}")


def _recovered(name: str, kind: str, last: datetime, now: datetime) -> int | None:
    """The latest stale episode of ``name`` ended when it beat after it: say so, once."""
    with session_scope() as s:
        episode = s.scalars(select(Notification).where(Notification.event == "service_stale")
                            .where(Notification.dedupe_key.like(f"service_stale:{_like(name)}:%", escape="\\"))
                            .order_by(Notification.id.desc()).limit(5)).all()
        episode = next((n for n in episode if n.context.get("service") == name), None)
        if episode is None:
            return None
        quiet_since = datetime.fromisoformat(episode.context["last_heartbeat"])
        episode_key = episode.dedupe_key
    if last <= quiet_since:
        return None
    with session_scope() as s:
        if s.scalar(select(Notification.id).where(Notification.dedupe_key == _recovered_key(episode_key))):
            return None
    return notify("service_recovered", "info", f"{kind} {name} is responding again",
                  f"{kind} {name} beat again at {last.isoformat()} after being quiet since {quiet_since.isoformat()}.",
                  context={"service": name, "kind": kind, "last_heartbeat": last.isoformat(),
                           "quiet_since": quiet_since.isoformat()},
                  dedupe_key=_recovered_key(episode_key), occurred_at=now)


def _recovered_key(stale_key: str) -> str:
    return bounded_key("service_recovered:" + stale_key.split(":", 1)[1])


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- the day's summary ---------------------------------------------------------------------------------
def market_day_bounds(rt: Runtime, at: datetime) -> tuple[datetime, datetime]:
    """Midnight to midnight of ``at``'s date on the exchange's clock."""
    day = at.astimezone(rt.calendar.tz).date()
    start = datetime.combine(day, time(0), tzinfo=rt.calendar.tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=rt.calendar.tz)
    return start, end


def compose_daily_summary(rt: Runtime, at: datetime) -> tuple[str, str, dict]:
    """(title, text, context) of the market day containing ``at``, from the books."""
    start, end = market_day_bounds(rt, at)
    day = start.date().isoformat()
    with session_scope() as s:
        closed = s.scalars(select(Position).where(Position.status == "closed", Position.closed_at >= start,
                                                  Position.closed_at < end).order_by(Position.closed_at)).all()
        opened_count = s.scalar(select(func.count()).select_from(Position)
                                .where(Position.opened_at >= start, Position.opened_at < end))
        still_open = s.scalars(select(Position).where(Position.status != "closed").order_by(Position.id)).all()
    pnls = [p.realized_pnl or 0.0 for p in closed]
    wins = sum(1 for x in pnls if x > 0)
    by_reason = dict(sorted(Counter(p.exit_reason or "unknown" for p in closed).items()))
    open_rows = [{"id": p.id, "symbol": p.symbol, "qty": p.qty, "entry_price": p.entry_price,
                  "last_price": p.last_price, "status": p.status,
                  "unrealized_pnl": None if p.last_price is None else round((p.last_price - p.entry_price) * p.qty, 2)}
                 for p in still_open]
    context = {"market_day": day, "trades": len(closed), "opened": opened_count, "realized_pnl": round(sum(pnls), 2),
               "wins": wins, "losses": len(closed) - wins,
               "win_rate": round(wins / len(closed), 4) if closed else None, "exits_by_reason": by_reason,
               "open_positions": len(open_rows), "open": open_rows[:20],
               "best": _trade(max(closed, key=lambda p: p.realized_pnl or 0.0)) if closed else None,
               "worst": _trade(min(closed, key=lambda p: p.realized_pnl or 0.0)) if closed else None}
    return f"Daily summary {day}: {len(closed)} trades, P&L {sum(pnls):+,.2f} USD", summary_text(context), context


def _trade(p: Position) -> dict:
    return {"id": p.id, "symbol": p.symbol, "realized_pnl": p.realized_pnl, "exit_reason": p.exit_reason}


def summary_text(c: dict) -> str:
    """The operator's reading of the day, from the numbers in the summary's context."""
    lines = [f"Market day {c['market_day']}: {c['trades']} trades closed, {c['opened']} opened.",
             f"Realized P&L: {c['realized_pnl']:+,.2f} USD."]
    if c["trades"]:
        lines.append(f"Win rate: {c['win_rate']:.0%} ({c['wins']} won, {c['losses']} lost).")
        lines.append("Exits by reason: " + ", ".join(f"{r} {n}" for r, n in c["exits_by_reason"].items()) + ".")
        lines.append(f"Best: {c['best']['symbol']} {c['best']['realized_pnl']:+,.2f}; "
                     f"worst: {c['worst']['symbol']} {c['worst']['realized_pnl']:+,.2f}.")
    if c["open_positions"]:
        shown = ", ".join(f"{p['symbol']} x{p['qty']:g} @ {p['entry_price']:g}"
                          + ("" if p["unrealized_pnl"] is None else f" ({p['unrealized_pnl']:+,.2f})")
                          for p in c["open"])
        lines.append(f"Open positions ({c['open_positions']}): {shown}.")
    else:
        lines.append("No open positions.")
    return "\n".join(lines)


def send_daily_summary(rt: Runtime, at: datetime) -> int | None:
    """Notify the summary of ``at``'s market day, once per day however often it is run."""
    title, text, context = compose_daily_summary(rt, at)
    return notify("daily_summary", "info", title, text, context=context,
                  dedupe_key=f"daily_summary:{context['market_day']}", occurred_at=at)
