"""Position lifecycle on the database: open, request exit, execute exit (checks live in monitor.py).

Each function is one idempotent step, safe to run twice or to resume after a crash:
- entries and exits carry deterministic ``client_order_id``s, and the broker adopts a
  repeated id instead of placing a second order;
- a position moves ``open → closing → closed`` only by conditional UPDATE, so exactly one
  caller wins each transition;
- an ``orders`` row is written *before* the broker is called, so an order whose reply was
  lost is never forgotten.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from catalyst import hooks
from catalyst.brokers.base import BrokerOrderReport, OrderRequest
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position, Security
from catalyst.domain import BadInput, require_price
from catalyst.exits import quote_problem, realized_pnl
from catalyst.records import bump, record_activity, record_decision, wall_now
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.positions")
RECENT_VOLUME_BARS = 5


def recent_volume(bars) -> float | None:
    """Mean volume of the given bars: one quiet minute must not look like a volume collapse."""
    return sum(b.volume for b in bars) / len(bars) if bars else None


class UnknownPosition(BadInput):
    pass


def exit_client_order_id(position_id: int) -> str:
    return f"exit-p{position_id}"


def entry_client_order_id(cycle_id: int, symbol: str) -> str:
    return f"entry-c{cycle_id}-{symbol}"[:48]


# -- entry -------------------------------------------------------------------------------------
def validate_entry(rt: Runtime, symbol: str, qty: float, stop: float | None, target: float | None):
    """Refuse bad entries before anything is written; returns (symbol, qty, quote, stop, target)."""
    symbol = (symbol or "").strip().upper()
    try:
        qty = float(qty)
    except (TypeError, ValueError):
        raise BadInput(f"qty {qty!r} is not a number") from None
    if not math.isfinite(qty) or qty <= 0:
        raise BadInput(f"qty must be above zero, got {qty:g}")
    if symbol not in rt.market_data.symbols():
        raise BadInput(f"unknown symbol {symbol!r}: market data {rt.market_data.name} does not list it")
    now = rt.clock.now()
    quote = rt.market_data.quote(symbol, now)
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
    """Buy ``qty`` of ``symbol`` and record the position; rerunning with the same order id adopts it."""
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        if order is not None and order.position_id is not None:
            return s.get(Position, order.position_id)
    symbol, qty, quote, stop, target = validate_entry(rt, symbol, qty, stop, target)
    now = rt.clock.now()
    _ensure_order(client_order_id, symbol=symbol, side="buy", purpose="entry", qty=qty, cycle_id=cycle_id, now=now)
    report = rt.broker.submit_order(OrderRequest(client_order_id, symbol, "buy", qty))
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        _apply_report(order, report, rt.clock.now())
        if order.position_id is not None:
            return s.get(Position, order.position_id)
        if not report.is_filled:
            record_decision(s, kind="entry", action="skip", reason=f"order_{report.status}", symbol=symbol,
                            cycle_id=cycle_id, decided_at=now, worker=worker, details={"broker_reason": report.reason})
            raise BadInput(f"entry order for {symbol} was {report.status}: {report.reason}")
        position = _new_position(s, rt, order, report, quote, stop, target, cycle_id, reason)
        record_decision(s, kind="entry", action="enter", reason=reason, symbol=symbol, position_id=position.id,
                        cycle_id=cycle_id, decided_at=now, worker=worker,
                        details={"qty": qty, "price": report.filled_avg_price})
        record_activity(s, "position_opened", now, position_id=position.id, symbol=symbol, qty=qty,
                        entry_price=position.entry_price, stop=position.stop_loss_price, target=position.take_profit_price)
    log.info("position_opened", position_id=position.id, symbol=symbol, qty=qty, entry_price=position.entry_price,
             stop=position.stop_loss_price, target=position.take_profit_price, client_order_id=client_order_id)
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
        high_watermark=price,
        stop_loss_price=stop if stop is not None else round(price * (1 - settings.stop_loss_pct), 2),
        take_profit_price=target if target is not None else round(price * (1 + settings.take_profit_pct), 2),
        max_hold_seconds=settings.max_hold_hours * 3600.0, entry_reason=reason, cycle_id=cycle_id,
        opened_at=report.filled_at or now, last_price=price, updated_at=now,
    )
    s.add(position)
    s.flush()
    order.position_id = position.id
    return position


def _ensure_order(client_order_id: str, *, symbol: str, side: str, purpose: str, qty: float, now: datetime,
                  position_id: int | None = None, cycle_id: int | None = None) -> None:
    """Write the intent before calling the broker; an existing row (a retry) is kept as it is."""
    try:
        with session_scope() as s:
            if s.scalar(select(Order.id).where(Order.client_order_id == client_order_id)) is None:
                s.add(Order(client_order_id=client_order_id, symbol=symbol, side=side, purpose=purpose, qty=qty,
                            position_id=position_id, cycle_id=cycle_id, status="pending_submit", created_at=now,
                            updated_at=now))
    except IntegrityError:
        pass  # a concurrent retry wrote it first


def _apply_report(order: Order, report: BrokerOrderReport, now: datetime) -> None:
    order.broker_order_id = report.broker_order_id
    order.status = report.status
    order.filled_qty = report.filled_qty
    order.filled_avg_price = report.filled_avg_price
    order.filled_at = report.filled_at
    order.submitted_at = order.submitted_at or now
    order.error = None if report.is_filled else report.reason
    order.updated_at = now


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
    """Sell a ``closing`` position exactly once and close it; safe to rerun at any point."""
    with session_scope() as s:
        position = s.get(Position, position_id)
        if position is None:
            raise UnknownPosition(f"unknown position id {position_id}")
        if position.status == "closed":
            return position
        status, symbol, qty = position.status, position.symbol, position.qty
    if status == "open":
        request_exit(rt, position_id, "manual")
    client_order_id = exit_client_order_id(position_id)
    now = rt.clock.now()
    _ensure_order(client_order_id, symbol=symbol, side="sell", purpose="exit", qty=qty, now=now,
                  position_id=position_id)
    log.info("exit_submitted", position_id=position_id, symbol=symbol, qty=qty, client_order_id=client_order_id)
    report = rt.broker.submit_order(OrderRequest(client_order_id, symbol, "sell", qty))
    hooks.pause("exit_after_submit")
    with session_scope() as s:
        order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
        _apply_report(order, report, rt.clock.now())
        position = s.get(Position, position_id)
        if not report.is_filled:
            log.warning("exit_not_filled", position_id=position_id, status=report.status, reason=report.reason)
            return position
        closed_at = report.filled_at or rt.clock.now()
        pnl, pnl_pct = realized_pnl(position.entry_price, report.filled_avg_price, position.qty)
        won = s.execute(
            update(Position).where(Position.id == position_id, Position.status == "closing").values(
                status="closed", closed_at=closed_at, exit_price=report.filled_avg_price, realized_pnl=pnl,
                realized_pnl_pct=pnl_pct, last_price=report.filled_avg_price, updated_at=closed_at)
        ).rowcount == 1
        if won:
            record_decision(s, kind="exit", action="exit", reason=position.exit_reason, symbol=symbol,
                            position_id=position_id, decided_at=closed_at, worker=worker,
                            details={"exit_price": report.filled_avg_price, "realized_pnl": pnl, "pnl_pct": pnl_pct})
            record_activity(s, "position_closed", closed_at, position_id=position_id, symbol=symbol,
                            reason=position.exit_reason, exit_price=report.filled_avg_price, realized_pnl=pnl)
            bump(s, worker, exits_executed=1)
    if won:
        log.info("position_closed", position_id=position_id, symbol=symbol, reason=position.exit_reason,
                 exit_price=report.filled_avg_price, realized_pnl=round(pnl, 2), pnl_pct=round(pnl_pct, 3))
    with session_scope() as s:
        return s.get(Position, position_id)
