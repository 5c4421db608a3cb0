"""The drift drill with real worker and beat processes (issue 7): a partial take-profit fill at the broker,
then an exit signal — the broker ends flat, never short, and the position is closed once with the P&L of
every fill. Real alpaca-py against the strict fake Alpaca, PostgreSQL and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest
from sqlalchemy import select

from catalyst.db.models import Order, Position, ScheduleEntry
from catalyst.entries import open_position
from catalyst.runtime import get_runtime
from tests.alpaca_support import EST, alpaca_env, alpaca_market
from tests.fake_alpaca import FakeAlpaca
from tests.support import query, wait_for

pytestmark = pytest.mark.e2e
BEFORE_CLOSE = datetime(2025, 3, 4, 15, 40, tzinfo=EST)  # the near-close exit fires at 15:45


@pytest.fixture
def fake():
    with FakeAlpaca(now=BEFORE_CLOSE) as api:
        yield api


def test_partial_take_profit_fill_then_exit_signal_sells_only_the_remainder_once(fake, pg_url, redis_url, tmp_path,
                                                                               stack):
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, start=BEFORE_CLOSE, speed=30)
    with alpaca_market(fake, env, {"ACME": 100.0}):
        subprocess.run([sys.executable, "-m", "catalyst.cli", "db", "upgrade"], check=True, capture_output=True)
        position = open_position(get_runtime(), symbol="ACME", qty=10, client_order_id="entry-c1-ACME")
        take_profit = next(leg for leg in fake.order("entry-c1-ACME")["legs"] if leg["type"] == "limit")
        fake.fill(take_profit["id"], price=115.0, qty=4)  # the target leg sells 4 of 10 at the broker
        stack.worker()
        stack.beat()
        wait_for(lambda: query(lambda s: s.get(ScheduleEntry, f"monitor-position-{position.id}")), 15,
                 what="the position's monitor entry")
        closed = wait_for(lambda: query(lambda s: (p := s.get(Position, position.id)).status == "closed" and p), 90,
                          what="the near-close exit")
        sells = [o for o in fake.orders if o["symbol"] == "ACME" and o["side"] == "sell" and o["type"] == "market"]
        assert [float(o["filled_qty"]) for o in sells] == [6.0]  # only what was still held, once
        assert "ACME" not in fake.positions  # flat, never short
        assert closed.exit_reason == "near_close"
        assert closed.exit_price == pytest.approx((4 * 115.0 + 6 * 100.0) / 10)
        assert closed.realized_pnl == pytest.approx(4 * 15.0)  # every fill counts, the target's included
        exits = query(lambda s: s.scalars(select(Order).where(Order.position_id == position.id,
                                                              Order.purpose == "exit")).all())
        assert len(exits) == 1 and exits[0].qty == 6
        out = subprocess.run([sys.executable, "-m", "catalyst.cli", "reconcile", "--json"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and json.loads(out.stdout) == []  # books and broker agree afterwards
