"""Paper broker: fills market orders at the market-data price and keeps its own book.

Its book (orders, positions, cash) lives in its own tables, written in its own
transactions, exactly as a remote broker's state is separate from ours. That keeps the
exactly-once logic honest: a worker killed after the paper broker filled an order finds the
fill here on restart, just as it would at Alpaca.

It gives the guarantees a real broker gives under concurrency: the order row claims its
client id before anything moves (a racing duplicate waits on it, then adopts it), and cash
and shares change only by conditional UPDATEs in one transaction, always locking the account
row before a position row, so concurrent fills never lose an update or deadlock.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from catalyst.brokers.base import FINAL_ORDER_STATUSES, BrokerError, BrokerOrderReport, BrokerPositionReport, OrderRequest
from catalyst.clock import Clock
from catalyst.db.engine import dialect_insert, session_scope
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
                order = PaperOrder(id=str(uuid.uuid4()), client_order_id=request.client_order_id,
                                   symbol=request.symbol, side=request.side, qty=request.qty, status="new",
                                   created_at=self.clock.now())
                s.add(order)
                s.flush()  # claims the client id first: a concurrent duplicate blocks here, then fails
                self._fill(s, order)
                report = _report(order)
        except IntegrityError:  # the same client id raced in from another worker: adopt it
            adopted = self.get_order(request.client_order_id)
            if adopted is None:
                raise BrokerError(f"paper broker: order {request.client_order_id} could not be placed") from None
            return adopted
        return report

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

    def list_positions(self) -> list[BrokerPositionReport]:
        with session_scope(self.db_url) as s:
            return [BrokerPositionReport(p.symbol, p.qty, p.avg_entry_price)
                    for p in s.scalars(select(PaperPosition).where(PaperPosition.qty > 1e-9).order_by(PaperPosition.symbol))]

    def list_open_orders(self) -> list[BrokerOrderReport]:
        with session_scope(self.db_url) as s:
            return [_report(o) for o in s.scalars(select(PaperOrder).where(
                PaperOrder.status.not_in(FINAL_ORDER_STATUSES)).order_by(PaperOrder.created_at))]

    def cash(self) -> float:
        with session_scope(self.db_url) as s:
            self._ensure_account(s)
            return s.get(PaperAccount, 1).cash

    def equity(self) -> float:
        """Cash plus every paper position at its current market price."""
        now = self.clock.now()
        with session_scope(self.db_url) as s:
            self._ensure_account(s)
            cash = s.get(PaperAccount, 1).cash
            held = [(p.symbol, p.qty) for p in s.scalars(select(PaperPosition).where(PaperPosition.qty > 1e-9))]
        total = cash
        for symbol, qty in held:
            quote = self.market_data.quote(symbol, now)
            if quote is None:
                raise BrokerError(f"paper broker: no price for {symbol}: equity unknown")
            total += qty * quote.price
        return total

    # -- internals ---------------------------------------------------------------
    def _ensure_account(self, s) -> None:
        """Create the account row once; concurrent first entries never collide on it."""
        s.execute(dialect_insert(s, PaperAccount).values(id=1, cash=self.starting_cash, updated_at=self.clock.now())
                  .on_conflict_do_nothing(index_elements=["id"]))

    def _fill(self, s, order: PaperOrder) -> None:
        """Fill at the market price, or reject; every change is a conditional UPDATE under the account lock."""
        now = self.clock.now()
        quote = self.market_data.quote(order.symbol, now)
        if quote is None:
            order.status = "rejected"
            return
        self._ensure_account(s)
        value = quote.price * order.qty
        account = PaperAccount.__table__.c
        # Lock the account row first, on buys and sells alike: one lock order, no deadlocks.
        if order.side == "buy":
            enough = s.execute(update(PaperAccount).where(account.id == 1, account.cash >= value)
                               .values(cash=account.cash - value, updated_at=now)).rowcount == 1
            if not enough:
                order.status = "rejected"
                return
            self._add_shares(s, order.symbol, order.qty, quote.price)
        else:
            s.execute(update(PaperAccount).where(account.id == 1).values(updated_at=now))
            held = PaperPosition.__table__.c
            sold = s.execute(update(PaperPosition).where(held.symbol == order.symbol, held.qty >= order.qty - 1e-9)
                             .values(qty=held.qty - order.qty)).rowcount == 1
            if not sold:
                order.status = "rejected"
                return
            s.execute(update(PaperAccount).where(account.id == 1).values(cash=account.cash + value))
        order.status, order.filled_qty, order.filled_avg_price, order.filled_at = "filled", order.qty, quote.price, now

    def _add_shares(self, s, symbol: str, qty: float, price: float) -> None:
        held = PaperPosition.__table__.c
        stmt = dialect_insert(s, PaperPosition).values(symbol=symbol, qty=qty, avg_entry_price=price)
        s.execute(stmt.on_conflict_do_update(index_elements=["symbol"], set_={
            "qty": held.qty + stmt.excluded.qty,
            "avg_entry_price": (held.avg_entry_price * held.qty + stmt.excluded.avg_entry_price * stmt.excluded.qty)
            / (held.qty + stmt.excluded.qty)}))


def _report(order: PaperOrder) -> BrokerOrderReport:
    return BrokerOrderReport(
        broker_order_id=order.id, client_order_id=order.client_order_id, symbol=order.symbol,
        side=order.side, qty=order.qty, status=order.status, filled_qty=order.filled_qty,
        filled_avg_price=order.filled_avg_price, filled_at=order.filled_at,
        reason=None if order.status in ("filled", "new") else "no price or insufficient quantity/cash",
    )
