"""Exits on the database: request exit, execute exit (entries live in entries.py, checks in monitor.py).

Each function is one idempotent step, safe to run twice or to resume after a crash:
- entries and exits carry deterministic ``client_order_id``s, and the broker adopts a
  repeated id instead of placing a second order;
- a position moves ``open → closing → closed`` only by conditional UPDATE, so exactly one
  caller wins each transition;
- an ``orders`` row is written *before* the broker is called, so an order whose reply was
  lost is never forgotten.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update

from catalyst import client_ids, orders
from catalyst.brokers.base import BrokerError, BrokerOrderReport, OrderRequest
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position
from catalyst.core.domain import BadInput, CatalystError
from catalyst.core.exits import realized_pnl
from catalyst.notify import notify
from catalyst.orders import ensure_order
from catalyst.records import bump, record_activity, record_decision
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.positions")
RECENT_VOLUME_BARS = 5


def recent_volume(bars) -> float | None:
    """Mean volume of the given bars: one quiet minute must not look like a volume collapse."""
    return sum(b.volume for b in bars) / len(bars) if bars else None


class UnknownPosition(BadInput):
    pass


class ExitRefused(CatalystError):
    """The broker refused the sale; a stop protects the shares and the exit waits until it can succeed."""


MAX_EXIT_ORDERS = 10  # a partial fill leaves a remainder; this many sells in all before an operator must look
EXIT_ATTEMPTS_PER_RUN = 3


def exit_client_order_id(position_id: int, attempt: int = 1) -> str:
    """``exit-p<id>``; a follow-up sell for what a partial fill left over is ``exit-p<id>-<n>``."""
    return client_ids.exit(position_id, attempt)


# -- exit --------------------------------------------------------------------------------------
def request_exit(rt: Runtime, position_id: int, reason: str, signals: list[dict] | None = None) -> bool:
    """Move ``open → closing`` with the exit reason; exactly one caller gets ``True``."""
    now = rt.clock.now()
    with session_scope() as s:
        won = s.execute(
            update(Position).where(Position.id == position_id, Position.status == "open")
            .values(status="closing", exit_reason=reason, closing_at=now, updated_at=now)
        ).rowcount == 1
        if won:
            record_activity(s, "exit_requested", now, position_id=position_id, reason=reason, signals=signals or [])
    if won:
        log.info("exit_requested", position_id=position_id, reason=reason)
    return won


def execute_exit(rt: Runtime, position_id: int, worker: str | None = None) -> Position:
    """Sell a ``closing`` position exactly once and close it; safe to rerun at any point.

    Bracket legs reserve the shares, so they are cancelled first; a leg that already filled
    *is* the exit (the broker sold for us), and no second sell is sent.
    """
    with session_scope() as s:
        position = s.get(Position, position_id)
        if position is None:
            raise UnknownPosition(f"unknown position id {position_id}")
        if position.status == "closed":
            return position
        status, symbol, qty = position.status, position.symbol, position.qty
        blocked_until, blocked_reason = position.exit_blocked_until, position.exit_blocked_reason
    if blocked_until is not None and rt.clock.now() < blocked_until:
        raise ExitRefused(f"position {position_id}: the broker refused the sale ({blocked_reason}); "
                          f"retried from {blocked_until.astimezone(rt.calendar.tz).isoformat()}")
    if status == "open":
        request_exit(rt, position_id, "manual")
    attempt, _, remaining = _exit_progress(position_id, qty)
    if attempt > MAX_EXIT_ORDERS and remaining > 1e-9:  # checked before the legs go: protection stays in place
        raise BrokerError(f"position {position_id}: {MAX_EXIT_ORDERS} exit orders sent and {remaining:g} "
                          "shares still held; needs an operator")
    filled_leg = _clear_legs(rt, position_id)
    if _exit_progress(position_id, qty)[2] <= 1e-9:  # the legs sold it all (one leg, or a partial and the other)
        reason = None if filled_leg is None else "stop_loss" if filled_leg.leg_purpose == "stop" else "take_profit"
        return close_with_fills(rt, position_id, recorded_sell_fills(position_id), reason=reason, worker=worker)
    for _ in range(EXIT_ATTEMPTS_PER_RUN):
        attempt, sold, remaining = _exit_progress(position_id, qty)
        if remaining <= 1e-9:
            return _close_from_exit_orders(rt, position_id, worker)
        if attempt > MAX_EXIT_ORDERS:
            raise BrokerError(f"position {position_id}: {MAX_EXIT_ORDERS} exit orders sent and {remaining:g} "
                              "shares still held; needs an operator")
        client_order_id = exit_client_order_id(position_id, attempt)
        remaining = _never_short(rt, position_id, symbol, remaining, client_order_id)
        ensure_order(client_order_id, symbol=symbol, side="sell", purpose="exit", qty=remaining,
                     now=rt.clock.now(), position_id=position_id)
        log.info("exit_submitted", position_id=position_id, symbol=symbol, qty=remaining,
                 client_order_id=client_order_id)
        report = orders.submit(rt, OrderRequest(client_order_id, symbol, "sell", remaining), accept_partial=True,
                               wait=rt.settings.fill_wait_seconds, pause_point="exit_after_submit")
        if report.filled_qty <= 0:
            log.warning("exit_not_filled", position_id=position_id, status=report.status, reason=report.reason)
            if report.status == "rejected":
                _protect_after_refusal(rt, position_id, symbol, remaining, report)
            _protect_while_exiting(rt, position_id, remaining)  # cancelled or expired unfilled: a stop until the retry
            break
    if _exit_progress(position_id, qty)[2] <= 1e-9:
        return _close_from_exit_orders(rt, position_id, worker)
    raise orders.OrderPending(f"position {position_id}: exit not complete yet; the rest is sold on the next run")


FINISHED = ("filled", "canceled", "expired", "rejected", "done_for_day")


def _protect_while_exiting(rt: Runtime, position_id: int, held: float) -> None:
    """The legs are gone and the sell did not fill: a stop holds the shares until the exit runs again."""
    from catalyst.protection import ensure_protection

    try:
        ensure_protection(rt, position_id, allow_closing=True, qty=held)
    except BrokerError as exc:
        log.error("exit_protection_failed", position_id=position_id, error=str(exc))


def cancel_leftover_stops(rt: Runtime, position_id: int) -> None:
    """A closed position must leave no working stop behind: one filling later would open a short."""
    with session_scope() as s:
        stops = s.scalars(select(Order).where(Order.position_id == position_id, Order.purpose == "stop",
                                              Order.status.not_in(FINISHED + ("replaced",)))).all()
        stops = [(o.broker_order_id, o.client_order_id) for o in stops]
    for broker_order_id, client_order_id in stops:
        try:
            report = (rt.broker.cancel_order(broker_order_id) if broker_order_id
                      else orders.resolve(rt.broker, client_order_id))
            if report is not None and not broker_order_id and not report.is_final:
                report = rt.broker.cancel_order(report.broker_order_id)
        except BrokerError as exc:
            log.error("leftover_stop_not_cancelled", position_id=position_id, client_order_id=client_order_id,
                      error=str(exc))
            continue
        if report is not None:
            _record_leg_state(report, rt.clock.now())


def _protect_after_refusal(rt: Runtime, position_id: int, symbol: str, held: float, report: BrokerOrderReport):
    """The broker refused the sell (e.g. 403 pattern-day-trader protection) after the legs were cancelled:
    re-place a stop for what is held at once, tell the operator, and wait until a retry can succeed."""
    from catalyst.protection import ensure_protection

    stop = ensure_protection(rt, position_id, allow_closing=True, qty=held)
    now = rt.clock.now()
    until = retry_refused_exit_at(rt, report.reason or "", now)
    with session_scope() as s:
        s.execute(update(Position).where(Position.id == position_id, Position.status == "closing")
                  .values(exit_blocked_until=until, exit_blocked_reason=(report.reason or "refused")[:500]))
        record_activity(s, "exit_refused", now, position_id=position_id, symbol=symbol, qty=held,
                        reason=report.reason, client_order_id=report.client_order_id, retry_at=until.isoformat(),
                        protective_stop=stop.client_order_id if stop is not None else None)
    log.error("exit_refused", position_id=position_id, symbol=symbol, reason=report.reason, retry_at=until.isoformat(),
              protective_stop=stop.client_order_id if stop is not None else None)
    notify("exit_refused", "critical", f"Exit refused: {symbol} (position {position_id})",
           f"The broker refused the sale of {held:g} {symbol}: {report.reason or 'refused'}. "
           f"{'A stop protects the shares' if stop is not None else 'NO protective stop could be placed'}; the exit "
           f"is retried from {until.astimezone(rt.calendar.tz).isoformat()}.",
           context={"position_id": position_id, "symbol": symbol, "qty": held, "reason": report.reason,
                    "client_order_id": report.client_order_id, "retry_at": until.isoformat(),
                    "protective_stop": stop.client_order_id if stop is not None else None},
           dedupe_key=f"exit_refused:{position_id}:{report.client_order_id}", occurred_at=now)
    raise ExitRefused(f"position {position_id}: the broker refused the sell of {held:g} {symbol} "
                      f"({report.reason}); a stop protects the shares and the exit is retried from "
                      f"{until.astimezone(rt.calendar.tz).isoformat()}")


PATTERN_DAY_TRADER = ("40310100", "pattern day")


def retry_refused_exit_at(rt: Runtime, reason: str, now: datetime) -> datetime:
    """When a refused sale can succeed: pattern-day-trader protection lifts with the next session;
    anything else (shares held by another order, a transient refusal) is tried again at the next check."""
    if any(mark in reason.lower() for mark in PATTERN_DAY_TRADER):
        session = rt.calendar.next_session(now)
        return session.open if session.open > now else rt.calendar.next_session(session.close).open
    return now + timedelta(seconds=rt.settings.monitor_check_interval)


def _never_short(rt: Runtime, position_id: int, symbol: str, remaining: float, client_order_id: str) -> float:
    """Sell at most what the broker holds: a fill our books missed must not turn the exit into a short.

    An exit the broker already has under this client id (a lost reply) is adopted, not capped.
    """
    held = rt.broker.get_position(symbol)
    held_qty = held.qty if held is not None else 0.0
    if held_qty + 1e-9 >= remaining or orders.resolve(rt.broker, client_order_id) is not None:
        return remaining
    log.error("exit_exceeds_broker_position", position_id=position_id, symbol=symbol, remaining=remaining,
              broker_qty=held_qty)
    if held_qty <= 1e-9:
        raise BrokerError(f"position {position_id}: our books hold {remaining:g} {symbol} to sell, the broker none; "
                          "catalyst reconcile finds the fill that took it")
    return held_qty


def _exit_progress(position_id: int, qty: float) -> tuple[int, float, float]:
    """(attempt number to use, shares sold so far, shares left) from the position's sell fills.

    Everything sold counts — exit orders and bracket legs (a take-profit leg that sold part of it)
    — so the remainder is what is really still held. The last exit order still working (or
    unknown) is resumed under its own client id; only once it has finished does a remainder get a
    new one. A rerun after a crash computes the same answer.
    """
    with session_scope() as s:
        exits = s.scalars(select(Order).where(Order.position_id == position_id, Order.purpose == "exit")
                          .order_by(Order.id)).all()
        sold = s.scalar(select(func.coalesce(func.sum(Order.filled_qty), 0.0)).where(
            Order.position_id == position_id, Order.side == "sell", Order.purpose.in_(SELL_PURPOSES)))
        resume = bool(exits) and exits[-1].status not in FINISHED
    return (len(exits) if resume else len(exits) + 1), sold, qty - sold


def _close_from_exit_orders(rt: Runtime, position_id: int, worker: str | None) -> Position:
    """Close at the volume-weighted price of every sell fill (exits, and any leg that sold part of it)."""
    return close_with_fills(rt, position_id, recorded_sell_fills(position_id), worker=worker)


SELL_PURPOSES = ("exit", "stop", "take_profit")


def recorded_sell_fills(position_id: int, purposes: tuple[str, ...] = SELL_PURPOSES) -> list[BrokerOrderReport]:
    """The sell fills our books hold for a position, oldest first (legs and exits alike)."""
    with session_scope() as s:
        return [orders.report_of(o) for o in s.scalars(
            select(Order).where(Order.position_id == position_id, Order.side == "sell", Order.purpose.in_(purposes),
                                Order.filled_qty > 0).order_by(Order.id)) if o.filled_avg_price is not None]


def close_with_fills(rt: Runtime, position_id: int, fills: list[BrokerOrderReport], *, reason: str | None = None,
                     worker: str | None = None) -> Position:
    """Close a position at the volume-weighted price of the sell fills that took it flat, once.

    Used by exits and by reconciliation (a position the broker sold for us: a leg, or a manual sell).
    An ``open`` position is moved to ``closing`` first, with ``reason`` (or ``manual``).
    """
    qty = sum(f.filled_qty for f in fills)
    price = sum(f.filled_qty * f.filled_avg_price for f in fills) / qty
    last = fills[-1]
    request_exit(rt, position_id, reason or "manual")  # no-op unless still open
    report = BrokerOrderReport("", last.client_order_id, last.symbol, "sell", qty, "filled", qty, round(price, 6),
                               max((f.filled_at for f in fills if f.filled_at), default=None))
    return _close(rt, position_id, report, worker, reason=reason)


def _clear_legs(rt: Runtime, position_id: int) -> BrokerOrderReport | None:
    """Cancel the position's working legs (they reserve the shares); the leg that filled, if one did.

    Every leg's state is recorded — a sibling may have sold part of the position — and a leg still
    working is cancelled even when the other has filled (in a fast market both can fill).
    """
    with session_scope() as s:
        legs = s.scalars(select(Order).where(Order.position_id == position_id, Order.purpose.in_(("stop", "take_profit")),
                                             Order.broker_order_id.is_not(None))).all()
        working = [(leg.broker_order_id, leg.status) for leg in legs]
    if not working:
        return None
    broker, now = rt.broker, rt.clock.now()
    current = [_successor(rt, position_id, r) for r in (broker.get_order_by_id(oid) for oid, _ in working)
               if r is not None]
    settled = []
    for report in current:
        if not report.is_final:
            report = orders.follow(broker, broker.cancel_order(report.broker_order_id) or report,
                                   orders.FILL_WAIT_SECONDS)
        _record_leg_state(report, now)
        if not report.is_final:
            raise orders.OrderPending(f"leg {report.broker_order_id} of position {position_id} is still {report.status}")
        settled.append(report)
    log.info("legs_cleared", position_id=position_id, legs=[(r.leg_purpose, r.status, r.filled_qty) for r in settled])
    return next((r for r in settled if r.is_filled), None)


def _successor(rt: Runtime, position_id: int, report: BrokerOrderReport) -> BrokerOrderReport:
    """A replaced stop leg (a trail whose answer was lost) is followed to the leg resting in its place."""
    if report.status != "replaced" or not report.replaced_by:
        return report
    from catalyst.protection import sync_stop_leg

    return sync_stop_leg(rt, position_id, report.broker_order_id) or report


def _record_leg_state(report: BrokerOrderReport, now: datetime) -> None:
    with session_scope() as s:
        row = s.scalar(select(Order).where(Order.broker_order_id == report.broker_order_id))
        if row is not None:
            orders.apply_report(row, report, now)


def _close(rt: Runtime, position_id: int, report: BrokerOrderReport, worker: str | None,
           reason: str | None = None) -> Position:
    """Record the fill that took the position flat: ``closing → closed``, once."""
    with session_scope() as s:
        position = s.get(Position, position_id)
        closed_at = report.filled_at or rt.clock.now()
        pnl, pnl_pct = realized_pnl(position.entry_price, report.filled_avg_price, position.qty)
        values = dict(status="closed", closed_at=closed_at, exit_price=report.filled_avg_price, realized_pnl=pnl,
                      realized_pnl_pct=pnl_pct, last_price=report.filled_avg_price, updated_at=closed_at,
                      exit_blocked_until=None)
        if reason:
            values["exit_reason"] = reason
        won = s.execute(update(Position).where(Position.id == position_id, Position.status == "closing")
                        .values(**values)).rowcount == 1
        if won:
            s.refresh(position)
            record_decision(s, kind="exit", action="exit", reason=position.exit_reason, symbol=position.symbol,
                            position_id=position_id, decided_at=closed_at, worker=worker,
                            details={"exit_price": report.filled_avg_price, "realized_pnl": pnl, "pnl_pct": pnl_pct,
                                     "client_order_id": report.client_order_id})
            record_activity(s, "position_closed", closed_at, position_id=position_id, symbol=position.symbol,
                            reason=position.exit_reason, exit_price=report.filled_avg_price, realized_pnl=pnl)
            bump(s, worker, exits_executed=1)
    if won:
        log.info("position_closed", position_id=position_id, symbol=position.symbol, reason=position.exit_reason,
                 exit_price=report.filled_avg_price, realized_pnl=round(pnl, 2), pnl_pct=round(pnl_pct, 3))
        try:
            if rt.broker.supports_legs:  # first: a stop still working after the close could fill and open a short
                cancel_leftover_stops(rt, position_id)
        finally:
            _notify_closed(position)
    with session_scope() as s:
        return s.get(Position, position_id)


def _notify_closed(position: Position) -> None:
    """Tell the operator (never waits: delivery is queued), once per position."""
    try:
        p = position
        notify("position_closed", "info" if (p.realized_pnl or 0) >= 0 else "warning",
               f"Closed {p.symbol}: {p.realized_pnl:+,.2f} USD ({p.exit_reason})",
               f"Position {p.id}: sold {p.qty:g} {p.symbol} at {p.exit_price:g} (entry {p.entry_price:g}); "
               f"P&L {p.realized_pnl:+,.2f} USD ({p.realized_pnl_pct:+.2f} %); reason {p.exit_reason}.",
               context={"position_id": p.id, "symbol": p.symbol, "qty": p.qty, "entry_price": p.entry_price,
                        "exit_price": p.exit_price, "realized_pnl": round(p.realized_pnl, 2),
                        "realized_pnl_pct": round(p.realized_pnl_pct, 3), "reason": p.exit_reason,
                        "opened_at": p.opened_at, "closed_at": p.closed_at},
               dedupe_key=f"position_closed:{p.id}", occurred_at=p.closed_at)
    except Exception as exc:  # noqa: BLE001 - the position is closed; an alert that cannot be worded is not its problem
        log.warning("notification_not_recorded", notify_event="position_closed", position_id=position.id,
                    error=type(exc).__name__)
