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


def test_a_leg_cancelled_at_the_broker_is_synced_into_our_books(fake, market):
    position = open_acme()
    cancel_bracket(fake, 0)
    findings = reconcile(get_runtime(), fix=True)
    synced = sorted(f.ours["purpose"] for f in findings if f.kind == "order_status_mismatch")
    assert synced == ["stop", "take_profit"]
    assert all(f.action == "fixed: synced to canceled" for f in findings if f.kind == "order_status_mismatch")
    rows = {o.client_order_id: o.status for o in query(lambda s: s.scalars(select(Order).where(
        Order.position_id == position.id, Order.purpose == "take_profit")).all())}
    assert set(rows.values()) == {"canceled"}


def test_an_entry_working_for_more_than_five_minutes_is_escalated_as_stuck(fake, market):
    from datetime import timedelta

    from alpaca.trading.requests import LimitOrderRequest

    from catalyst.db.engine import session_scope
    from tests.test_reconcile import age

    rt = get_runtime()
    monitored()  # beat is running (its scan entry exists)
    resting = raw(fake).submit_order(LimitOrderRequest(symbol="ACME", qty=3, side=OrderSide.BUY, limit_price=80.0,
                                                       time_in_force=TimeInForce.DAY, client_order_id="entry-c9-ACME"))
    with session_scope() as s:
        s.add(Order(client_order_id="entry-c9-ACME", broker_order_id=str(resting.id), symbol="ACME", side="buy",
                    purpose="entry", order_type="limit", qty=3, status=resting.status.value, created_at=rt.clock.now(),
                    updated_at=rt.clock.now()))
    assert reconcile(rt, fix=True) == []  # working for moments: fine
    (order,) = query(lambda s: s.scalars(select(Order).where(Order.client_order_id == "entry-c9-ACME")).all())
    age(Order, order.id, created_at=timedelta(minutes=6))
    (finding,) = reconcile(rt, fix=True)
    assert (finding.kind, finding.severity, finding.action) == ("stuck_order", "warning", "escalated")
    assert fake.order("entry-c9-ACME")["status"] == resting.status.value  # reported, never cancelled on its own
