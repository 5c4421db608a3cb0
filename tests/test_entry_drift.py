"""Entries that agree with the broker under races, lost replies, outages and halts (issue 7, points 1-4, 13).

Real PostgreSQL, the paper broker (whose book lives in its own tables, like a remote broker's),
replayed flat prices in eight symbols and a simulated clock. Concurrency tests repeat 20 rounds
with real threads released together by a barrier.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from catalyst.brokers.base import BrokerError, BrokerOrderReport, OrderOutcomeUnknown, OrderRequest
from catalyst.cycles import evaluate_cycle
from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, Order, PaperAccount, PaperOrder, PaperPosition, Position
from catalyst.entries import EntryRefused, open_position
from catalyst.orders import OrderPending
from catalyst.positions import execute_exit
from catalyst.runtime import get_runtime
from tests.support import environment, query, race, rows, scanned_cycle, write_replay_csv

pytestmark = pytest.mark.postgres

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH"]
PRICE = 50.0
QTY = 10
ROUNDS = 20


@pytest.fixture
def market(pg_url, tmp_path):
    """This process on the test database with flat replayed prices; ``market(**env)`` re-enters."""
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [PRICE] * 240)) for s in SYMBOLS]

    def _enter(**extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": "replay:" + ",".join(paths),
                            "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=5)).isoformat()}@1",
                            **extra})

    return _enter


def paper_qty(symbol: str) -> float:
    return query(lambda s: (s.get(PaperPosition, symbol).qty if s.get(PaperPosition, symbol) else 0.0))


def enter(symbol: str, client_order_id: str, **kw) -> Position:
    return open_position(get_runtime(), symbol=symbol, qty=QTY, client_order_id=client_order_id, **kw)


def close_all() -> None:
    for p in rows(Position, Position.status != "closed"):
        execute_exit(get_runtime(), p.id)


def cycle_with_candidates(symbols: list[str]) -> int:
    """A scanned cycle whose candidates all pass the entry rule."""
    return scanned_cycle(symbols, PRICE)


class LostReplies:
    """The paper broker behind a network that drops every submit's reply and cannot look orders up."""

    def __init__(self, broker):
        self.inner, self.name, self.supports_legs = broker, broker.name, broker.supports_legs
        self.reachable = False

    def submit_order(self, request: OrderRequest) -> BrokerOrderReport:
        self.inner.submit_order(request)  # it reached the broker and filled ...
        if not self.reachable:
            raise OrderOutcomeUnknown(f"submit of {request.client_order_id} got no answer")  # ... the reply did not
        return self.inner.get_order(request.client_order_id)

    def get_order(self, client_order_id: str):
        if not self.reachable:
            raise BrokerError("broker did not answer")
        return self.inner.get_order(client_order_id)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class DataOutage:
    """Market data whose every call fails (an HTTP 500 from the data API)."""

    def __init__(self, market_data):
        self.inner, self.name = market_data, market_data.name

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise RuntimeError("market data API answered HTTP 500")
        return fail


# -- 1. at most one position per entry order ----------------------------------------------------------

def test_two_deliveries_of_one_entry_open_one_position(market):
    with market():
        for n in range(ROUNDS):
            cid = f"entry-c{n}-AAA"
            results = race(2, lambda i: enter("AAA", cid))
            assert all(isinstance(r, Position) for r in results), results
            assert results[0].id == results[1].id, f"round {n}: two positions for one order"
            assert len(rows(Position, Position.status != "closed")) == 1
            assert len(rows(PaperOrder, PaperOrder.client_order_id == cid)) == 1
            assert paper_qty("AAA") == QTY  # the broker holds what our books hold
            close_all()
        assert paper_qty("AAA") == 0 and len(rows(Position)) == ROUNDS


def test_the_database_refuses_a_second_position_for_one_entry_order(market):
    with market():
        position = enter("AAA", "entry-c1-AAA")
        with pytest.raises(IntegrityError):
            with session_scope() as s:
                twin = s.get(Position, position.id)
                s.expunge(twin)
                from sqlalchemy.orm import make_transient

                make_transient(twin)
                twin.id = None
                s.add(twin)


# -- 2. the paper book is locked row by row ------------------------------------------------------------

def test_concurrent_first_entries_on_a_fresh_paper_book_all_fill(market):
    with market():
        broker = get_runtime().broker
        starting = get_runtime().settings.paper_starting_cash
        for n in range(ROUNDS):
            with session_scope() as s:  # a fresh book: no account row yet
                for model in (PaperOrder, PaperPosition, PaperAccount):
                    s.execute(delete(model))
            reports = race(4, lambda i: broker.submit_order(OrderRequest(f"r{n}-{i}", SYMBOLS[i], "buy", QTY)))
            assert all(isinstance(r, BrokerOrderReport) and r.is_filled for r in reports), reports
            assert broker.cash() == pytest.approx(starting - 4 * QTY * PRICE)


def test_concurrent_fills_in_one_symbol_keep_the_paper_book_exact(market):
    with market():
        broker = get_runtime().broker
        starting = broker.cash()
        for n in range(ROUNDS):
            bought = race(4, lambda i: broker.submit_order(OrderRequest(f"b{n}-{i}", "AAA", "buy", QTY)))
            assert all(r.is_filled for r in bought)
            assert paper_qty("AAA") == 4 * QTY
            assert broker.cash() == pytest.approx(starting - 4 * QTY * PRICE)
            sold = race(4, lambda i: broker.submit_order(OrderRequest(f"s{n}-{i}", "AAA", "sell", QTY)))
            assert all(r.is_filled for r in sold)
            assert paper_qty("AAA") == 0 and broker.cash() == pytest.approx(starting)
        oversell = broker.submit_order(OrderRequest("too-many", "AAA", "sell", 1))
        assert oversell.status == "rejected"  # a flat book sells nothing


# -- 3. entries in flight count as held ----------------------------------------------------------------

def unknown_entry(symbol: str, cid: str):
    """An entry that reached the broker but whose outcome we could not learn."""
    rt = get_runtime()
    rt.broker = LostReplies(rt.broker)
    with pytest.raises(OrderPending):
        enter(symbol, cid)
    (order,) = rows(Order, Order.client_order_id == cid)
    assert (order.status, order.position_id) == ("unknown", None)
    assert paper_qty(symbol) == QTY
    return rt.broker


def test_an_unknown_entry_counts_as_held_and_is_not_bought_again(market):
    with market():
        unknown_entry("AAA", "entry-c1-AAA")
        planned = evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"]))
        assert planned == []
        assert [d.reason for d in rows(Decision, Decision.kind == "evaluate")] == ["already_held"]
        with pytest.raises(EntryRefused, match="already held or being entered"):
            enter("AAA", "manual-second-try")
        assert paper_qty("AAA") == QTY  # the broker holds one entry's shares, not two


def test_an_unknown_entry_counts_against_the_position_limit(market):
    with market(CATALYST_MAX_POSITIONS="1"):
        unknown_entry("AAA", "entry-c1-AAA")
        assert evaluate_cycle(get_runtime(), cycle_with_candidates(["BBB"])) == []
        assert [d.reason for d in rows(Decision, Decision.kind == "evaluate")] == ["position_limit"]


def test_concurrent_entries_never_exceed_the_position_limit(market):
    with market(CATALYST_MAX_POSITIONS="2"):
        cycle_id = cycle_with_candidates(SYMBOLS)
        for n in range(ROUNDS):
            results = race(8, lambda i: enter(SYMBOLS[i], f"entry-r{n}-{SYMBOLS[i]}", cycle_id=cycle_id))
            opened = [r for r in results if isinstance(r, Position)]
            refused = [r for r in results if isinstance(r, EntryRefused)]
            assert (len(opened), len(refused)) == (2, 6), results
            assert {r.reason for r in refused} == {"position_limit"}
            assert sum(paper_qty(s) for s in SYMBOLS) == 2 * QTY
            close_all()


# -- 4. once an order may exist at the broker, nothing gives up on it -----------------------------------

def test_an_entry_retry_during_a_data_outage_still_opens_what_the_broker_bought(market):
    with market():
        lossy = unknown_entry("AAA", "entry-c1-AAA")
        lossy.reachable = True  # the broker answers again, but the data API is down
        rt = get_runtime()
        rt.market_data = DataOutage(rt.market_data)
        position = enter("AAA", "entry-c1-AAA")
        assert (position.status, position.qty, position.entry_price) == ("open", QTY, PRICE)
        assert position.stop_loss_price == round(PRICE * (1 - rt.settings.stop_loss_pct), 2)  # the recorded intent
        assert paper_qty("AAA") == QTY and len(rows(PaperOrder)) == 1


class FailingCancel:
    """A broker whose entry partly fills (6 of 10) and whose first cancel of the rest fails."""

    name, supports_legs = "scripted", False

    def __init__(self):
        self.cancels = 0
        self.report = None

    def submit_order(self, request):
        self.report = BrokerOrderReport("b-1", request.client_order_id, request.symbol, "buy", request.qty,
                                        "partially_filled", 6.0, PRICE, datetime.now(UTC))
        return self.report

    def get_order(self, client_order_id):
        return self.report

    def get_order_by_id(self, broker_order_id):
        return self.report

    def cancel_order(self, broker_order_id):
        self.cancels += 1
        if self.cancels == 1:
            raise BrokerError("cancel of b-1 failed: HTTP 500")
        self.report = BrokerOrderReport("b-1", self.report.client_order_id, self.report.symbol, "buy",
                                        self.report.qty, "canceled", 6.0, PRICE, datetime.now(UTC))
        return self.report


def test_a_failed_cancel_of_an_entrys_unfilled_rest_is_retried_not_dropped(market):
    with market(CATALYST_FILL_WAIT_SECONDS="0.2"):
        rt = get_runtime()
        rt.broker = FailingCancel()
        with pytest.raises(OrderPending):  # the task retries: the broker holds 6 shares
            enter("AAA", "entry-c1-AAA")
        position = enter("AAA", "entry-c1-AAA")
        assert (position.qty, position.entry_price) == (6.0, PRICE)
        (order,) = rows(Order, Order.client_order_id == "entry-c1-AAA")
        assert (order.status, order.filled_qty, order.position_id) == ("canceled", 6.0, position.id)


# -- 13. the trading state is checked when the order is submitted --------------------------------------

def test_halt_after_evaluation_stops_the_planned_entry(market):
    from catalyst.cli import main
    from tasks.trading import enter_position

    with market():
        (planned,) = evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"]))
        halted = CliRunner().invoke(main, ["halt", "--reason", "operator saw a bad fill"])
        assert halted.exit_code == 0, halted.output
        result = enter_position.apply(kwargs={
            "symbol": planned.symbol, "qty": planned.qty, "stop": planned.stop_loss_price,
            "target": planned.take_profit_price, "cycle_id": planned.cycle_id,
            "client_order_id": planned.client_order_id, "reason": "momentum"})
        assert result.failed() and "halted" in str(result.result)
        assert rows(PaperOrder) == [] and rows(Position) == []
        assert [d.reason for d in rows(Decision, Decision.kind == "entry")] == ["halted"]
        assert CliRunner().invoke(main, ["resume", "--confirm"]).exit_code == 0
        assert enter("AAA", planned.client_order_id, cycle_id=planned.cycle_id).status == "open"


def test_an_unsent_entry_is_gated_again_and_a_stale_one_is_never_sent(market):
    with market():
        rt = get_runtime()
        now = rt.clock.now()
        with session_scope() as s:  # intents whose worker died before sending (redelivered later)
            for cid, symbol, minutes in (("entry-c1-AAA", "AAA", 1), ("entry-c1-BBB", "BBB", 11)):
                s.add(Order(client_order_id=cid, symbol=symbol, side="buy", purpose="entry", qty=QTY,
                            stop_loss_price=47.5, take_profit_price=57.5, status="pending_submit",
                            created_at=now - timedelta(minutes=minutes), updated_at=now))
        enter("CCC", "manual-ccc")
        with session_scope() as s:  # meanwhile AAA was bought under another order
            s.add(Order(client_order_id="manual-aaa", symbol="AAA", side="buy", purpose="entry", qty=QTY,
                        status="unknown", created_at=now, updated_at=now))
        with pytest.raises(EntryRefused, match="already held or being entered"):
            enter("AAA", "entry-c1-AAA")
        with pytest.raises(EntryRefused, match="stale decision is never sent"):
            enter("BBB", "entry-c1-BBB")
        assert {o.client_order_id: o.status for o in rows(Order, Order.client_order_id.in_(
            ["entry-c1-AAA", "entry-c1-BBB"]))} == {"entry-c1-AAA": "canceled", "entry-c1-BBB": "canceled"}
        assert paper_qty("AAA") == 0 and paper_qty("BBB") == 0
