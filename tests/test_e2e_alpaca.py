"""Real worker and beat processes trading through alpaca-py against the local fake Alpaca server,
on PostgreSQL and Redis: bracket entry, monitored exit that cancels the legs and sells once, a 429
storm under the shared rate limit, and the live-endpoint refusal."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from catalyst.db.models import Order, Position, ScheduleEntry
from catalyst.entries import open_position
from catalyst.processes import spawn_worker
from catalyst.runtime import get_runtime
from tests.alpaca_support import EST, alpaca_env, alpaca_market
from tests.fake_alpaca import FakeAlpaca
from tests.support import query, wait_for

pytestmark = pytest.mark.e2e
NEAR_CLOSE = datetime(2025, 3, 4, 15, 40, tzinfo=EST)  # five minutes before the near-close exit


def market_sells(fake, symbol):
    return [o for o in fake.orders if o["symbol"] == symbol and o["side"] == "sell" and o["type"] == "market"]


@pytest.fixture
def fake():
    with FakeAlpaca(now=NEAR_CLOSE) as api:
        yield api


def test_bracket_entry_is_monitored_and_exits_once_cancelling_its_legs(fake, pg_url, redis_url, tmp_path, stack):
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, start=NEAR_CLOSE, speed=30)
    with alpaca_market(fake, env, {"ACME": 100.0}):
        subprocess.run([sys.executable, "-m", "catalyst.cli", "db", "upgrade"], check=True, capture_output=True)
        stack.worker()
        stack.beat()
        out = subprocess.run([sys.executable, "-m", "catalyst.cli", "open", "ACME", "--qty", "10"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (position,) = query(lambda s: s.scalars(select(Position)).all())
        parent = fake.orders_by_client_id()[query(lambda s: s.scalar(
            select(Order.client_order_id).where(Order.purpose == "entry")))]
        assert parent["order_class"] == "bracket" and [leg["status"] for leg in parent["legs"]] == ["new", "held"]
        wait_for(lambda: query(lambda s: s.get(ScheduleEntry, f"monitor-position-{position.id}")), 10,
                 what="the position's monitor entry")

        closed = wait_for(lambda: query(lambda s: (p := s.get(Position, position.id)).status == "closed" and p), 60,
                          what="the near-close exit")
        assert closed.exit_reason == "near_close"
        legs = fake.order(parent["client_order_id"])["legs"]
        assert [leg["status"] for leg in legs] == ["canceled", "canceled"]
        assert len(market_sells(fake, "ACME")) == 1 and "ACME" not in fake.positions
        rows = {o.purpose: o.status for o in query(lambda s: s.scalars(select(Order)).all())}
        assert rows == {"entry": "filled", "stop": "canceled", "take_profit": "canceled", "exit": "filled"}


def test_a_429_storm_stays_under_the_shared_limit_and_every_exit_still_happens(fake, pg_url, redis_url, tmp_path,
                                                                            stack):
    limit, window = 40, 10.0
    # Slow simulated time: the storm's pauses (25 x 2 s) must not carry the exits past the 16:00 close, after
    # which Alpaca (and the strict fake) queues market orders for the next open instead of filling them.
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, start=NEAR_CLOSE.replace(minute=44), speed=5,
                     ALPACA_RATE_LIMIT=str(limit), ALPACA_RATE_WINDOW_SECONDS=str(window),
                     CATALYST_MAX_POSITIONS="10")  # six opened by hand
    symbols = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
    with alpaca_market(fake, env, {s: 50.0 for s in symbols}):
        subprocess.run([sys.executable, "-m", "catalyst.cli", "db", "upgrade"], check=True, capture_output=True)
        ids = [open_position(get_runtime(), symbol=s, qty=5, client_order_id=f"entry-storm-{s}").id for s in symbols]
        fake.fail("*", "/v2", "429", times=25)  # every kind of call gets refused for a while
        stack.worker(name="w1")
        stack.worker(name="w2")
        stack.beat()
        wait_for(lambda: all(query(lambda s: s.get(Position, pid)).status == "closed" for pid in ids), 120,
                 what="every exit despite the 429 storm")
        for s in symbols:
            assert len(market_sells(fake, s)) == 1, s
        times = sorted(fake.request_times("/v2"))
        worst = max(sum(1 for t in times if start <= t < start + window) for start in times)
        # The shared bucket grants at most `limit` per window to all processes together; arrival at the
        # fake can lag a grant by a scheduling hiccup on this 2-core machine, hence the small allowance.
        assert worst <= limit + 3, f"{worst} requests in one {window:g}s window (limit {limit})"


def test_a_live_endpoint_without_opt_in_is_refused_at_start_up(fake, pg_url, redis_url, tmp_path):
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, ALPACA_BASE_URL="https://api.alpaca.markets")
    with alpaca_market(fake, {k: v for k, v in env.items() if k != "ALPACA_BASE_URL"}, {}):
        subprocess.run([sys.executable, "-m", "catalyst.cli", "db", "upgrade"], check=True, capture_output=True)
        worker = spawn_worker(env, tmp_path / "logs", name="refused")
        code = worker.popen.wait(timeout=60)
        text = worker.log_text()
    assert code != 0
    assert "refusing to trade on https://api.alpaca.markets" in text and "CATALYST_LIVE_TRADING=true" in text
    assert fake.secret not in text
    assert fake.count("*", "/v2/orders") == 0
