"""The position lifecycle against a real PostgreSQL database, in-process.

open → check → request exit → execute exit, each step idempotent: a rerun adopts what the
first run did (one entry order, one sell at the paper broker), exactly one caller wins the
``open → closing`` transition, bad input is refused before anything is written, and a
stale quote holds (and is recorded) instead of deciding.

Each test points this process at a fresh migrated database, a replay CSV and a simulated
clock at speed 1 started 30 s into a known minute, so the price the clock sees is known.
A later minute is reached by re-entering the environment with a later clock start (each
clock spec keeps its own anchor), exactly as a process restarted later would see it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from catalyst.brokers.base import OrderRequest
from catalyst.db.models import (
    ActivityLog,
    Decision,
    Order,
    PaperOrder,
    PaperPosition,
    Position,
    PositionMonitorStatus,
    Security,
)
from catalyst.core.domain import BadInput
from catalyst.monitor import check_position
from catalyst.entries import open_position
from catalyst.positions import UnknownPosition, execute_exit, exit_client_order_id, request_exit
from catalyst.runtime import get_runtime
from tests.support import environment, query, rows, write_replay_csv

pytestmark = pytest.mark.postgres

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)  # a Tuesday, before the March DST change
ENTRY = 101.37
# Flat at ENTRY for 5 minutes, then up a dollar a minute: minute m's bar closes at PRICES[m].
PRICES = [ENTRY] * 5 + [round(ENTRY + i, 2) for i in range(1, 60)]
OPEN_MINUTE, EXIT_MINUTE = 2, 8  # the clock sees the close of bar (minute - 1)
ENTRY_SEEN = PRICES[OPEN_MINUTE - 1]
EXIT_SEEN = PRICES[EXIT_MINUTE - 1]
QTY = 10
TABLES = {"positions": Position, "orders": Order, "decisions": Decision, "paper_orders": PaperOrder,
          "paper_positions": PaperPosition, "activity_log": ActivityLog, "monitor_status": PositionMonitorStatus,
          "securities": Security}


def clock_at(minute: int) -> str:
    return f"sim:{(SESSION_OPEN + timedelta(minutes=minute, seconds=30)).isoformat()}@1"


@pytest.fixture
def csv(tmp_path):
    return write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, PRICES)


@pytest.fixture
def at(pg_url, csv, tmp_path):
    """``with at(minute):`` — this process, pointed at the test database with the clock in ``minute``."""

    def _at(minute: int, market_csv=None, **extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": f"replay:{market_csv or csv}", "CATALYST_CLOCK": clock_at(minute),
                            **extra})

    return _at


def counts() -> dict[str, int]:
    return query(lambda s: {name: s.scalar(select(func.count()).select_from(model)) for name, model in TABLES.items()})


def open_test_position(client_order_id: str = "entry-test-1", **kw) -> Position:
    return open_position(get_runtime(), symbol="TEST", qty=QTY, client_order_id=client_order_id, **kw)


# -- entry ---------------------------------------------------------------------------------------------

def test_opening_writes_one_entry_order_and_one_position_with_default_stop_and_target(at):
    with at(OPEN_MINUTE):
        rt = get_runtime()
        position = open_test_position()
        assert position.status == "open"
        assert (position.symbol, position.qty, position.entry_price) == ("TEST", QTY, ENTRY_SEEN)
        assert position.stop_loss_price == round(ENTRY_SEEN * (1 - rt.settings.stop_loss_pct), 2) == 96.3
        assert position.take_profit_price == round(ENTRY_SEEN * (1 + rt.settings.take_profit_pct), 2) == 116.58
        assert position.high_watermark == ENTRY_SEEN
        assert position.max_hold_seconds == rt.settings.max_hold_hours * 3600
        (order,) = rows(Order)
        assert (order.client_order_id, order.purpose, order.side, order.qty, order.status, order.position_id) == (
            "entry-test-1", "entry", "buy", QTY, "filled", position.id)
        assert order.filled_avg_price == ENTRY_SEEN and order.broker_order_id
        (paper,) = rows(PaperOrder)
        assert (paper.client_order_id, paper.side, paper.status) == ("entry-test-1", "buy", "filled")
        (decision,) = rows(Decision)
        assert (decision.kind, decision.action, decision.position_id) == ("entry", "enter", position.id)
        assert counts()["positions"] == 1


def test_explicit_stop_and_target_are_kept(at):
    with at(OPEN_MINUTE):
        position = open_test_position(stop=90.0, target=130.0)
        assert (position.stop_loss_price, position.take_profit_price) == (90.0, 130.0)


def test_rerunning_an_entry_with_the_same_client_order_id_adopts_the_position(at):
    with at(OPEN_MINUTE):
        first = open_test_position()
        before = counts()
        second = open_test_position()
        third = open_position(get_runtime(), symbol="TEST", qty=QTY, client_order_id="entry-test-1")
        assert first.id == second.id == third.id
        assert counts() == before
        assert before["paper_orders"] == 1 and before["orders"] == 1 and before["positions"] == 1


def test_an_entry_whose_broker_reply_was_lost_is_adopted_on_retry(at):
    with at(OPEN_MINUTE):
        rt = get_runtime()
        report = rt.broker.submit_order(OrderRequest("entry-lost-1", "TEST", "buy", QTY))  # filled, reply lost
        assert report.is_filled
        position = open_test_position("entry-lost-1")
        assert position.entry_price == report.filled_avg_price
        assert counts()["paper_orders"] == 1
        (order,) = rows(Order)
        assert order.broker_order_id == report.broker_order_id and order.position_id == position.id
        assert rt.broker.get_position("TEST").qty == QTY


# -- bad entries --------------------------------------------------------------------------------------

BAD_ENTRIES = [
    ("qty zero", dict(qty=0), "qty must be above zero"),
    ("qty negative", dict(qty=-1), "qty must be above zero"),
    ("qty nan", dict(qty=float("nan")), "qty must be above zero"),
    ("qty infinite", dict(qty=float("inf")), "qty must be above zero"),
    ("qty not a number", dict(qty="ten"), "qty 'ten' is not a number"),
    ("unknown symbol", dict(symbol="NOPE"), "unknown symbol 'NOPE'"),
    ("stop above price", dict(stop=ENTRY_SEEN + 5), "stop 106.37 must be below the current price 101.37"),
    ("stop at price", dict(stop=ENTRY_SEEN), "stop 101.37 must be below the current price"),
    ("target below price", dict(target=ENTRY_SEEN - 5), "target 96.37 must be above the current price 101.37"),
    ("target at price", dict(target=ENTRY_SEEN), "target 101.37 must be above the current price"),
    ("stop nan", dict(stop=float("nan")), "stop price must be a number above zero"),
    ("stop negative", dict(stop=-1.0), "stop price must be a number above zero"),
    ("target zero", dict(target=0.0), "target price must be a number above zero"),
]


@pytest.mark.parametrize("label,kwargs,message", BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_a_bad_entry_is_refused_with_a_clear_message_and_writes_nothing(at, label, kwargs, message):
    with at(OPEN_MINUTE):
        args = {"symbol": "TEST", "qty": QTY, **kwargs}
        with pytest.raises(BadInput) as refused:
            open_position(get_runtime(), client_order_id="entry-bad-1", **args)
        assert message in str(refused.value)
        assert set(counts().values()) == {0}


def test_a_non_numeric_stop_is_refused_as_bad_input(at):
    """Found as a bug (ValueError from a bare float()); kept as a regression test."""
    with at(OPEN_MINUTE):
        with pytest.raises(BadInput, match="stop"):
            open_position(get_runtime(), symbol="TEST", qty=QTY, stop="abc", client_order_id="entry-bad-2")
        assert set(counts().values()) == {0}


# -- exit -------------------------------------------------------------------------------------------------

def test_only_one_of_two_concurrent_exit_requests_wins(at):
    with at(OPEN_MINUTE):
        rt = get_runtime()
        reasons = ["stop_loss", "manual"]
        for n in range(3):  # race a few times so a lucky interleaving cannot hide a double win
            position_id = open_test_position(f"entry-race-{n}").id
            barrier = threading.Barrier(len(reasons))

            def attempt(reason: str) -> bool:
                barrier.wait()
                return request_exit(rt, position_id, reason)

            with ThreadPoolExecutor(len(reasons)) as pool:
                results = list(pool.map(attempt, reasons))
            assert sorted(results) == [False, True]
            (position,) = rows(Position, Position.id == position_id)
            assert (position.status, position.exit_reason) == ("closing", reasons[results.index(True)])
            events = rows(ActivityLog, ActivityLog.position_id == position_id, ActivityLog.event == "exit_requested")
            assert len(events) == 1
            assert request_exit(rt, position_id, "manual") is False  # a late third caller loses too
            execute_exit(rt, position_id)  # flat again before the next round enters the symbol


def test_second_exit_attempt_adopts_the_first_order(at):
    with at(OPEN_MINUTE):
        position_id = open_test_position().id
    with at(EXIT_MINUTE):
        rt = get_runtime()
        assert request_exit(rt, position_id, "take_profit")
        first = execute_exit(rt, position_id)
        second = execute_exit(rt, position_id)
        assert first.status == second.status == "closed"
        (exit_order,) = rows(Order, Order.purpose == "exit")
        assert (exit_order.client_order_id, exit_order.side, exit_order.status) == (
            exit_client_order_id(position_id), "sell", "filled")
        assert len(rows(PaperOrder, PaperOrder.side == "sell")) == 1
        (position,) = rows(Position, Position.id == position_id)
        assert (position.status, position.exit_reason, position.exit_price) == ("closed", "take_profit", EXIT_SEEN)
        assert position.realized_pnl == pytest.approx((EXIT_SEEN - ENTRY_SEEN) * QTY) == pytest.approx(30.0)
        assert position.realized_pnl_pct == pytest.approx((EXIT_SEEN / ENTRY_SEEN - 1) * 100)
        assert position.closed_at is not None
        assert len(rows(Decision, Decision.kind == "exit")) == 1
        assert rt.broker.get_position("TEST") is None  # the paper book is flat again


def test_exit_after_a_crash_right_after_the_broker_filled_adopts_the_fill(at):
    with at(OPEN_MINUTE):
        position_id = open_test_position().id
    with at(EXIT_MINUTE):
        rt = get_runtime()
        assert request_exit(rt, position_id, "stop_loss")
        # The worker sent the sell and died before writing anything back.
        report = rt.broker.submit_order(OrderRequest(exit_client_order_id(position_id), "TEST", "sell", QTY))
        assert report.is_filled
        position = execute_exit(rt, position_id)
        assert (position.status, position.exit_reason, position.exit_price) == ("closed", "stop_loss",
                                                                                report.filled_avg_price)
        assert len(rows(PaperOrder, PaperOrder.side == "sell")) == 1
        (exit_order,) = rows(Order, Order.purpose == "exit")
        assert exit_order.broker_order_id == report.broker_order_id and exit_order.status == "filled"
        assert position.realized_pnl == pytest.approx((report.filled_avg_price - ENTRY_SEEN) * QTY)


def test_exiting_an_open_position_directly_records_a_manual_exit(at):
    with at(OPEN_MINUTE):
        position_id = open_test_position().id
        position = execute_exit(get_runtime(), position_id)
        assert (position.status, position.exit_reason) == ("closed", "manual")
        assert len(rows(PaperOrder, PaperOrder.side == "sell")) == 1


# -- monitoring ---------------------------------------------------------------------------------------------

def test_checking_an_unknown_position_is_refused_and_changes_no_row(at):
    with at(OPEN_MINUTE):
        rt = get_runtime()
        open_test_position()
        before = counts()
        with pytest.raises(UnknownPosition, match="unknown position id 999999") as refused:
            check_position(rt, 999999, worker="worker@test")
        assert isinstance(refused.value, BadInput)
        with pytest.raises(UnknownPosition, match="unknown position"):
            execute_exit(rt, 999999)
        assert counts() == before


def test_a_fresh_quote_below_the_stop_moves_the_position_to_closing_once(at, tmp_path):
    falling = write_replay_csv(tmp_path / "FALL.csv", "TEST", SESSION_OPEN, [ENTRY] * 3 + [90.0] * 30)
    with at(OPEN_MINUTE, falling):
        position_id = open_test_position().id
    with at(6, falling):
        rt = get_runtime()
        outcome = check_position(rt, position_id)
        assert (outcome.action, outcome.reason, outcome.needs_exit_task) == ("exit", "stop_loss", True)
        assert any(s.name == "stop_loss" and (s.value, s.threshold) == (90.0, 96.3) for s in outcome.signals)
        assert check_position(rt, position_id).action == "redrive"  # a second check does not re-decide
        (position,) = rows(Position, Position.id == position_id)
        assert (position.status, position.exit_reason, position.last_price) == ("closing", "stop_loss", 90.0)
        (decision,) = rows(Decision, Decision.kind == "monitor")
        assert (decision.action, decision.reason) == ("exit", "stop_loss")
        assert decision.signals[0]["name"] == "stop_loss"
        assert {"name": "stop_loss", "threshold": 96.3} in [{k: s[k] for k in ("name", "threshold")}
                                                             for s in decision.signals]


def stale_csv(tmp_path):
    """Ten bars, the last ones far below the default stop; then the feed stops."""
    return write_replay_csv(tmp_path / "SHORT.csv", "TEST", SESSION_OPEN, [ENTRY] * 5 + [80.0] * 5)


def test_a_quote_older_than_max_quote_age_holds_with_stale_quote_and_is_recorded(at, tmp_path):
    short = stale_csv(tmp_path)
    with at(OPEN_MINUTE, short):
        position_id = open_test_position().id
    with at(30, short):  # 10:00:30; the last bar ended 09:40: a 20-minute-old quote
        rt = get_runtime()
        quote = rt.market_data.quote("TEST", rt.clock.now())
        assert quote.price == 80.0  # far below the stop: a fresh quote would exit
        assert (rt.clock.now() - quote.timestamp).total_seconds() > rt.settings.max_quote_age
        before = counts()
        outcome = check_position(rt, position_id)
        assert (outcome.action, outcome.reason) == ("hold", "stale_quote")
        (position,) = rows(Position, Position.id == position_id)
        assert (position.status, position.last_price, position.high_watermark) == ("open", ENTRY_SEEN, ENTRY_SEEN)
        (decision,) = rows(Decision, Decision.kind == "monitor")
        assert (decision.action, decision.reason, decision.position_id) == ("hold", "stale_quote", position_id)
        assert decision.details["price"] is None and decision.details["quote_at"] == quote.timestamp.isoformat()
        (status,) = rows(PositionMonitorStatus)
        assert status.last_decision == "hold:stale_quote"
        after = counts()
        assert (after["orders"], after["paper_orders"]) == (before["orders"], before["paper_orders"])


def test_opening_on_a_stale_quote_is_refused_and_writes_nothing(at, tmp_path):
    """Found as a bug (entries filled at a 20-minute-old price); kept as a regression test."""
    short = stale_csv(tmp_path)
    with at(30, short):
        with pytest.raises(BadInput, match="stale|old"):
            open_test_position()
        assert set(counts().values()) == {0}

