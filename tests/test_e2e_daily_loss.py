"""The daily-loss path on real processes (issue 9): a real worker and beat on PostgreSQL and Redis, the
paper broker and a replayed market that falls in two steps. Beat's ``check-risk`` entry runs the risk
monitor every 60 simulated seconds (2 s of real time at speed 30).

Four positions of 40 shares bought at 100 (160 shares; limit 600 USD, warning at 450 USD):
- at 97 the day is 480 USD down (80 %): REDUCING — an entry is refused with its reason, an exit by hand
  still goes through;
- at 95.50 the day is 660 USD down (110 %): the emergency stop — every position closed once with
  ``emergency_stop``, the entry in flight cancelled, HALTED;
- worker and beat are killed and started again (with the limit raised, as an operator would before
  resuming): still HALTED, nothing admitted; ``resume`` without ``--confirm`` refuses; ``resume --confirm``
  lets an entry in, and the monitor leaves it ACTIVE.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from catalyst.cli import main
from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, Order, PaperOrder, PaperPosition, Position, ScheduleEntry
from catalyst.db.models import TradingState as StateRow
from catalyst.entries import EntryRefused, open_position
from catalyst.runtime import get_runtime
from tests.support import environment, query, rows, seed_position, wait_for, write_replay_csv

pytestmark = pytest.mark.e2e

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
HELD = ["AAA", "BBB", "CCC", "DDD"]
SPARE = "EEE"  # flat: the symbol entries are tried in
QTY = 40
SPEED = 30


def falling() -> list[float]:
    """100 for 4 minutes, 97 until minute 40 (REDUCING), then 95.50 (the limit)."""
    return [100.0] * 4 + [97.0] * 36 + [95.5] * 200


def state() -> dict:
    return query(lambda s: dict(s.get(StateRow, "halted").value) if s.get(StateRow, "halted") else {})


def risk_sends() -> int:
    return query(lambda s: (e := s.get(ScheduleEntry, "check-risk")) and e.total_sent or 0)


def try_entry() -> Position:
    return open_position(get_runtime(), symbol=SPARE, qty=1, client_order_id=f"manual-{uuid.uuid4().hex[:24]}")


def seed_held(opened_at: datetime) -> list[int]:
    """Positions bought earlier (our books and the paper broker's), with stops below today's low."""
    ids = [seed_position(s, 100.0, opened_at, qty=QTY) for s in HELD]
    with session_scope() as s:
        for symbol in HELD:
            s.add(PaperPosition(symbol=symbol, qty=QTY, avg_entry_price=100.0))
    return ids


def sells() -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in rows(PaperOrder, PaperOrder.side == "sell"):
        counts[o.symbol] = counts.get(o.symbol, 0) + 1
    return counts


def test_daily_loss_reduces_then_stops_everything_once_and_stays_halted_until_resumed(pg_url, redis_url, tmp_path,
                                                                                      stack):
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, falling())) for s in HELD]
    paths.append(str(write_replay_csv(tmp_path / f"{SPARE}.csv", SPARE, SESSION_OPEN, [100.0] * 240)))
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_MARKET_DATA": "replay:" + ",".join(paths),
           "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=1)).isoformat()}@{SPEED}",
           "MONITOR_CHECK_INTERVAL": "60", "CATALYST_RISK_CHECK_INTERVAL": "60", "CATALYST_AUTO_ENTRIES": "false",
           "CATALYST_MAX_DAILY_LOSS_USD": "600", "CATALYST_DAILY_LOSS_WARNING_PCT": "0.75",
           "CATALYST_MIN_REWARD_RISK": "0", "CATALYST_HEARTBEAT_INTERVAL": "2"}
    with environment(env):
        assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
        ids = seed_held(SESSION_OPEN - timedelta(days=1))
        stack.worker()
        stack.beat()

        # 75 %: REDUCING. An entry is refused with its reason; an exit by hand goes through.
        reducing = wait_for(lambda: state().get("state") == "REDUCING" and state(), 90, interval=0.5,
                            what="REDUCING at the daily loss warning")
        assert reducing["by"] == "risk_monitor" and reducing["daily_pnl"]["used_pct"] >= 75
        with pytest.raises(EntryRefused) as refused:
            try_entry()
        assert refused.value.reason == "reducing"
        assert query(lambda s: s.scalars(select(Decision.reason).where(Decision.kind == "entry")).all()) == ["reducing"]
        closed_by_hand = CliRunner().invoke(main, ["close", str(ids[0])])
        assert closed_by_hand.exit_code == 0, closed_by_hand.output
        assert query(lambda s: s.get(Position, ids[0])).exit_reason == "manual"
        assert query(lambda s: s.get(Position, ids[0])).status == "closed"
        cid = f"manual-{uuid.uuid4().hex[:24]}"  # an entry admitted earlier, its order not yet sent
        with session_scope() as s:
            now = get_runtime().clock.now()
            s.add(Order(client_order_id=cid, symbol=SPARE, side="buy", purpose="entry", qty=1, reference_price=100.0,
                        stop_loss_price=95.0, take_profit_price=115.0, status="pending_submit", created_at=now,
                        updated_at=now))

        # 100 %: the emergency stop. Every position closed exactly once with emergency_stop.
        halted = wait_for(lambda: state().get("state") == "HALTED" and state(), 120, interval=0.5,
                          what="HALTED at the daily loss limit")
        assert halted["by"] == "risk_monitor" and halted["flatten"] is True and halted["daily_pnl"]["used_pct"] >= 100
        wait_for(lambda: all(query(lambda s: s.get(Position, i)).status == "closed" for i in ids), 60, interval=0.5,
                 what="every position closed")
        assert [query(lambda s: s.get(Position, i)).exit_reason for i in ids[1:]] == ["emergency_stop"] * 3
        assert sells() == {s: 1 for s in HELD}
        assert query(lambda s: s.scalar(select(Order.status).where(Order.client_order_id == cid))) == "canceled"
        assert rows(PaperOrder, PaperOrder.client_order_id == cid) == []
        risk = query(lambda s: s.scalars(select(Decision).where(Decision.kind == "risk").order_by(Decision.id)).all())
        assert [(d.action, d.reason) for d in risk] == [("reduce", "daily_loss_warning"), ("halt", "daily_loss_limit")]

        # Worker and beat die and come back (the operator has raised the limit meanwhile): still HALTED.
        for proc in list(stack.procs):
            proc.kill()
    raised = {**env, "CATALYST_MAX_DAILY_LOSS_USD": "5000"}
    with environment(raised):
        stack.worker(name="worker2", env_extra={"CATALYST_MAX_DAILY_LOSS_USD": "5000"})
        stack.beat(name="beat2")
        sent = risk_sends()
        wait_for(lambda: risk_sends() >= sent + 3, 60, interval=0.5, what="the risk monitor running again")
        assert state()["state"] == "HALTED" and state()["by"] == "risk_monitor"
        with pytest.raises(EntryRefused) as refused:
            try_entry()
        assert refused.value.reason == "halted"

        refused_resume = CliRunner().invoke(main, ["resume"])
        assert refused_resume.exit_code != 0 and "--confirm" in refused_resume.output
        assert state()["state"] == "HALTED"

        resumed = CliRunner().invoke(main, ["resume", "--confirm"])
        assert resumed.exit_code == 0, resumed.output
        assert state()["state"] == "ACTIVE" and state()["resumed_by"]
        position = try_entry()
        assert position.status == "open"
        sent = risk_sends()
        wait_for(lambda: risk_sends() >= sent + 2, 60, interval=0.5, what="two more risk checks")
        assert state()["state"] == "ACTIVE"  # 660 lost of 5,000: the monitor leaves it ACTIVE
        assert sells() == {s: 1 for s in HELD}
