"""The automatic chain on real processes: beat → scan_market → evaluate_candidates → enter_position →
monitor_position, with nothing done by hand. The synthetic market's morning movers are found by the
scan, entered within the position limit, each with its own recurring check."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from catalyst import client_ids
from catalyst.db.models import Decision, Order, PaperOrder, Position, ScanResult, ScheduleEntry, TradingCycle
from tests.support import environment, query, wait_for

pytestmark = pytest.mark.e2e

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)  # a Tuesday
MAX_POSITIONS = 2


@pytest.fixture
def chain_env(tmp_path, pg_url, redis_url):
    start = SESSION_OPEN + timedelta(minutes=20)  # the 10:00 scan finds the morning's movers with some history
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_MARKET_DATA": "synthetic", "CATALYST_CLOCK": f"sim:{start.isoformat()}@30",
           "MONITOR_CHECK_INTERVAL": "60", "CATALYST_SCAN_INTERVAL": "1800",
           "CATALYST_MAX_POSITIONS": str(MAX_POSITIONS), "CATALYST_POSITION_SIZE_USD": "5000",
           "CATALYST_HEARTBEAT_INTERVAL": "2",
           # The synthetic market repeats its script every day: relative volume is always about 1.
           "CATALYST_SCAN_MIN_RELATIVE_VOLUME": "0", "CATALYST_SCAN_MIN_GAP_PCT": "-5"}
    with environment(env):
        from catalyst.db.engine import upgrade
        from catalyst.settings import get_settings

        upgrade(get_settings().sqlalchemy_url)
        yield env


def _entered(s) -> list[Position]:
    return s.scalars(select(Position).where(Position.cycle_id.is_not(None)).order_by(Position.id)).all()


def test_beat_scans_evaluates_enters_and_monitors_without_an_operator(chain_env, stack):
    stack.worker()
    stack.beat()

    cycle = wait_for(lambda: query(lambda s: s.scalar(select(TradingCycle).where(TradingCycle.kind == "session"))),
                     120, what="beat's scan of the 10:00 slot")
    assert cycle.slot_at == SESSION_OPEN + timedelta(minutes=30)
    positions = wait_for(lambda: query(lambda s: (p := _entered(s)) and len(p) == MAX_POSITIONS and p), 120,
                         what="the scanner's entries")
    ids = [p.id for p in positions]
    # Every entered position is watched by its own recurring check, which runs.
    for pid in ids:
        wait_for(lambda pid=pid: query(lambda s: s.get(ScheduleEntry, f"monitor-position-{pid}")), 30,
                 what=f"monitor-position-{pid}")
        wait_for(lambda pid=pid: query(lambda s: s.scalar(select(Decision.id).where(
            Decision.kind == "monitor", Decision.position_id == pid).limit(1))), 60, what=f"a check of {pid}")

    with_rows = query(lambda s: (
        s.scalars(select(ScanResult).where(ScanResult.cycle_id == cycle.id)).all(),
        s.scalars(select(Decision).where(Decision.cycle_id == cycle.id, Decision.kind == "evaluate")).all(),
        s.scalars(select(Order).where(Order.purpose == "entry")).all(),
        s.scalars(select(PaperOrder).where(PaperOrder.side == "buy")).all(),
        _entered(s)))
    results, decisions, entry_orders, buys, positions = with_rows
    selected = {r.symbol: r for r in results if r.stage == "selected"}
    entered = {p.symbol for p in positions}
    # The scan chose them; evaluation said enter with a reason; each was bought once, under the cycle's id.
    assert entered <= set(selected), "only selected candidates are entered"
    enters = {d.symbol for d in decisions if d.action == "enter"}
    assert entered <= enters
    assert len(positions) == MAX_POSITIONS, "the position limit holds: the other candidates were refused"
    for order in entry_orders:
        assert order.client_order_id == client_ids.entry(order.cycle_id, order.symbol)
    assert Counter(b.symbol for b in buys) == Counter(p.symbol for p in positions), "one buy per position"
    assert all(p.entry_reason for p in positions)
