"""Entries: validate, write the intent, submit once, and open the position from what actually filled.

A rerun with the same ``client_order_id`` adopts the first run's order and position (the
broker refuses a second order under that id), so a redelivered ``enter_position`` can never
buy twice.
"""

from __future__ import annotations

import math
from datetime import timedelta

import structlog
from sqlalchemy import select

from catalyst import orders
from catalyst.brokers.base import BrokerOrderReport, OrderRequest
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position, Security
from catalyst.domain import BadInput, require_price
from catalyst.exits import quote_problem
from catalyst.orders import ensure_order
from catalyst.positions import RECENT_VOLUME_BARS, recent_volume
from catalyst.records import record_activity, record_decision, wall_now
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.entries")


def entry_client_order_id(cycle_id: int, symbol: str) -> str:
    return f"entry-c{cycle_id}-{symbol}"[:48]


def validate_entry(rt: Runtime, symbol: str, qty: float, stop: float | None, target: float | None):
    """Refuse bad entries before anything is written; returns (symbol, qty, quote, stop, target)."""
    symbol = (symbol or "").strip().upper()
    try:
        qty = float(qty)
    except (TypeError, ValueError):
        raise BadInput(f"qty {qty!r} is not a number") from None
    if not math.isfinite(qty) or qty <= 0:
        raise BadInput(f"qty must be above zero, got {qty:g}")
    knows = getattr(rt.market_data, "knows", None)
    if not (knows(symbol) if knows else symbol in rt.market_data.symbols()):
        raise BadInput(f"unknown symbol {symbol!r}: market data {rt.market_data.name} does not list it")
    quote = rt.market_data.quote(symbol, rt.clock.now())
    now = rt.clock.now()  # after the quote arrived: a slow fetch must not make a fresh quote look "future"
    problem = quote_problem(quote, now, timedelta(seconds=rt.settings.max_quote_age))
    if problem:
        raise BadInput(f"cannot enter {symbol} at {now.isoformat()}: {problem.replace('_', ' ')}")
    stop, target = _price_or_none(stop, "stop"), _price_or_none(target, "target")
    if stop is not None and stop >= quote.price:
        raise BadInput(f"stop {stop:g} must be below the current price {quote.price:g} of {symbol}")
    if target is not None and target <= quote.price:
        raise BadInput(f"target {target:g} must be above the current price {quote.price:g} of {symbol}")
    return symbol, qty, quote, stop, target


def _price_or_none(value, name: str) -> float | None:
    if value is None:
        return None
    try:
        return require_price(value, f"{name} price")
    except BadInput:
        raise BadInput(f"{name} price must be a number above zero, got {value!r}") from None


def open_position(rt: Runtime, *, symbol: str, qty: float, client_order_id: str, stop: float | None = None,
                  target: float | None = None, cycle_id: int | None = None, reason: str = "manual",
                  worker: str | None = None) -> Position:
    """Buy ``qty`` of ``symbol`` and record the position; rerunning with the same order id adopts it.

    With a broker that supports legs the entry is a bracket: stop and target live at the broker.
    """
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        if order is not None and order.position_id is not None:
            return s.get(Position, order.position_id)
    symbol, qty, quote, stop, target = validate_entry(rt, symbol, qty, stop, target)
    stop = stop if stop is not None else round(quote.price * (1 - rt.settings.stop_loss_pct), 2)
    target = target if target is not None else round(quote.price * (1 + rt.settings.take_profit_pct), 2)
    now = rt.clock.now()
    ensure_order(client_order_id, symbol=symbol, side="buy", purpose="entry", qty=qty, cycle_id=cycle_id, now=now)
    legs = {"stop_loss_price": stop, "take_profit_price": target} if rt.broker.supports_legs else {}
    report = orders.submit(rt, OrderRequest(client_order_id, symbol, "buy", qty, **legs), accept_partial=True,
                           wait=rt.settings.fill_wait_seconds)
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        if order.position_id is not None:
            return s.get(Position, order.position_id)
        if report.filled_qty <= 0 or report.filled_avg_price is None:
            record_decision(s, kind="entry", action="skip", reason=f"order_{report.status}", symbol=symbol,
                            cycle_id=cycle_id, decided_at=now, worker=worker, details={"broker_reason": report.reason})
            raise BadInput(f"entry order for {symbol} was {report.status}: {report.reason}")
        position = _new_position(s, rt, order, report, quote, stop, target, cycle_id, reason)
        for leg in report.legs:
            orders.record_leg(s, leg, position.id, cycle_id, now)
        record_decision(s, kind="entry", action="enter", reason=reason, symbol=symbol, position_id=position.id,
                        cycle_id=cycle_id, decided_at=now, worker=worker,
                        details={"qty": qty, "price": report.filled_avg_price, "legs": len(report.legs)})
        record_activity(s, "position_opened", now, position_id=position.id, symbol=symbol, qty=position.qty,
                        entry_price=position.entry_price, stop=position.stop_loss_price, target=position.take_profit_price)
    log.info("position_opened", position_id=position.id, symbol=symbol, qty=qty, entry_price=position.entry_price,
             stop=position.stop_loss_price, target=position.take_profit_price, client_order_id=client_order_id,
             legs=len(report.legs))
    return position


def _new_position(s, rt: Runtime, order: Order, report: BrokerOrderReport, quote, stop, target, cycle_id, reason):
    settings = rt.settings
    price = float(report.filled_avg_price)
    security = s.scalar(select(Security).where(Security.symbol == order.symbol))
    if security is None:
        security = Security(symbol=order.symbol, exchange=rt.calendar.code, created_at=wall_now())
        s.add(security)
        s.flush()
    now = rt.clock.now()
    position = Position(
        security_id=security.id, symbol=order.symbol, qty=report.filled_qty, status="open", entry_price=price,
        entry_volume=recent_volume(rt.market_data.bars(order.symbol, now, RECENT_VOLUME_BARS)) or quote.volume,
        high_watermark=price, stop_loss_price=stop, take_profit_price=target,
        max_hold_seconds=settings.max_hold_hours * 3600.0, entry_reason=reason, cycle_id=cycle_id,
        opened_at=report.filled_at or now, last_price=price, updated_at=now,
    )
    s.add(position)
    s.flush()
    order.position_id = position.id
    return position
