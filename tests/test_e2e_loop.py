"""The whole loop on real processes: a position opened by hand is monitored by its own beat entry
and exits exactly once when the price crosses its stop — on PostgreSQL + Redis and on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from catalyst.db.models import ActivityLog, Order, PaperOrder, Position, ScheduleEntry, ServiceHealth
from tests.support import environment, query, wait_for, write_replay_csv

pytestmark = pytest.mark.e2e

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)  # a Tuesday, before the March DST change


def falling_prices() -> list[float]:
    """Flat at 100 for 5 minutes, then down a dollar a minute to 90, then flat."""
    return [100.0] * 5 + [100.0 - i for i in range(1, 11)] + [90.0] * 100


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "catalyst.cli", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"catalyst {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
    return result


def base_env(tmp_path, speed: float = 60) -> dict[str, str]:
    csv = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, falling_prices())
    start = SESSION_OPEN + timedelta(minutes=1)
    return {
        "CATALYST_VAR_DIR": str(tmp_path / "var"),
        "CATALYST_MARKET_DATA": f"replay:{csv}",
        "CATALYST_CLOCK": f"sim:{start.isoformat()}@{speed:g}",
        "MONITOR_CHECK_INTERVAL": "60",
        "CATALYST_AUTO_ENTRIES": "false",  # no automatic entries: this test opens by hand
        "CATALYST_HEARTBEAT_INTERVAL": "2",
    }


@pytest.fixture(params=["postgres_redis", "embedded"])
def loop_env(request, tmp_path):
    env = base_env(tmp_path)
    if request.param == "postgres_redis":
        env["DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    with environment(env):
        cli("db", "upgrade")
        yield env


def test_stop_loss_closes_position_once_and_its_schedule_comes_and_goes(loop_env, stack):
    stack.worker()
    stack.beat()
    wait_for(lambda: query(lambda s: s.scalar(select(func.count()).select_from(ServiceHealth)
                                              .where(ServiceHealth.status.in_(("online", "active"))))) >= 2,
             30, what="worker and beat heartbeats")

    opened = cli("open", "TEST", "--qty", "10", "--stop", "95", "--target", "120", "--json")
    position_id = json.loads(opened.stdout)["id"]
    entry = f"monitor-position-{position_id}"
    wait_for(lambda: query(lambda s: s.get(ScheduleEntry, entry)), 10, what=f"{entry} to appear")
    assert json.loads(cli("reconcile", "--json").stdout) == []  # a healthy system: books and broker agree

    closed = wait_for(lambda: query(lambda s: (p := s.get(Position, position_id)).status == "closed" and p), 90,
                      what="the stop loss exit")
    assert closed.exit_reason == "stop_loss"
    assert closed.exit_price <= 95.0
    assert closed.realized_pnl == pytest.approx((closed.exit_price - closed.entry_price) * 10)
    exit_orders = query(lambda s: s.scalars(select(Order).where(Order.position_id == position_id,
                                                                Order.purpose == "exit")).all())
    assert len(exit_orders) == 1 and exit_orders[0].status == "filled"
    broker_sells = query(lambda s: s.scalar(select(func.count()).select_from(PaperOrder).where(PaperOrder.side == "sell")))
    assert broker_sells == 1
    wait_for(lambda: query(lambda s: s.get(ScheduleEntry, entry) is None), 10, what=f"{entry} to disappear")

    assert json.loads(cli("reconcile", "--json").stdout) == []
    runs = query(lambda s: s.scalars(select(ActivityLog).where(ActivityLog.event == "reconcile_run")).all())
    scheduled = [r.details for r in runs if r.details["worker"] != "cli"]
    assert scheduled and all(r["fix"] and r["findings"] == 0 for r in scheduled)  # the watchdog ran, found nothing

    health = {h.kind: h for h in query(lambda s: s.scalars(select(ServiceHealth)).all())}
    assert health["worker"].checks >= 1 and health["worker"].positions_checked >= 1
    assert health["worker"].exits_executed == 1
    assert health["beat"].status == "active"
    for row in health.values():  # heartbeats are fresh (interval 2 s in this test, 10 s by default, 30 s at most)
        assert (datetime.now(timezone.utc) - row.last_heartbeat).total_seconds() < 30
