"""Paper broker: fills market orders at the market-data price and keeps its own book.

Its book (orders, positions, cash) lives in its own tables, written in its own
transactions, exactly as a remote broker's state is separate from ours. That keeps the
exactly-once logic honest: a worker killed after the paper broker filled an order finds the
fill here on restart, just as it would at Alpaca.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from catalyst.brokers.base import BrokerOrderReport, BrokerPositionReport, OrderRequest
from catalyst.clock import Clock
from catalyst.db.engine import session_scope
from catalyst.db.models import PaperAccount, PaperOrder, PaperPosition
from catalyst.marketdata.base import MarketData


class PaperBroker:
    """Market orders only; stops and targets are enforced by the monitor, not by broker legs."""

    name = "paper"
    supports_legs = False

    def __init__(self, market_data: MarketData, clock: Clock, starting_cash: float, db_url: str | None = None):
        self.market_data = market_data
        self.clock = clock
        self.starting_cash = starting_cash
        self.db_url = db_url

    def submit_order(self, request: OrderRequest) -> BrokerOrderReport:
        existing = self.get_order(request.client_order_id)
        if existing is not None:
            return existing
        try:
            with session_scope(self.db_url) as s:
                order = self._fill(s, request)
                s.add(order)
                s.flush()
                return _report(order)
        except IntegrityError:  # the same client id raced in from another worker: adopt it
            return self.get_order(request.client_order_id)

    def get_order(self, client_order_id: str) -> BrokerOrderReport | None:
        with session_scope(self.db_url) as s:
            order = s.scalar(select(PaperOrder).where(PaperOrder.client_order_id == client_order_id))
            return _report(order) if order else None

    def get_order_by_id(self, broker_order_id: str) -> BrokerOrderReport | None:
        with session_scope(self.db_url) as s:
            order = s.get(PaperOrder, broker_order_id)
            return _report(order) if order else None

    def cancel_order(self, broker_order_id: str) -> BrokerOrderReport | None:
        return self.get_order_by_id(broker_order_id)  # paper market orders fill at once: nothing to cancel

    def replace_stop(self, broker_order_id: str, stop_price: float) -> BrokerOrderReport:
        raise NotImplementedError("the paper broker has no stop legs")

    def get_position(self, symbol: str) -> BrokerPositionReport | None:
        with session_scope(self.db_url) as s:
            pos = s.get(PaperPosition, symbol)
            return BrokerPositionReport(pos.symbol, pos.qty, pos.avg_entry_price) if pos and pos.qty else None

    def cash(self) -> float:
        with session_scope(self.db_url) as s:
            return self._account(s).cash

    # -- internals ---------------------------------------------------------------
    def _account(self, s) -> PaperAccount:
        account = s.get(PaperAccount, 1)
        if account is None:
            account = PaperAccount(id=1, cash=self.starting_cash, updated_at=self.clock.now())
            s.add(account)
            s.flush()
        return account

    def _fill(self, s, request: OrderRequest) -> PaperOrder:
        now = self.clock.now()
        order = PaperOrder(
            id=str(uuid.uuid4()), client_order_id=request.client_order_id, symbol=request.symbol,
            side=request.side, qty=request.qty, status="rejected", created_at=now,
        )
        quote = self.market_data.quote(request.symbol, now)
        if quote is None:
            return order
        position = s.get(PaperPosition, request.symbol)
        held = position.qty if position else 0.0
        account = self._account(s)
        cost = quote.price * request.qty
        if request.side == "sell" and held < request.qty:
            return order
        if request.side == "buy" and cost > account.cash:
            return order
        if request.side == "buy":
            if position is None:
                position = PaperPosition(symbol=request.symbol, qty=0.0, avg_entry_price=quote.price)
                s.add(position)
            total = position.qty + request.qty
            position.avg_entry_price = (position.avg_entry_price * position.qty + cost) / total
            position.qty = total
            account.cash -= cost
        else:
            position.qty = held - request.qty
            account.cash += cost
        account.updated_at = now
        order.status, order.filled_qty, order.filled_avg_price, order.filled_at = "filled", request.qty, quote.price, now
        return order


def _report(order: PaperOrder) -> BrokerOrderReport:
    return BrokerOrderReport(
        broker_order_id=order.id, client_order_id=order.client_order_id, symbol=order.symbol,
        side=order.side, qty=order.qty, status=order.status, filled_qty=order.filled_qty,
        filled_avg_price=order.filled_avg_price, filled_at=order.filled_at,
        reason=None if order.status == "filled" else "no price or insufficient quantity/cash",
    )
