"""The watchdog works the same on Alpaca (real alpaca-py against the strict fake, PostgreSQL, Redis)."""

from __future__ import annotations

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from sqlalchemy import select

from catalyst.db.models import Order, Position
from catalyst.entries import open_position
from catalyst.reconcile import reconcile
from catalyst.runtime import get_runtime
from tests.support import query
from tests.test_alpaca import fake, market, sells  # noqa: F401  (fixtures)
from tests.test_reconcile import kinds, monitored

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def raw(fake) -> TradingClient:
    """Somebody else at the same account: the operator's own app, or Alpaca's dashboard."""
    return TradingClient(fake.key_id, fake.secret, paper=True, url_override=fake.base_url)


def cancel_bracket(fake, leg_index: int) -> None:
    """Cancel one leg (Alpaca cancels the group) and wait until the broker says it is done."""
    client = raw(fake)
    leg_id = fake.order("entry-c1-ACME")["legs"][leg_index]["id"]
    client.cancel_order_by_id(leg_id)
    for _ in range(50):  # DELETE answers 204 at once; the order passes through pending_cancel
        if client.get_order_by_id(leg_id).status.value == "canceled":
            return
    raise AssertionError(f"leg {leg_id} was never canceled")


def open_acme(qty: int = 10) -> Position:
    position = open_position(get_runtime(), symbol="ACME", qty=qty, client_order_id="entry-c1-ACME")
    monitored(position.id)
    return position


def live_stops(position_id: int) -> list[Order]:
    return query(lambda s: s.scalars(select(Order).where(
        Order.position_id == position_id, Order.purpose == "stop",
        Order.status.in_(("new", "held", "accepted", "pending_new")))).all())


def test_a_bracket_position_at_alpaca_reconciles_clean(fake, market):
    open_acme()
    assert reconcile(get_runtime(), fix=True) == []
    gets = fake.count("GET", "/v2/positions") + sum(1 for r in fake.requests if r.path == "/v2/orders")
    assert reconcile(get_runtime(), fix=False) == []
    assert fake.count("GET", "/v2/positions") + sum(1 for r in fake.requests if r.path == "/v2/orders") - gets == 2


def test_a_stop_cancelled_at_the_broker_is_found_and_placed_again(fake, market):
    position = open_acme()
    cancel_bracket(fake, 1)  # the stop leg: Alpaca cancels the whole group
    findings = reconcile(get_runtime(), fix=True)
    assert ("unprotected_position", "critical") in {(f.kind, f.severity) for f in findings}
    assert any(f.kind == "unprotected_position" and f.action.startswith("fixed: stop placed") for f in findings)
    (stop,) = live_stops(position.id)
    at_broker = fake.order(stop.client_order_id)
    assert (at_broker["type"], at_broker["time_in_force"], float(at_broker["qty"])) == ("stop", "gtc", 10)
    assert float(at_broker["stop_price"]) == position.stop_loss_price
    assert reconcile(get_runtime(), fix=True) == []  # a clean second run
    assert sells(fake) == []  # protection, never a sale


def test_shares_bought_outside_catalyst_are_adopted_and_protected(fake, market):
    raw(fake).submit_order(MarketOrderRequest(symbol="ACME", qty=4, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    findings = reconcile(get_runtime(), fix=True)
    assert kinds(findings)[0] == ("orphan_position", "fixed: adopted as position 1 and monitored")
    (position,) = query(lambda s: s.scalars(select(Position)).all())
    assert (position.symbol, position.qty, position.entry_reason) == ("ACME", 4, "adopted")
    monitored(position.id)
    assert len(live_stops(position.id)) == 1  # adopted shares get a broker-side stop too
    assert reconcile(get_runtime(), fix=True) == []
    assert float(fake.positions["ACME"]["qty"]) == 4 and sells(fake) == []


def test_a_position_sold_outside_catalyst_is_closed_with_that_fill(fake, market):
    position = open_acme()
    cancel_bracket(fake, 0)
    market.set("ACME", 103.0)
    raw(fake).submit_order(MarketOrderRequest(symbol="ACME", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    findings = reconcile(get_runtime(), fix=True)
    assert ("phantom_position", "critical") in {(f.kind, f.severity) for f in findings}
    closed = query(lambda s: s.get(Position, position.id))
    assert closed.status == "open"  # the sale was not ours: no fill of ours accounts for it
    assert [f.action for f in findings if f.kind == "phantom_position"] == ["escalated"]
