"""Broker-side protection of held positions: the stop leg that trails the high-watermark.

A replace (PATCH) is an order request like a submit: Alpaca answers with a *new* order and marks
the old one ``replaced``, and the answer can be lost. Whatever happened — a lost answer, a
refusal because our books were behind — the broker's book is asked (the old leg by id, then its
``replaced_by`` chain) and the live leg is recorded as the position's stop, so the trail goes on
from what the broker really holds.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import func, select

from catalyst import client_ids, orders
from catalyst.brokers.base import BrokerError, BrokerOrderReport, OrderOutcomeUnknown
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position
from catalyst.records import record_activity
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.protection")


STOP_STEP = 0.002  # move the broker's stop only for a rise of at least 0.2%: fewer replace calls
LIVE_LEG_STATUSES = ("new", "accepted", "held", "pending_new")  # a stop leg rests `held` until it triggers
MAX_REPLACE_HOPS = 20


def raise_stop(rt: Runtime, position_id: int, new_stop: float) -> bool:
    """Ratchet the broker-side stop leg up to ``new_stop`` (never down, never to the same price).

    Alpaca has no trailing bracket leg, so the monitor trails the high-watermark by replacing
    the stop leg: the position stays protected at the broker even while workers are down.
    Returns whether the broker's stop moved. A failed replace is resolved from the broker's book
    before anything is raised, so the next cycle works from the live leg.
    """
    new_stop = round(new_stop, 2)
    with session_scope() as s:
        position = s.get(Position, position_id)
        leg = s.scalar(select(Order).where(Order.position_id == position_id, Order.purpose == "stop",
                                           Order.status.in_(LIVE_LEG_STATUSES)).order_by(Order.id.desc()))
        if position is None or position.status != "open" or leg is None or not leg.broker_order_id:
            return False
        current = max(position.stop_loss_price or 0.0, leg.stop_price or 0.0)
        if new_stop < current * (1 + STOP_STEP) or new_stop <= round(leg.stop_price or 0.0, 2):
            return False  # Alpaca refuses a replace that changes nothing ("order parameters are not changed")
        leg_id = leg.broker_order_id
    try:
        report = rt.broker.replace_stop(leg_id, new_stop)
    except OrderOutcomeUnknown as exc:
        log.warning("stop_replace_unknown", position_id=position_id, leg=leg_id, stop=new_stop, error=str(exc))
        live = sync_stop_leg(rt, position_id, leg_id)
        return live is not None and live.broker_order_id != leg_id
    except BrokerError as exc:
        log.warning("stop_replace_refused", position_id=position_id, leg=leg_id, stop=new_stop, error=str(exc))
        sync_stop_leg(rt, position_id, leg_id)  # our books may be behind (replaced or filled at the broker)
        raise
    _record_replacement(rt, position_id, leg_id, report, previous=current)
    log.info("stop_raised", position_id=position_id, stop=new_stop, previous=current)
    return True


def sync_stop_leg(rt: Runtime, position_id: int, leg_id: str) -> BrokerOrderReport | None:
    """Ask the broker what became of stop leg ``leg_id``; record the leg that holds its place now.

    A ``replaced`` leg is followed through ``replaced_by`` to the current one; ``None`` when the
    broker cannot say right now (nothing is changed then, and the next cycle asks again).
    """
    try:
        report = rt.broker.get_order_by_id(leg_id)
        hops = 0
        while report is not None and report.status == "replaced" and report.replaced_by and hops < MAX_REPLACE_HOPS:
            _mark_replaced(rt, report)
            successor = rt.broker.get_order_by_id(report.replaced_by)
            if successor is None:
                break
            report, hops = successor, hops + 1
    except BrokerError as exc:
        log.warning("stop_leg_unresolved", position_id=position_id, leg=leg_id, error=str(exc))
        return None
    if report is None:
        return None
    if report.broker_order_id == leg_id:
        with session_scope() as s:  # unchanged at the broker: just mirror its state
            row = s.scalar(select(Order).where(Order.broker_order_id == leg_id))
            if row is not None:
                orders.apply_report(row, report, rt.clock.now())
        return report
    _record_replacement(rt, position_id, leg_id, report, previous=None, resolved=True)
    log.info("stop_leg_resolved", position_id=position_id, old_leg=leg_id, leg=report.broker_order_id,
             status=report.status, stop=report.stop_price)
    return report


def _mark_replaced(rt: Runtime, report: BrokerOrderReport) -> None:
    with session_scope() as s:
        row = s.scalar(select(Order).where(Order.broker_order_id == report.broker_order_id))
        if row is not None:
            orders.apply_report(row, report, rt.clock.now())


def _record_replacement(rt: Runtime, position_id: int, old_id: str, report: BrokerOrderReport,
                        previous: float | None, resolved: bool = False) -> None:
    """The broker's new stop leg becomes the position's stop (row, price, activity)."""
    now = rt.clock.now()
    with session_scope() as s:
        old = s.scalar(select(Order).where(Order.broker_order_id == old_id))
        if old is not None and old.status != "replaced":
            old.status, old.updated_at = "replaced", now
        orders.record_leg(s, report, position_id, old.cycle_id if old is not None else None, now)
        position = s.get(Position, position_id)
        previous = position.stop_loss_price if previous is None else previous
        if report.stop_price is not None and report.status in LIVE_LEG_STATUSES + ("filled", "partially_filled"):
            position.stop_loss_price = report.stop_price
        record_activity(s, "stop_leg_resolved" if resolved else "stop_raised", now, position_id=position_id,
                        symbol=position.symbol, stop=report.stop_price, previous=previous,
                        leg=report.broker_order_id, status=report.status)


# -- a live stop for the whole position ---------------------------------------------------------------
STANDALONE_STOP_PREFIX = client_ids.STOP_PREFIX
OPEN_STOP_STATUSES = LIVE_LEG_STATUSES + ("partially_filled", "pending_submit", "unknown", "pending_cancel",
                                          "pending_replace")


def standalone_stop_client_order_id(position_id: int, n: int) -> str:
    return client_ids.stop(position_id, n)


def ensure_protection(rt: Runtime, position_id: int, price: float | None = None, *,
                      allow_closing: bool = False, qty: float | None = None,
                      require_legs: bool = True) -> BrokerOrderReport | None:
    """A held position keeps a live stop at the broker for its whole quantity: place one if it has none.

    Bracket legs disappear with the group when the unfilled rest of an entry is cancelled (Alpaca
    cancels the whole bracket); this places a standalone ``gtc`` stop at the position's stop price
    for what is held, recorded as the position's ``stop`` order (``stop-p<id>-<n>``). Nothing is
    placed when the market is already at or below the stop (the exit signals decide then). Returns
    the stop placed (or adopted), ``None`` when none was needed or possible now. Reconciliation
    passes ``require_legs=False`` for positions it adopted from the broker.
    """
    if not rt.broker.supports_legs:
        return None
    from catalyst.brokers.base import OrderRequest

    with session_scope() as s:
        position = s.get(Position, position_id)
        if position is None or position.status not in (("open", "closing") if allow_closing else ("open",)):
            return None
        stops = s.scalars(select(Order).where(Order.position_id == position_id, Order.purpose == "stop")
                          .order_by(Order.id)).all()
        live = [o for o in stops if o.status in OPEN_STOP_STATUSES]
        standalone = [o for o in stops if o.client_order_id.startswith(f"{STANDALONE_STOP_PREFIX}{position_id}-")]
        had_legs = s.scalar(select(Order.id).where(Order.position_id == position_id,
                                                   Order.purpose.in_(("stop", "take_profit"))).limit(1))
        if had_legs is None and require_legs:
            return None  # never protected at the broker (adopted, or booked by hand): reconciliation's call
        retry_after = timedelta(seconds=rt.settings.monitor_check_interval)
        if standalone and standalone[-1].status == "rejected" and not allow_closing \
                and rt.clock.now() - standalone[-1].updated_at < retry_after:
            return None  # the broker refused it just now: escalated (logged), tried again after an interval
        symbol, stop_price = position.symbol, position.stop_loss_price
        if qty is None:  # what is still held: legs or exits may have sold part of it
            sold = s.scalar(select(func.coalesce(func.sum(Order.filled_qty), 0.0)).where(
                Order.position_id == position_id, Order.side == "sell"))
            qty = position.qty - sold
        resume = next((o.client_order_id for o in standalone if o.status in ("pending_submit", "unknown")), None)
        covering = [o for o in live if o.status not in ("pending_submit", "unknown", "pending_cancel")]
        if any((o.qty or 0) - (o.filled_qty or 0) >= qty - 1e-9 for o in covering):
            return None  # a stop that is not being cancelled still rests for all that is held
    if stop_price is None or qty <= 0 or (price is not None and price <= stop_price):
        return None
    client_order_id = resume or standalone_stop_client_order_id(position_id, len(standalone) + 1)
    now = rt.clock.now()
    orders.ensure_order(client_order_id, symbol=symbol, side="sell", purpose="stop", qty=qty, now=now,
                        position_id=position_id)
    request = OrderRequest(client_order_id, symbol, "sell", qty, order_type="stop", stop_price=round(stop_price, 2),
                           time_in_force="gtc")
    try:
        report = rt.broker.submit_order(request)
    except OrderOutcomeUnknown as exc:
        log.warning("protective_stop_unknown", position_id=position_id, client_order_id=client_order_id,
                    error=str(exc))
        _mark(client_order_id, "unknown", str(exc), now)
        report = orders.resolve(rt.broker, client_order_id)
        if report is None:
            return None  # the next check resolves it under the same client id
    except BrokerError as exc:
        log.error("protective_stop_failed", position_id=position_id, client_order_id=client_order_id, error=str(exc))
        return None
    orders.record(report, rt.clock.now(), position_id=position_id)
    with session_scope() as s:
        row = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        if row is not None:
            row.order_type, row.stop_price = "stop", row.stop_price or round(stop_price, 2)
        if report.status == "rejected":
            log.error("protective_stop_refused", position_id=position_id, client_order_id=client_order_id,
                      reason=report.reason)
            return None
        record_activity(s, "protective_stop_placed", now, position_id=position_id, symbol=symbol, qty=qty,
                        stop=round(stop_price, 2), client_order_id=client_order_id, status=report.status)
    log.warning("protective_stop_placed", position_id=position_id, symbol=symbol, qty=qty, stop=round(stop_price, 2),
                client_order_id=client_order_id)
    with session_scope() as s:
        closed = s.scalar(select(Position.status).where(Position.id == position_id)) == "closed"
    if closed:  # another run closed it while this stop was being placed: it must not outlive the position
        from catalyst.positions import cancel_leftover_stops

        cancel_leftover_stops(rt, position_id)
        return None
    return report


def _mark(client_order_id: str, status: str, error: str, now) -> None:
    with session_scope() as s:
        row = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        if row is not None and row.status in ("pending_submit", "unknown"):
            row.status, row.error, row.updated_at = status, error, now
