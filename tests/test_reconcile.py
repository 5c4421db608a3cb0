"""The reconciliation watchdog on the paper broker (real PostgreSQL): every finding produced, fixed or
escalated as seed 004's safety boundaries say, and a clean second run after ``--fix``."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import delete, select, update

from catalyst.brokers.base import OrderRequest
from catalyst.db.engine import session_scope
from catalyst.db.models import ActivityLog, AgentLog, Order, PaperOrder, Position, ScheduleEntry
from catalyst.entries import EntryRefused, open_position
from catalyst.logs import configure_logging
from catalyst.positions import request_exit
from catalyst.reconcile import reconcile
from catalyst.runtime import get_runtime
from tests.support import query, seed_position
from tests.test_entry_drift import PRICE, QTY, market, paper_qty, rows, unknown_entry  # noqa: F401  (fixture)

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def logs_to_agent_logs():
    configure_logging("INFO", "test")
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def cli_reconcile(*flags: str) -> list[dict]:
    from catalyst.cli import main

    result = CliRunner().invoke(main, ["reconcile", *flags, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()  # log lines (JSON objects) may come first
    start = next(i for i, line in enumerate(lines) if line.startswith("["))
    return json.loads("\n".join(lines[start:]))


def kinds(findings) -> list[tuple[str, str]]:
    return sorted((f["kind"] if isinstance(f, dict) else f.kind, f["action"] if isinstance(f, dict) else f.action)
                  for f in findings)


def monitored(*position_ids: int) -> None:
    """What a running beat does: a scan entry, and a monitor schedule entry per open position."""
    now = get_runtime().clock.now()
    with session_scope() as s:
        if s.get(ScheduleEntry, "scan-market") is None:
            s.add(ScheduleEntry(name="scan-market", task="catalyst.scan_market", queue="scan", args=[],
                                interval_seconds=1800, next_run_at=now + timedelta(minutes=10), total_sent=0,
                                updated_at=now))
        for pid in position_ids:
            s.add(ScheduleEntry(name=f"monitor-position-{pid}", task="catalyst.monitor_position", queue="monitor",
                                args=[pid], interval_seconds=60, next_run_at=now, total_sent=0, updated_at=now))


def age(model, row_id, **columns) -> None:
    """Move a row's timestamps into the past (by the given timedeltas)."""
    now = get_runtime().clock.now()
    with session_scope() as s:
        s.execute(update(model).where(model.id == row_id).values(**{c: now - d for c, d in columns.items()}))


def test_a_healthy_system_reports_nothing(market):
    with market():
        position = open_position(get_runtime(), symbol="AAA", qty=QTY, client_order_id="entry-c1-AAA")
        monitored(position.id)
        assert cli_reconcile() == []
        assert cli_reconcile("--fix") == []
        runs = rows(ActivityLog, ActivityLog.event == "reconcile_run")
        assert [(r.details["fix"], r.details["findings"]) for r in runs] == [(False, 0), (True, 0)]


def test_an_unknown_entry_is_resolved_by_client_id_and_its_position_opened(market):
    with market():
        unknown_entry("AAA", "entry-c1-AAA").reachable = True
        reported = cli_reconcile()
        assert kinds(reported) == [("unknown_order", "reported")]  # its shares are compared once it settles
        assert rows(Position) == []  # a report alone changes nothing
        fixed = cli_reconcile("--fix")
        assert kinds(fixed) == [("orphan_position", "fixed: opened position 1 from the entry's fill"),
                                ("unknown_order", "fixed: resolved as filled")]
        (position,) = rows(Position)
        assert (position.symbol, position.qty, position.entry_price, position.entry_reason) == ("AAA", QTY, PRICE,
                                                                                               "reconciled")
        monitored(position.id)
        assert cli_reconcile("--fix") == []  # a clean second run
        assert paper_qty("AAA") == QTY and len(rows(PaperOrder)) == 1  # nothing was bought or sold


def test_an_order_that_never_reached_the_broker_stops_counting_as_in_flight(market):
    with market():
        rt = get_runtime()
        unknown = unknown_entry("AAA", "entry-c1-AAA")
        with session_scope() as s:  # a second intent whose submit never left this machine
            s.add(Order(client_order_id="entry-c1-BBB", symbol="BBB", side="buy", purpose="entry", qty=QTY,
                        status="unknown", created_at=rt.clock.now(), updated_at=rt.clock.now()))
        (order,) = rows(Order, Order.client_order_id == "entry-c1-BBB")
        age(Order, order.id, created_at=timedelta(minutes=6))
        unknown.reachable = True
        fixed = {f["ours"].get("client_order_id"): f["action"] for f in cli_reconcile("--fix") if f["kind"] == "unknown_order"}
        assert fixed["entry-c1-BBB"] == "escalated"  # its task may still be retrying: not retired yet
        age(Order, order.id, created_at=timedelta(minutes=21))
        fixed = {f["ours"].get("client_order_id"): f["action"] for f in cli_reconcile("--fix") if f["kind"] == "unknown_order"}
        assert fixed["entry-c1-BBB"] == "fixed: never reached the broker, retired (canceled)"
        assert rows(Order, Order.client_order_id == "entry-c1-BBB")[0].status == "canceled"
        with pytest.raises(EntryRefused, match="never sent again"):  # a late redelivery of its task sends nothing
            open_position(rt, symbol="BBB", qty=QTY, client_order_id="entry-c1-BBB")
        assert paper_qty("BBB") == 0


def test_a_position_the_broker_no_longer_holds_is_escalated_and_never_sold(market):
    with market():
        rt = get_runtime()
        pid = seed_position("AAA", PRICE, rt.clock.now(), qty=QTY)  # ours only: the broker never bought it
        monitored(pid)
        first = cli_reconcile("--fix")
        assert kinds(first) == [("phantom_position", "escalated")]
        assert first[0]["severity"] == "critical" and first[0]["ours"]["qty"] == QTY and first[0]["broker"]["qty"] == 0
        assert kinds(cli_reconcile("--fix")) == [("phantom_position", "escalated")]  # only what was escalated
        assert rows(Position)[0].status == "open" and rows(PaperOrder) == []
        errors = query(lambda s: s.scalars(select(AgentLog).where(AgentLog.event == "reconcile_escalated")).all())
        assert len(errors) == 2 and errors[0].level == "ERROR" and errors[0].context["kind"] == "phantom_position"


def test_a_position_sold_at_the_broker_is_closed_with_the_brokers_fill(market):
    with market():
        rt = get_runtime()
        position = open_position(rt, symbol="AAA", qty=QTY, client_order_id="entry-c1-AAA")
        monitored(position.id)
        request_exit(rt, position.id, "stop_loss")
        rt.broker.submit_order(OrderRequest(f"exit-p{position.id}", "AAA", "sell", QTY))  # sold; our books missed it
        with session_scope() as s:
            s.add(Order(client_order_id=f"exit-p{position.id}", symbol="AAA", side="sell", purpose="exit", qty=QTY,
                        position_id=position.id, status="unknown", created_at=rt.clock.now(),
                        updated_at=rt.clock.now()))
        fixed = cli_reconcile("--fix")
        assert kinds(fixed) == [("phantom_position", f"fixed: closed with the broker's fill at {PRICE:g}"),
                                ("unknown_order", "fixed: resolved as filled")]
        closed = rows(Position)[0]
        assert (closed.status, closed.exit_reason, closed.exit_price, closed.realized_pnl) == ("closed", "stop_loss",
                                                                                              PRICE, 0.0)
        assert cli_reconcile("--fix") == [] and len(rows(PaperOrder, PaperOrder.side == "sell")) == 1


def test_shares_at_the_broker_that_no_position_records_are_adopted_and_monitored(market):
    with market():
        rt = get_runtime()
        rt.broker.submit_order(OrderRequest("bought-by-hand", "CCC", "buy", 7))  # e.g. a manual trade at the broker
        fixed = cli_reconcile("--fix")
        assert kinds(fixed) == [("orphan_position", "fixed: adopted as position 1 and monitored")]
        (position,) = rows(Position)
        assert (position.symbol, position.qty, position.entry_price, position.status, position.entry_reason) == (
            "CCC", 7, PRICE, "open", "adopted")
        assert position.stop_loss_price == round(PRICE * (1 - rt.settings.stop_loss_pct), 2)
        monitored(position.id)
        assert cli_reconcile("--fix") == []
        assert paper_qty("CCC") == 7  # adopted, never sold


def test_a_quantity_mismatch_is_escalated_not_traded(market):
    with market():
        rt = get_runtime()
        position = open_position(rt, symbol="AAA", qty=QTY, client_order_id="entry-c1-AAA")
        monitored(position.id)
        rt.broker.submit_order(OrderRequest("extra", "AAA", "buy", 5))
        for _ in range(2):
            (finding,) = cli_reconcile("--fix")
            assert (finding["kind"], finding["severity"], finding["action"]) == ("quantity_mismatch", "critical",
                                                                                 "escalated")
            assert (finding["ours"]["qty"], finding["broker"]["qty"], finding["position_id"]) == (QTY, 15, position.id)
        assert rows(Position)[0].qty == QTY and paper_qty("AAA") == 15


def test_stuck_exits_missing_monitors_and_stale_cycles_are_escalated(market):
    with market(CATALYST_CLOCK="sim:2025-03-04T11:30:00-05:00@1"):  # two hours into the session, no scan yet
        rt = get_runtime()
        closing = open_position(rt, symbol="AAA", qty=QTY, client_order_id="entry-c1-AAA")
        unwatched = open_position(rt, symbol="BBB", qty=QTY, client_order_id="entry-c1-BBB")
        monitored(closing.id)
        with session_scope() as s:  # and no scan was ever scheduled today
            s.execute(delete(ScheduleEntry).where(ScheduleEntry.name == "scan-market"))
        request_exit(rt, closing.id, "manual")
        age(Position, closing.id, closing_at=timedelta(minutes=6))
        age(Position, unwatched.id, opened_at=timedelta(minutes=10))
        findings = cli_reconcile("--fix")
        assert kinds(findings) == [("missing_monitor", "escalated"), ("stale_cycle", "escalated"),
                                   ("stuck_closing", "escalated")]
        by_kind = {f["kind"]: f for f in findings}
        assert by_kind["missing_monitor"]["position_id"] == unwatched.id
        assert by_kind["stuck_closing"]["position_id"] == closing.id
        assert paper_qty("AAA") == QTY  # reconciliation never sells


def test_reconcile_asks_the_broker_once_for_positions_and_once_for_open_orders(market):
    with market():
        rt = get_runtime()
        ids = [open_position(rt, symbol=s, qty=QTY, client_order_id=f"entry-c1-{s}").id for s in ("AAA", "BBB", "CCC")]
        monitored(*ids)
        calls = []
        inner = rt.broker

        class Counting:
            name, supports_legs = inner.name, inner.supports_legs

            def __getattr__(self, attr):
                calls.append(attr)
                return getattr(inner, attr)

        rt.broker = Counting()
        with session_scope() as s:  # a working order so that the open-orders listing is needed
            s.add(Order(client_order_id="limit-1", broker_order_id="nowhere", symbol="AAA", side="buy",
                        purpose="entry", qty=1, status="new", created_at=rt.clock.now(), updated_at=rt.clock.now()))
        reconcile(rt, fix=False)
        assert calls.count("list_positions") == 1 and calls.count("list_open_orders") == 1
        assert calls.count("get_order_by_id") == 1  # only the order the listing lacks, never once per position
        assert not {"get_position", "get_order"} & set(calls)


def test_a_scan_that_was_sent_but_never_ran_is_a_stale_cycle(market):
    with market(CATALYST_CLOCK="sim:2025-03-04T11:30:00-05:00@1"):
        now = get_runtime().clock.now()
        with session_scope() as s:  # beat sent the 10:30 scan (and plans 12:00); no worker ever ran it
            s.add(ScheduleEntry(name="scan-market", task="catalyst.scan_market", queue="scan", args=[],
                                interval_seconds=1800, next_run_at=now + timedelta(minutes=30),
                                last_slot_at=now - timedelta(minutes=60), total_sent=1, updated_at=now))
        (finding,) = cli_reconcile()
        assert finding["kind"] == "stale_cycle" and "never ran" in finding["detail"]
        from catalyst.cycles import scan

        scan(get_runtime(), now - timedelta(minutes=60))  # the scan runs after all
        assert cli_reconcile() == []


def test_shares_of_an_entry_still_in_flight_are_never_adopted_twice(market):
    with market():
        rt = get_runtime()
        now = rt.clock.now()
        with session_scope() as s:  # the entry worker wrote its intent and the broker filled it: not recorded yet
            s.add(Order(client_order_id="entry-c1-AAA", symbol="AAA", side="buy", purpose="entry", qty=QTY,
                        stop_loss_price=47.5, take_profit_price=57.5, status="pending_submit", created_at=now,
                        updated_at=now))
        rt.broker.submit_order(OrderRequest("entry-c1-AAA", "AAA", "buy", QTY))
        assert cli_reconcile("--fix") == []  # in flight: compared once it settles, never adopted
        position = open_position(rt, symbol="AAA", qty=QTY, client_order_id="entry-c1-AAA")  # the worker goes on
        monitored(position.id)
        assert len(rows(Position)) == 1 and paper_qty("AAA") == QTY
        assert cli_reconcile("--fix") == []


def test_two_reconciliations_at_once_adopt_orphaned_shares_once(market):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from catalyst.reconcile import ReconcileBusy

    with market():
        rt = get_runtime()
        for n, symbol in enumerate(["AAA", "BBB", "CCC", "DDD", "EEE"] * 4):  # 20 rounds
            if paper_qty(symbol) == 0:
                rt.broker.submit_order(OrderRequest(f"by-hand-{n}", symbol, "buy", 3))
            barrier = threading.Barrier(2)

            def run(_):
                barrier.wait()
                try:
                    return reconcile(rt, fix=True, worker=f"w{_}")
                except ReconcileBusy:
                    return "busy"

            with ThreadPoolExecutor(2) as pool:
                list(pool.map(run, range(2)))
            adopted = rows(Position, Position.symbol == symbol)
            assert len(adopted) == 1, f"round {n}: {len(adopted)} positions for one broker holding"
            assert adopted[0].qty == 3 == paper_qty(symbol)


def test_the_operators_reconcile_waits_for_a_scheduled_run_in_progress(market):
    from catalyst import leases
    from catalyst.reconcile import LEASE, ReconcileBusy

    with market():
        assert leases.acquire(LEASE, "scheduled-run", 1.0) is not None  # the worker's run holds it for a moment
        with pytest.raises(ReconcileBusy):
            reconcile(get_runtime(), fix=False, wait=0)  # the scheduled task gives way
        assert cli_reconcile() == []  # the operator's command waits its turn instead of failing
