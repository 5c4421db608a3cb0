"""Orders at the broker, mirrored in ``orders``: write the intent, submit, resolve, follow to a fill.

Every broker call that could place an order goes through :func:`submit` so the money path
has one shape: an ``orders`` row exists before the broker is called; an unknown outcome is
recorded as ``unknown`` and resolved by client id (never assumed failed); a pending order is
followed until it fills or the wait ends (then the caller retries later and adopts it).
"""

from __future__ import annotations

import time
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from catalyst import hooks
from catalyst.brokers.base import (FINAL_ORDER_STATUSES, BrokerError, BrokerOrderReport, OrderOutcomeUnknown,
                                   OrderRequest)
from catalyst.db.engine import session_scope
from catalyst.db.models import Order
from catalyst.core.domain import CatalystError

log = structlog.get_logger("catalyst.orders")
FILL_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.2


class OrderPending(CatalystError):
    """The order is at the broker (or may be) but has not filled yet: retry later, never resubmit blindly."""


def ensure_order(client_order_id: str, *, symbol: str, side: str, purpose: str, qty: float, now: datetime,
                 position_id: int | None = None, cycle_id: int | None = None) -> None:
    """Write the intent before calling the broker; an existing row (a retry) is kept as it is.

    An existing row is adopted only if it is this intent's kind (same purpose, side and symbol):
    under any other the id was taken by another path, and sending would adopt that path's order.
    """
    try:
        with session_scope() as s:
            existing = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
            if existing is None:
                s.add(Order(client_order_id=client_order_id, symbol=symbol, side=side, purpose=purpose, qty=qty,
                            position_id=position_id, cycle_id=cycle_id, status="pending_submit", created_at=now,
                            updated_at=now))
            elif (existing.purpose, existing.side, existing.symbol) != (purpose, side, symbol):
                raise CatalystError(f"client order id {client_order_id} is a {existing.purpose} {existing.side} of "
                                    f"{existing.symbol}, not this {purpose}: not adopted, needs an operator")
    except IntegrityError:
        pass  # a concurrent retry wrote it first


def apply_report(order: Order, report: BrokerOrderReport, now: datetime) -> None:
    """Mirror the broker's word onto our row. The broker is the truth, even over a final status of ours
    (shares it holds must be recorded), but such a change is never silent."""
    if order.status in FINAL_ORDER_STATUSES and report.status != order.status:
        _final_status_contradicted(order, report)
    order.broker_order_id = report.broker_order_id or order.broker_order_id
    order.status = report.status
    order.filled_qty = report.filled_qty
    order.filled_avg_price = report.filled_avg_price
    order.filled_at = report.filled_at
    order.stop_price = report.stop_price if report.stop_price is not None else order.stop_price
    order.limit_price = report.limit_price if report.limit_price is not None else order.limit_price
    order.submitted_at = order.submitted_at or now
    order.error = None if report.is_filled or not report.is_final else report.reason
    order.updated_at = now


def _final_status_contradicted(order: Order, report: BrokerOrderReport) -> None:
    """An order we had settled is reported live or filled: an intent we retired as never sent (``canceled``
    with no broker id) that the broker holds is an error an operator must see; its fill is still recorded."""
    fields = dict(client_order_id=order.client_order_id, purpose=order.purpose, symbol=order.symbol,
                  was=order.status, now=report.status, filled=report.filled_qty, broker_order_id=report.broker_order_id,
                  retired_because=order.error)
    if order.status == "canceled" and not order.broker_order_id and (order.filled_qty or 0) <= 0:
        event = "retired_entry_filled_at_broker" if order.purpose == "entry" and report.filled_qty > 0 \
            else "retired_order_at_broker"
        log.error(event, **fields)
    else:
        log.warning("order_final_status_changed", **fields)


def report_of(order: Order) -> BrokerOrderReport:
    """Our mirror of an order, as the broker would report it (what our books know of it)."""
    return BrokerOrderReport(order.broker_order_id or "", order.client_order_id, order.symbol, order.side, order.qty,
                             order.status, order.filled_qty, order.filled_avg_price, order.filled_at)


def record(report: BrokerOrderReport, now: datetime, position_id: int | None = None) -> None:
    """Mirror a broker report (and its bracket legs) into ``orders``."""
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == report.client_order_id))
        if order is None:
            return
        apply_report(order, report, now)
        for leg in report.legs:
            record_leg(s, leg, position_id or order.position_id, order.cycle_id, now)


def record_leg(s, leg: BrokerOrderReport, position_id: int | None, cycle_id: int | None, now: datetime) -> Order:
    row = s.scalar(select(Order).where(Order.client_order_id == leg.client_order_id))
    if row is None:
        row = Order(client_order_id=leg.client_order_id, symbol=leg.symbol, side=leg.side, purpose=leg.leg_purpose,
                    order_type=leg.order_type, qty=leg.qty, position_id=position_id, cycle_id=cycle_id,
                    created_at=now, updated_at=now)
        s.add(row)
    elif position_id is not None:
        row.position_id = position_id
    apply_report(row, leg, now)
    return row


def _mark_unknown(client_order_id: str, error: str, now: datetime) -> None:
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        if order is not None and order.status in ("pending_submit", "submitting", "unknown"):
            order.status, order.error, order.updated_at = "unknown", error, now


def resolve(broker, client_order_id: str) -> BrokerOrderReport | None:
    """Ask the broker what became of an order; ``None`` when it never arrived (or can't say now)."""
    try:
        return broker.get_order(client_order_id)
    except BrokerError as exc:
        log.warning("order_resolution_failed", client_order_id=client_order_id, error=str(exc))
        return None


def submit(rt, request: OrderRequest, *, wait: float = FILL_WAIT_SECONDS, accept_partial: bool = False,
           pause_point: str | None = None) -> BrokerOrderReport:
    """Submit once and follow the order until it fills or reaches a final state.

    With ``accept_partial`` an order still partially filled after ``wait`` has its remainder
    cancelled and is returned with what did fill (entries take what the market gave).
    Raises :class:`OrderPending` when the outcome is unknown and the broker cannot confirm it
    yet, or when the order is still working after ``wait`` seconds.
    """
    broker = rt.broker
    try:
        report = broker.submit_order(request)
    except OrderOutcomeUnknown as exc:
        _mark_unknown(request.client_order_id, str(exc), rt.clock.now())
        log.warning("order_outcome_unknown", client_order_id=request.client_order_id, error=str(exc))
        report = resolve(broker, request.client_order_id)
        if report is None:
            raise OrderPending(f"order {request.client_order_id}: outcome unknown, will resolve by client id") from None
        log.info("order_resolved", client_order_id=request.client_order_id, status=report.status)
    if pause_point:
        hooks.pause(pause_point)  # tests kill the worker here: at the broker, not yet in our books
    report = follow(broker, report, wait)
    if accept_partial and report.status == "partially_filled" and report.broker_order_id:
        log.warning("order_partially_filled", client_order_id=request.client_order_id, filled=report.filled_qty,
                    ordered=report.qty)
        report = follow(broker, broker.cancel_order(report.broker_order_id) or report, wait)
    record(report, rt.clock.now())
    if accept_partial and report.is_final and report.filled_qty > 0:
        return report
    if not report.is_filled and not report.is_final:
        raise OrderPending(f"order {request.client_order_id} is {report.status} at the broker")
    return report


def follow(broker, report: BrokerOrderReport, wait: float) -> BrokerOrderReport:
    """Poll until filled or final (market orders fill in moments; a limit may not)."""
    deadline = time.monotonic() + wait
    while not report.is_filled and not report.is_final and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        report = resolve(broker, report.client_order_id) or report
    return report
