"""A bracket leg that fills at the broker while the position is ``open`` is noticed within one monitor
interval, batched (issue 7 #8): real alpaca-py against the fake Alpaca, real PostgreSQL and Redis."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from catalyst.db.models import Order, Position
from catalyst.entries import open_position
from catalyst.monitor import check_position, cycle_slot
from catalyst.runtime import get_runtime
from tests.support import query
from tests.test_alpaca import fake, market, next_cycle, sells  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def open_in(symbol: str, qty: int = 10) -> Position:
    return open_position(get_runtime(), symbol=symbol, qty=qty, client_order_id=f"entry-c1-{symbol}")


def list_calls(fake) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and r.path.rstrip("/") == "/v2/orders")


def test_a_stop_leg_filled_before_a_bounce_closes_the_position_within_one_interval(fake, market):
    position = open_in("ACME")  # bracket: stop 95.00, target 115.00
    market.set("ACME", 94.90)  # through the stop: Alpaca sells for us ...
    market.set("ACME", 100.0)  # ... and the price bounces back: no exit signal would fire now
    next_cycle()
    outcome = check_position(get_runtime(), position.id)
    assert (outcome.action, outcome.reason) == ("closed", "stop_loss")
    closed = query(lambda s: s.get(Position, position.id))
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "stop_loss", 94.9)
    assert closed.realized_pnl == pytest.approx((94.9 - 100.0) * 10)
    assert sells(fake) == [] and "ACME" not in fake.positions  # the broker's sell was the only one
    assert check_position(get_runtime(), position.id).action == "closed"  # and it stays closed, once


def test_a_take_profit_leg_fill_closes_the_position_with_its_price(fake, market):
    position = open_in("ACME")
    market.set("ACME", 116.0)  # through the 115.00 target
    market.set("ACME", 109.0)
    next_cycle()
    assert check_position(get_runtime(), position.id).action == "closed"
    closed = query(lambda s: s.get(Position, position.id))
    assert (closed.exit_reason, closed.exit_price) == ("take_profit", 116.0)
    legs = {o.purpose: o.status for o in query(lambda s: s.scalars(select(Order).where(
        Order.position_id == position.id)).all())}
    assert legs["take_profit"] == "filled" and legs["stop"] == "canceled"


def test_legs_are_watched_with_one_open_orders_call_per_cycle(fake, market):
    symbols = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    for s in symbols:
        market.set(s, 50.0)
    ids = [open_in(s).id for s in symbols]
    next_cycle()
    before, by_id = list_calls(fake), fake.count("GET", "/v2/orders/")
    slot = cycle_slot(get_runtime(), get_runtime().clock.now())  # one monitor cycle, however long it takes
    assert [check_position(get_runtime(), pid, slot=slot).action for pid in ids] == ["hold"] * 5
    assert list_calls(fake) - before == 1  # one listing for the whole cycle
    assert fake.count("GET", "/v2/orders/") == by_id  # and no per-position lookups while nothing filled
    market.set("CCC", 46.0)  # CCC's stop (47.50) fills
    next_cycle()
    slot = cycle_slot(get_runtime(), get_runtime().clock.now())
    actions = [check_position(get_runtime(), pid, slot=slot).action for pid in ids]
    assert actions == ["hold", "hold", "closed", "hold", "hold"]
    assert list_calls(fake) - before == 2
