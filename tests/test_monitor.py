"""The monitor's full judgement on one check, in-process on real PostgreSQL: the decision flow
(STRONG exits, MODERATE asks Claude through a local fake Anthropic server, WEAK holds), dry run,
indicators shared by every position in a symbol, and the status an operator reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from catalyst.db.models import Decision, IndicatorSnapshot, Order, Position, PositionMonitorStatus
from catalyst.monitor import check_position
from catalyst.entries import open_position
from catalyst.runtime import get_runtime
from tests.fake_anthropic import FakeAnthropic
from tests.support import environment, query, seed_position, write_replay_csv

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
OPEN_AT, CHECK_AT = 66, 70  # minutes after the open; 60+ bars by then, so RSI is trusted


def prices_then(level: float) -> list[float]:
    """A gentle wiggle around 100 for an hour (so RSI/MACD are defined), flat 100 from minute 60,
    then ``level`` from minute 68 (a one-step move the monitor sees at minute 70)."""
    wiggle = [100.0 + (0.05 if i % 2 else -0.05) for i in range(60)]
    return wiggle + [100.0] * 8 + [level] * 40


@pytest.fixture(autouse=True)
def database(pg_url, tmp_path):
    """Between checks, this process still reads the test database."""
    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var")}):
        yield


@pytest.fixture
def market(pg_url, tmp_path):
    """``with market(level, minute, **env):`` — this process at ``minute`` with the price moving to ``level``."""

    def _at(level: float, minute: int, **extra: str):
        csv = write_replay_csv(tmp_path / f"TEST-{level}.csv", "TEST", SESSION_OPEN, prices_then(level))
        start = SESSION_OPEN + timedelta(minutes=minute)
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": f"replay:{csv}", "CATALYST_CLOCK": f"sim:{start.isoformat()}@1",
                            **extra})

    return _at


def opened(market, level: float, n: int = 1, **env) -> list[int]:
    """One position entered through the broker; ``n - 1`` more in the same symbol booked alongside it
    (entries refuse a second position in a held symbol, but the monitor must share work across them)."""
    with market(level, OPEN_AT, **env):
        first = open_position(get_runtime(), symbol="TEST", qty=10, client_order_id="entry-m-0")
        return [first.id] + [seed_position("TEST", first.entry_price, first.opened_at, qty=first.qty,
                                           entry_volume=first.entry_volume) for _ in range(n - 1)]


def decisions(kind: str) -> list[Decision]:
    return query(lambda s: s.scalars(select(Decision).where(Decision.kind == kind).order_by(Decision.id)).all())


@pytest.fixture
def claude():
    with FakeAnthropic() as api:
        yield api


def advisor_env(api: FakeAnthropic) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": "sk-ant-test-key", "ANTHROPIC_BASE_URL": api.base_url,
            "CATALYST_ADVISOR_TIMEOUT": "2"}


def test_moderate_signal_exits_when_claude_says_exit(market, claude):
    (pid,) = opened(market, 96.5)
    claude.script("exit")
    with market(96.5, CHECK_AT, **advisor_env(claude)):  # -3.5%: MODERATE stop, 3.5% under the high: MODERATE trail
        outcome = check_position(get_runtime(), pid, worker="w@test")
    assert (outcome.action, outcome.reason) == ("exit", "stop_loss")
    position = query(lambda s: s.get(Position, pid))
    assert (position.status, position.exit_reason) == ("closing", "stop_loss")
    (advice,) = decisions("advisor")
    assert advice.action == "exit" and advice.details["source"] == "advisor"
    assert advice.details["input_tokens"] == 412 and advice.details["output_tokens"] == 37
    assert advice.details["cost_usd"] == pytest.approx((412 * 1.0 + 37 * 5.0) / 1e6)
    assert advice.details["latency_ms"] > 0 and "Momentum" in advice.details["reason"]
    (monitor,) = decisions("monitor")
    assert monitor.details["flow"] == "moderate_advisor"
    assert {s["name"] for s in monitor.signals} >= {"stop_loss", "trailing_stop"}
    assert all(s["strength"] == "MODERATE" for s in monitor.signals)
    body = claude.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "exit_decision"} and body["model"] == "claude-haiku-4-5"
    assert "stop_loss" in str(body["messages"])  # the signals and their numbers are in the prompt


def test_moderate_signal_holds_when_claude_says_hold(market, claude):
    (pid,) = opened(market, 96.5)
    claude.script("hold")
    with market(96.5, CHECK_AT, **advisor_env(claude)):
        outcome = check_position(get_runtime(), pid)
    assert outcome.action == "hold"
    assert query(lambda s: s.get(Position, pid)).status == "open"
    assert decisions("advisor")[0].action == "hold"
    assert decisions("monitor")[0].action == "hold"


def test_moderate_signal_without_a_key_holds_by_the_recorded_fallback(market):
    (pid,) = opened(market, 96.5)
    with market(96.5, CHECK_AT):
        assert check_position(get_runtime(), pid).action == "hold"
    (advice,) = decisions("advisor")
    assert (advice.action, advice.details["source"], advice.details["fallback_cause"]) == ("hold", "fallback", "no_key")


def test_weak_signal_is_recorded_and_held_without_asking_claude(market, claude):
    (pid,) = opened(market, 97.5)
    with market(97.5, CHECK_AT, **advisor_env(claude)):  # -2.5%: WEAK
        assert check_position(get_runtime(), pid).action == "hold"
    assert claude.calls == 0 and decisions("advisor") == []
    (monitor,) = decisions("monitor")
    assert (monitor.action, monitor.reason, monitor.details["flow"]) == ("hold", "stop_loss", "weak")
    assert monitor.signals[0]["strength"] == "WEAK"


def test_strong_signal_exits_without_asking_claude(market, claude):
    (pid,) = opened(market, 94.0)
    with market(94.0, CHECK_AT, **advisor_env(claude)):  # -6%: STRONG
        assert check_position(get_runtime(), pid).action == "exit"
    assert claude.calls == 0
    assert query(lambda s: s.get(Position, pid)).status == "closing"


def test_dry_run_records_the_exit_but_sends_nothing_and_stays_open(market):
    (pid,) = opened(market, 94.0)
    with market(94.0, CHECK_AT, MONITOR_DRY_RUN="true"):
        outcome = check_position(get_runtime(), pid)
    assert outcome.action == "exit_dry_run" and not outcome.needs_exit_task
    (monitor,) = decisions("monitor")
    assert (monitor.action, monitor.reason, monitor.dry_run) == ("exit", "stop_loss", True)
    assert query(lambda s: s.get(Position, pid)).status == "open"
    assert query(lambda s: s.scalar(select(func.count()).select_from(Order).where(Order.purpose == "exit"))) == 0


def test_indicators_are_computed_once_per_symbol_per_cycle_for_all_positions(market):
    ids = opened(market, 100.0, n=5)
    slot = SESSION_OPEN + timedelta(minutes=CHECK_AT)
    with market(100.0, CHECK_AT):
        for pid in ids:
            check_position(get_runtime(), pid, slot=slot)
    snapshots = query(lambda s: s.scalars(select(IndicatorSnapshot)).all())
    assert len(snapshots) == 1 and snapshots[0].bars == CHECK_AT
    assert snapshots[0].rsi is not None and snapshots[0].macd_hist is not None
    used = {d.details["indicators"]["snapshot_id"] for d in decisions("monitor")}
    assert used == {snapshots[0].id}
    with market(100.0, CHECK_AT + 1):  # the next cycle computes afresh
        check_position(get_runtime(), ids[0], slot=slot + timedelta(minutes=1))
    assert query(lambda s: s.scalar(select(func.count()).select_from(IndicatorSnapshot))) == 2


def test_too_few_bars_leave_indicator_signals_unknown_and_recorded(market):
    (pid,) = opened(market, 100.0)
    csv_minute = 20  # by 09:50 only 20 bars exist: RSI (needs 60 trusted) and MACD (34) are unknown
    with market(100.0, csv_minute):
        check_position(get_runtime(), pid)
    (monitor,) = decisions("monitor")
    assert {"rsi_overbought", "macd_bearish"} <= set(monitor.details["unknown"])
    assert monitor.action == "hold"


def test_position_monitor_status_shows_why_each_position_is_held(market):
    ids = opened(market, 97.5, n=2)
    with market(97.5, CHECK_AT):
        for pid in ids:
            check_position(get_runtime(), pid)
    rows = query(lambda s: s.scalars(select(PositionMonitorStatus).order_by(PositionMonitorStatus.position_id)).all())
    assert [r.position_id for r in rows] == ids
    for row in rows:
        assert row.price == 97.5 and row.pnl_pct == pytest.approx(-2.5)
        assert row.high_watermark == 100.0
        assert row.last_decision == "hold:stop_loss"
        assert row.active_signals[0]["name"] == "stop_loss" and row.active_signals[0]["strength"] == "WEAK"
        assert abs(row.last_check_at - (SESSION_OPEN + timedelta(minutes=CHECK_AT))) < timedelta(seconds=60)


def test_positions_listing_says_why_each_open_position_is_held(market):
    import json

    from click.testing import CliRunner

    from catalyst.cli import main

    (pid,) = opened(market, 97.5)
    with market(97.5, CHECK_AT):
        check_position(get_runtime(), pid)
        listing = CliRunner().invoke(main, ["positions", "--json"])
        text = CliRunner().invoke(main, ["positions"])
    assert listing.exit_code == 0, listing.output
    (row,) = json.loads(listing.output)
    assert row["monitor"]["last_decision"] == "hold:stop_loss"
    assert row["monitor"]["active_signals"][0]["strength"] == "WEAK"
    assert "hold:stop_loss (stop_loss weak)" in text.output
