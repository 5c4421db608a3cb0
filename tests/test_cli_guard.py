"""`catalyst halt`, `resume` and `status` (issue 9) through click's CliRunner on real PostgreSQL."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from catalyst.cli import main
from catalyst.db.models import Decision, Order, PaperOrder, Position
from catalyst.db.models import TradingState as StateRow
from catalyst.entries import EntryRefused
from catalyst.guard import operator
from tests.support import query, rows
from tests.test_guard import enter, in_flight_entry, loose, mark, market  # noqa: F401 - the fixture

pytestmark = pytest.mark.postgres


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def stored() -> dict:
    return query(lambda s: dict(s.get(StateRow, "halted").value))


def test_halt_is_an_emergency_stop_by_hand(market):
    with market(**loose()):
        held = [enter(s) for s in ("AAA", "BBB")]
        cid = in_flight_entry("CCC")
        result = cli("halt", "--reason", "bad fills on the feed")
        assert result.exit_code == 0, result.output
        assert f"trading HALTED by {operator()}: bad fills on the feed" in result.output
        assert f"entry orders cancelled: 1 ({cid})" in result.output
        assert "positions closing (emergency_stop): 2" in result.output
        for p in held:
            assert f"position {p.id} {p.symbol}: closed at 50.00" in result.output
        assert {p.exit_reason for p in rows(Position)} == {"emergency_stop"}
        assert len(rows(PaperOrder, PaperOrder.side == "sell")) == 2
        assert query(lambda s: s.scalar(select(Order.status).where(Order.client_order_id == cid))) == "canceled"
        value = stored()
        assert (value["state"], value["by"], value["reason"], value["flatten"]) == (
            "HALTED", operator(), "bad fills on the feed", True)
        with pytest.raises(EntryRefused):
            enter("DDD")
        again = cli("halt", "--reason", "still bad")  # a second halt sells nothing twice
        assert again.exit_code == 0 and "positions closing (emergency_stop): 0" in again.output
        assert len(rows(PaperOrder, PaperOrder.side == "sell")) == 2


def test_halt_keep_positions_only_halts_entries(market):
    with market(**loose()):
        p = enter("AAA")
        cid = in_flight_entry("BBB")
        result = cli("halt", "--reason", "lunch", "--keep-positions", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["close_positions"] is False and data["cancelled"] == [cid] and data["closing"] == []
        assert query(lambda s: s.get(Position, p.id)).status == "open"
        assert stored()["flatten"] is False and stored()["halted"] is True


def test_resume_without_confirm_refuses_and_changes_nothing(market):
    with market(**loose()):
        assert cli("halt", "--reason", "drill").exit_code == 0
        before = stored()
        decisions = len(rows(Decision))
        result = cli("resume")
        assert result.exit_code != 0
        assert "not resumed: trading is HALTED" in result.output and "--confirm" in result.output
        assert "drill" in result.output
        assert stored() == before and len(rows(Decision)) == decisions
        with pytest.raises(EntryRefused):
            enter("AAA")


def test_resume_confirm_records_who_and_lets_entries_in(market):
    with market(**loose()):
        assert cli("halt", "--reason", "drill").exit_code == 0
        result = cli("resume", "--confirm")
        assert result.exit_code == 0, result.output
        assert "trading resumed (was HALTED: drill" in result.output
        value = stored()
        assert value["state"] == "ACTIVE" and value["halted"] is False and value["resumed_by"] == operator()
        assert value["previous"]["reason"] == "drill"
        assert enter("AAA").status == "open"
        assert [(d.action, d.reason) for d in rows(Decision, Decision.kind == "risk")] == [
            ("halt", "operator_halt"), ("resume", "operator_resume")]
        assert "already ACTIVE" in cli("resume", "--confirm").output


def test_status_shows_the_state_with_reason_who_when_and_todays_pnl(market):
    with market(**loose()):
        p = enter("AAA", qty=100)
        mark(p.id, 48.0)  # 200 lost of the 1,000 limit
        data = json.loads(cli("status", "--json").output)
        assert data["trading"]["state"] == "ACTIVE" and data["halted"] is False
        assert data["trading"]["daily_pnl"]["total"] == -200.0 and data["trading"]["daily_pnl"]["used_pct"] == 20.0
        assert cli("halt", "--reason", "drill", "--keep-positions").exit_code == 0
        data = json.loads(cli("status", "--json").output)
        t = data["trading"]
        assert (t["state"], t["reason"], t["by"], data["halted"]) == ("HALTED", "drill", operator(), True)
        assert t["at"].startswith("2025-03-04T") and t["closing_positions"] is False
        text = cli("status").output
        assert f"HALTED: drill (by {operator()} at" in text
        assert "P&L -200.00" in text and "20% of the 1,000.00 daily loss limit" in text


def test_halt_never_reports_an_entry_claimed_for_sending_as_cancelled(market):
    """An entry whose send was claimed before the halt may be on its way to the broker: the operator is told it is
    still in flight (the risk monitor looks again), not that it was cancelled."""
    from sqlalchemy import update

    from catalyst.db.engine import session_scope

    with market(**loose()):
        cid = in_flight_entry("CCC")
        with session_scope() as s:
            s.execute(update(Order).where(Order.client_order_id == cid).values(status="submitting"))
        result = cli("halt", "--reason", "drill")
        assert result.exit_code == 0, result.output
        assert "entry orders cancelled: 0" in result.output
        assert f"entries still in flight or not settled at the broker (not cancelled yet; the risk monitor looks " \
               f"again every minute): {cid}" in result.output
        assert query(lambda s: s.scalar(select(Order.status).where(Order.client_order_id == cid))) == "submitting"
