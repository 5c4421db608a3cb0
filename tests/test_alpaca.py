"""Trading through Alpaca (alpaca-py against a local fake Alpaca server, real PostgreSQL and Redis):
bracket entries, exits that cancel the legs and sell once, and every failure mode of the money path."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from catalyst.clock import ManualClock
from catalyst.db.models import Order, Position
from catalyst.monitor import check_position
from catalyst.orders import OrderPending
from catalyst.entries import open_position
from catalyst.positions import execute_exit, exit_client_order_id, request_exit
from catalyst.runtime import build_runtime, get_runtime, use_runtime
from catalyst.settings import get_settings
from tests.alpaca_support import START, alpaca_env, alpaca_market
from tests.fake_alpaca import FakeAlpaca
from tests.support import query, seed_position


@pytest.fixture
def fake():
    with FakeAlpaca(now=START) as api:
        yield api


@pytest.fixture
def market(fake, pg_url, redis_url, tmp_path):
    # 60x: every real second is a new monitor cycle, so a new price is seen after next_cycle()
    # up to 20 positions opened by hand (the position limit has tests of its own: tests/test_risk_guard.py)
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, speed=60, CATALYST_MAX_POSITIONS="25")
    with alpaca_market(fake, env, {"ACME": 100.0}) as driver:
        yield driver


def next_cycle():
    time.sleep(1.1)


def sells(fake, symbol="ACME"):
    return [o for o in fake.orders if o["side"] == "sell" and o["order_class"] != "bracket" and o["symbol"] == symbol
            and o["type"] == "market"]


def position_orders(pid):
    return {o.purpose: o for o in query(lambda s: s.scalars(select(Order).where(Order.position_id == pid)).all())}


def open_acme(client_order_id="entry-c1-ACME", qty=10):
    return open_position(get_runtime(), symbol="ACME", qty=qty, client_order_id=client_order_id)


def test_entry_is_a_bracket_and_exit_cancels_both_legs_then_sells_once(fake, market):
    position = open_acme()
    parent = fake.orders_by_client_id()["entry-c1-ACME"]
    assert parent["order_class"] == "bracket" and len(parent["legs"]) == 2
    legs = position_orders(position.id)
    assert legs["entry"].status == "filled" and legs["entry"].broker_order_id == parent["id"]
    assert {legs["stop"].stop_price, legs["take_profit"].limit_price} == {95.0, 115.0}
    assert (legs["stop"].status, legs["take_profit"].status) == ("held", "new")  # Alpaca rests the stop leg held

    assert request_exit(get_runtime(), position.id, "near_close")
    closed = execute_exit(get_runtime(), position.id)
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "near_close", 100.0)
    assert [leg["status"] for leg in fake.order("entry-c1-ACME")["legs"]] == ["canceled", "canceled"]
    assert len(sells(fake)) == 1 and "ACME" not in fake.positions
    rows = position_orders(position.id)
    assert rows["exit"].status == "filled" and rows["stop"].status == rows["take_profit"].status == "canceled"
    assert execute_exit(get_runtime(), position.id).status == "closed" and len(sells(fake)) == 1  # rerun: nothing


def test_lost_reply_on_entry_is_resolved_by_client_id_without_a_second_order(fake, market):
    fake.fail("POST", "/v2/orders", "lost_reply")
    position = open_acme()
    assert position.status == "open" and position.qty == 10
    assert len([o for o in fake.orders if o["client_order_id"] == "entry-c1-ACME"]) == 1
    assert fake.count("POST", "/v2/orders") == 1
    assert fake.positions["ACME"]["qty"] == "10"


def test_lost_reply_on_exit_closes_once(fake, market):
    position = open_acme()
    request_exit(get_runtime(), position.id, "stop_loss")
    fake.fail("POST", "/v2/orders", "lost_reply")
    closed = execute_exit(get_runtime(), position.id)
    assert closed.status == "closed"
    assert len(sells(fake)) == 1 and "ACME" not in fake.positions


def test_timeout_on_exit_is_unknown_then_resolved_and_sold_once(fake, market):
    position = open_acme()
    request_exit(get_runtime(), position.id, "stop_loss")
    fake.fail("POST", "/v2/orders", "timeout")
    with pytest.raises(OrderPending):
        execute_exit(get_runtime(), position.id)
    assert position_orders(position.id)["exit"].status == "unknown"
    assert query(lambda s: s.get(Position, position.id)).status == "closing"
    assert sells(fake) == []  # the timed-out request never reached the book
    closed = execute_exit(get_runtime(), position.id)  # the retry (or the monitor's redrive)
    assert closed.status == "closed" and len(sells(fake)) == 1


def test_a_duplicate_client_id_is_adopted_not_sold_again(fake, market):
    position = open_acme()
    request_exit(get_runtime(), position.id, "manual")
    # An earlier attempt reached Alpaca but its reply and our record of it were lost: legs gone, sell done.
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    raw = TradingClient(fake.key_id, fake.secret, paper=True, url_override=fake.base_url)
    raw.cancel_order_by_id(fake.order("entry-c1-ACME")["legs"][0]["id"])  # OCO: its sibling goes too
    raw.get_order_by_client_id("entry-c1-ACME")  # the cancel was followed until done (pending_cancel holds shares)
    raw.submit_order(MarketOrderRequest(symbol="ACME", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                                        client_order_id=exit_client_order_id(position.id)))
    closed = execute_exit(get_runtime(), position.id)
    assert closed.status == "closed" and closed.exit_price == 100.0
    assert len(sells(fake)) == 1
    assert position_orders(position.id)["exit"].broker_order_id == fake.order(exit_client_order_id(position.id))["id"]


def test_a_stop_leg_filled_at_the_broker_is_the_exit_and_nothing_is_sold(fake, market):
    position = open_acme()
    market.set("ACME", 94.0)  # through the 95.00 stop: Alpaca fills the stop leg and cancels the target
    next_cycle()
    closed = check_then_exit(position.id)
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "stop_loss", 94.0)
    assert sells(fake) == [] and "ACME" not in fake.positions
    assert position_orders(position.id)["stop"].status == "filled"


def test_the_stop_leg_trails_the_high_watermark(fake, market):
    position = open_acme()
    market.set("ACME", 110.0)  # +10% would be STRONG take-profit: stay below it
    market.set("ACME", 108.0)
    next_cycle()
    check_position(get_runtime(), position.id)
    stop = [o for o in fake.orders if o["type"] == "stop" and o["status"] in ("new", "held")]
    assert len(stop) == 1 and float(stop[0]["stop_price"]) == round(108.0 * 0.97, 2)
    assert query(lambda s: s.get(Position, position.id)).stop_loss_price == round(108.0 * 0.97, 2)
    assert any(o["status"] == "replaced" for o in fake.orders)


def test_200_positions_in_50_symbols_cost_one_snapshot_call_per_cycle(fake, pg_url, redis_url, tmp_path):
    symbols = [f"S{i:02d}" for i in range(50)]
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, MONITOR_CHECK_INTERVAL="60")
    with alpaca_market(fake, env, {s: 50.0 + i for i, s in enumerate(symbols)}):
        ids = [seed_position(s, 50.0 + i, START - timedelta(hours=1), entry_volume=None) for _ in range(4)
               for i, s in enumerate(symbols)]
        clock = ManualClock(START)
        rt = build_runtime(get_settings(), clock)
        use_runtime(rt)
        for cycle in range(2):
            clock.set(START + timedelta(minutes=cycle, seconds=1))
            fake.now = clock.now()
            before = fake.count("GET", "/v2/stocks/snapshots")
            outcomes = [check_position(rt, pid).action for pid in ids]
            assert outcomes == ["hold"] * 200, set(outcomes)
            assert fake.count("GET", "/v2/stocks/snapshots") - before == 1, f"cycle {cycle}"
        assert len(ids) == 200


def test_market_data_uses_the_configured_feed(fake, market):
    position = open_acme()
    check_position(get_runtime(), position.id)
    assert set(fake.feeds()) == {"iex"}


def test_alpaca_calendar_wins_where_it_disagrees_with_exchange_calendars(fake, pg_url, redis_url, tmp_path):
    from catalyst.db.models import AgentLog
    from catalyst.logs import configure_logging

    day = START.date()
    fake.set_session(day, "09:30", "13:00")  # say an unscheduled early close today
    fake.set_session(day + timedelta(days=1), None)  # and a closure tomorrow
    configure_logging("INFO", "worker")
    try:
        with alpaca_market(fake, alpaca_env(fake, pg_url, redis_url, tmp_path), {"ACME": 100.0}):
            cal = get_runtime().calendar
            logged = query(lambda s: s.scalars(select(AgentLog).where(AgentLog.event == "calendar_disagreement")).all())
    finally:
        import structlog

        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    assert cal.session_on(day).close == START.replace(hour=13, minute=0)
    assert cal.session_on(day + timedelta(days=1)) is None
    assert cal.next_slot(START.replace(hour=12, minute=59, second=30), timedelta(minutes=1)).date() > day
    assert {row.context["day"] for row in logged} == {day.isoformat(), (day + timedelta(days=1)).isoformat()}


def test_scan_ranks_alpaca_most_actives_and_movers_with_news_as_the_catalyst(fake, market):
    from catalyst.cycles import scan
    from catalyst.db.models import ScanResult

    for sym, price in {"AAA": 20.0, "BBB": 30.0, "CCC": 40.0}.items():
        market.set(sym, price)
    fake.set_most_actives([("AAA", 5_000_000, 40_000), ("BBB", 3_000_000, 20_000)])
    fake.set_movers([("CCC", 12.5, 4.4, 40.0)], [])
    fake.add_news("CCC", "CCC wins FDA approval for its lead drug")
    before = fake.count("GET", "/v2/stocks/snapshots")
    cycle_id = scan(get_runtime(), START + timedelta(minutes=1))
    results = query(lambda s: s.scalars(select(ScanResult).where(ScanResult.cycle_id == cycle_id)).all())
    assert {r.symbol for r in results} == {"AAA", "BBB", "CCC"}
    assert {r.symbol: r.catalyst for r in results}["CCC"] == "CCC wins FDA approval for its lead drug"
    assert fake.count("GET", "/v2/stocks/snapshots") - before == 1  # the whole universe in one batched call


def test_keys_never_reach_logs_errors_or_decisions(fake, market, capfd):
    from catalyst.db.models import AgentLog, Decision

    market.set("BETA", 20.0)
    fake.fail("POST", "/v2/orders", "500")
    with pytest.raises(Exception):
        open_position(get_runtime(), symbol="BETA", qty=5, client_order_id="entry-fails")
    position = open_acme()
    request_exit(get_runtime(), position.id, "manual")
    fake.fail("*", "/v2/orders", "429", times=2)
    execute_exit(get_runtime(), position.id)
    stored = query(lambda s: [str(o.error) for o in s.scalars(select(Order)).all()] +
                   [str(d.details) for d in s.scalars(select(Decision)).all()] +
                   [str(a.context) for a in s.scalars(select(AgentLog)).all()])
    out, err = capfd.readouterr()
    for text in [*stored, out, err, repr(get_runtime().settings)]:
        assert fake.secret not in text


def test_a_partially_filled_entry_opens_what_filled_and_cancels_the_rest(fake, market):
    fake.partial_fills("ACME", 0.6)
    position = open_acme(qty=10)
    assert position.qty == 6
    entry = position_orders(position.id)["entry"]
    assert (entry.status, entry.filled_qty) == ("canceled", 6)
    assert fake.order("entry-c1-ACME")["status"] == "canceled"
    assert float(fake.positions["ACME"]["qty"]) == position.qty  # the database and the broker agree


def test_a_partially_filled_exit_sells_the_rest_under_a_new_client_id(fake, market):
    position = open_acme(qty=10)
    request_exit(get_runtime(), position.id, "manual")
    fake.partial_fills("ACME", 0.5)  # every market sell fills about half of what it asks for
    with pytest.raises(OrderPending):
        execute_exit(get_runtime(), position.id)  # three sells this run, the rest next run
    exits = query(lambda s: s.scalars(select(Order).where(Order.purpose == "exit").order_by(Order.id)).all())
    assert [o.client_order_id for o in exits] == [f"exit-p{position.id}", f"exit-p{position.id}-2",
                                                  f"exit-p{position.id}-3"]
    sold = sum(o.filled_qty for o in exits)
    assert 0 < sold < 10 and all(o.status == "canceled" and o.filled_qty > 0 for o in exits)
    assert float(fake.positions["ACME"]["qty"]) == pytest.approx(10 - sold)  # broker and database agree
    assert query(lambda s: s.get(Position, position.id)).status == "closing"
    fake.partial_fills("ACME", None)
    closed = execute_exit(get_runtime(), position.id)  # the retry sells what is left, once
    assert (closed.status, closed.exit_price) == ("closed", 100.0)
    assert "ACME" not in fake.positions


# -- issue 7: unknown outcomes are never taken for refusals ----------------------------------------------

def test_a_duplicate_id_refusal_whose_order_cannot_be_found_is_unknown_not_rejected(fake, market):
    position = open_acme()
    request_exit(get_runtime(), position.id, "manual")
    # Alpaca says "client_order_id must be unique", yet the lookup by that id answers 404 (not visible yet):
    # the sell may exist, so it is neither rejected nor sent again under the next id.
    fake.fail("POST", "/v2/orders", "422_duplicate")
    with pytest.raises(OrderPending):
        execute_exit(get_runtime(), position.id)
    exits = query(lambda s: s.scalars(select(Order).where(Order.purpose == "exit")).all())
    assert [(o.client_order_id, o.status) for o in exits] == [(exit_client_order_id(position.id), "unknown")]
    assert query(lambda s: s.get(Position, position.id)).status == "closing"
    closed = execute_exit(get_runtime(), position.id)  # the retry resumes the same client id
    assert closed.status == "closed" and len(sells(fake)) == 1
    assert [o["client_order_id"] for o in sells(fake)] == [exit_client_order_id(position.id)]


def check_then_exit(pid):
    """One monitor check, and the exit task it asks for (a check that sees a filled leg closes by itself)."""
    outcome = check_position(get_runtime(), pid)
    assert outcome.action in ("exit", "closed"), outcome
    if outcome.action == "exit":
        execute_exit(get_runtime(), pid)
    return query(lambda s: s.get(Position, pid))


def live_stops(fake, symbol="ACME"):
    return [o for o in fake.orders if o["symbol"] == symbol and o["type"] == "stop"
            and o["status"] in ("new", "held", "accepted")]


def db_stop(pid):
    return query(lambda s: s.scalar(select(Order).where(Order.position_id == pid, Order.purpose == "stop",
                                                        Order.status.not_in(("replaced", "canceled")))))


def test_a_timed_out_stop_replace_is_resolved_and_the_trail_continues(fake, market):
    position = open_acme()
    market.set("ACME", 108.0)
    next_cycle()
    fake.fail("PATCH", "/v2/orders", "timeout")  # the raise never reaches the book, and no answer comes
    assert check_position(get_runtime(), position.id).action == "hold"
    (live,) = live_stops(fake)
    assert db_stop(position.id).broker_order_id == live["id"] and float(live["stop_price"]) == 95.0
    market.set("ACME", 109.0)
    next_cycle()
    check_position(get_runtime(), position.id)  # the next cycle raises the stop as if nothing happened
    (live,) = live_stops(fake)
    assert float(live["stop_price"]) == round(109.0 * 0.97, 2)
    assert db_stop(position.id).broker_order_id == live["id"]
    assert query(lambda s: s.get(Position, position.id)).stop_loss_price == round(109.0 * 0.97, 2)


def test_a_lost_stop_replace_reply_is_resolved_and_the_new_leg_protects_the_position(fake, market):
    position = open_acme()
    market.set("ACME", 108.0)
    next_cycle()
    fake.fail("PATCH", "/v2/orders", "lost_reply")  # Alpaca replaced the stop leg; its answer was lost
    assert check_position(get_runtime(), position.id).action == "hold"
    (live,) = live_stops(fake)
    assert float(live["stop_price"]) == round(108.0 * 0.97, 2)
    stop = db_stop(position.id)
    assert (stop.broker_order_id, stop.stop_price) == (live["id"], round(108.0 * 0.97, 2))
    assert query(lambda s: s.get(Position, position.id)).stop_loss_price == round(108.0 * 0.97, 2)

    market.set("ACME", 109.0)
    next_cycle()
    check_position(get_runtime(), position.id)  # the trail goes on from the leg Alpaca really has
    (live,) = live_stops(fake)
    assert float(live["stop_price"]) == round(109.0 * 0.97, 2) and db_stop(position.id).broker_order_id == live["id"]

    market.set("ACME", 105.0)  # through the raised stop: Alpaca sells; we close from that fill
    next_cycle()
    closed = check_then_exit(position.id)
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "stop_loss", 105.0)
    assert sells(fake) == [] and "ACME" not in fake.positions


def test_every_order_request_whose_answer_is_lost_is_an_unknown_outcome(fake, market):
    from catalyst.brokers.base import BrokerError, OrderOutcomeUnknown

    broker = get_runtime().broker
    position = open_acme()
    stop_id = position_orders(position.id)["stop"].broker_order_id
    fake.fail("PATCH", "/v2/orders", "500")
    with pytest.raises(OrderOutcomeUnknown):
        broker.replace_stop(stop_id, 96.0)
    fake.fail("PATCH", "/v2/orders", "lost_reply")
    with pytest.raises(OrderOutcomeUnknown):
        broker.replace_stop(stop_id, 96.0)
    new_id = broker.get_order_by_id(stop_id).replaced_by  # resolved by asking: the replace was applied
    assert new_id and broker.get_order_by_id(new_id).stop_price == 96.0
    fake.fail("DELETE", "/v2/orders", "lost_reply")
    with pytest.raises(OrderOutcomeUnknown):
        broker.cancel_order(new_id)
    fake.fail("GET", "/v2/clock", "500")
    with pytest.raises(BrokerError):
        broker.clock()
    fake.fail("GET", "/v2/orders", "lost_reply")
    with pytest.raises(BrokerError):
        broker.get_order_by_id(new_id)
    assert broker.get_order_by_id(new_id).status in ("canceled", "pending_cancel")


def test_the_stop_leg_survives_the_close_and_protects_the_position_overnight(fake, pg_url, redis_url, tmp_path):
    from tests.support import environment

    with environment(alpaca_env(fake, pg_url, redis_url, tmp_path)):
        clock = ManualClock(START)
        rt = build_runtime(get_settings(), clock)
        use_runtime(rt)
        fake.set_price("ACME", 100.0)
        position = open_position(rt, symbol="ACME", qty=10, client_order_id="entry-c1-ACME")
        # Held past the close (max hold is 24 h): Alpaca cancels whatever is `day` at 16:00.
        clock.set(START.replace(hour=20))
        fake.now = clock.now()
        clock.set(START + timedelta(days=1, hours=-1))  # 09:00 the next morning, before the open
        fake.now = clock.now()
        tp, stop = fake.order("entry-c1-ACME")["legs"]
        assert (tp["status"], stop["status"]) == ("new", "held") and stop["time_in_force"] == "gtc"
        clock.set(START + timedelta(days=1, minutes=-29))  # 09:31: the open gaps down through the stop
        fake.now = clock.now()
        fake.set_price("ACME", 90.0)
        assert fake.order(stop["id"])["status"] == "filled"
        closed = check_then_exit(position.id)
        assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "stop_loss", 90.0)
        assert sells(fake) == [] and "ACME" not in fake.positions


def test_a_partly_filled_entry_gets_a_broker_stop_for_what_filled(fake, market):
    fake.partial_fills("ACME", 0.6)
    position = open_acme(qty=10)  # 6 fill; cancelling the rest makes Alpaca cancel the bracket's legs too
    fake.partial_fills("ACME", None)
    assert position.qty == 6
    (stop,) = live_stops(fake)  # protection restored as the position opens: a standalone gtc stop for the 6 held
    assert (stop["qty"], stop["time_in_force"], float(stop["stop_price"])) == ("6", "gtc", 95.0)
    row = db_stop(position.id)
    assert (row.broker_order_id, row.client_order_id, row.qty) == (stop["id"], f"stop-p{position.id}-1", 6)
    next_cycle()
    check_position(get_runtime(), position.id)  # already protected: nothing more is placed (the trail may move it)
    assert len(live_stops(fake)) == 1
    assert [o["client_order_id"] for o in fake.orders if o["client_order_id"].startswith("stop-p")] == \
        [f"stop-p{position.id}-1"]

    market.set("ACME", 94.0)  # through the stop: Alpaca sells the 6; the position closes from that fill
    next_cycle()
    closed = check_then_exit(position.id)
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "stop_loss", 94.0)
    assert sells(fake) == [] and "ACME" not in fake.positions


def test_a_refused_exit_leaves_the_position_protected_and_tells_the_operator(fake, market):
    from catalyst.positions import ExitRefused
    from catalyst.db.models import ActivityLog

    position = open_acme()
    request_exit(get_runtime(), position.id, "rsi_overbought")
    fake.fail("POST", "/v2/orders", "403_pdt")  # Alpaca refuses the sell: pattern day trader protection
    with pytest.raises(ExitRefused, match="pattern day trading"):
        execute_exit(get_runtime(), position.id)
    (stop,) = live_stops(fake)  # the shares are never left without a stop
    assert (stop["qty"], stop["time_in_force"], float(stop["stop_price"])) == ("10", "gtc", 95.0)
    assert db_stop(position.id).broker_order_id == stop["id"] and fake.positions["ACME"]["qty"] == "10"
    refused = query(lambda s: s.scalars(select(ActivityLog).where(ActivityLog.event == "exit_refused")).all())
    assert len(refused) == 1 and "pattern day trading" in refused[0].details["reason"]
    held = query(lambda s: s.get(Position, position.id))
    next_open = datetime(2025, 3, 5, 9, 30, tzinfo=START.tzinfo)  # PDT protection lifts with the next session
    assert (held.status, held.exit_blocked_until) == ("closing", next_open)


def test_a_refused_exit_is_shown_to_the_operator_and_retried_only_when_it_can_succeed(fake, market):
    from click.testing import CliRunner

    from catalyst.cli import main
    from catalyst.positions import ExitRefused

    position = open_acme()
    request_exit(get_runtime(), position.id, "rsi_overbought")
    fake.fail("POST", "/v2/orders", "403_pdt")
    with pytest.raises(ExitRefused):
        execute_exit(get_runtime(), position.id)
    posts = fake.count("POST", "/v2/orders")
    with pytest.raises(ExitRefused, match="retried from 2025-03-05T09:30"):
        execute_exit(get_runtime(), position.id)  # a retry today could not succeed: nothing is sent
    assert check_position(get_runtime(), position.id).action == "exit_blocked"  # and the monitor does not redrive
    assert fake.count("POST", "/v2/orders") == posts
    shown = CliRunner().invoke(main, ["positions"]).output
    assert "EXIT REFUSED" in shown and "pattern day trading" in shown
    status = CliRunner().invoke(main, ["status", "--json"]).output
    assert json.loads(status[status.index("{"):])["exits_refused"][0]["position_id"] == position.id

    market.stop()  # the next morning
    tomorrow = datetime(2025, 3, 5, 9, 31, tzinfo=START.tzinfo)
    rt = build_runtime(get_settings(), ManualClock(tomorrow))
    use_runtime(rt)
    fake.now = tomorrow
    fake.set_price("ACME", 100.0)
    assert check_position(rt, position.id).action == "redrive"
    closed = execute_exit(rt, position.id)  # now the broker allows it: the retry sells once
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "rsi_overbought", 100.0)
    assert len(sells(fake)) == 1 and "ACME" not in fake.positions and live_stops(fake) == []


def test_partial_take_profit_fill_then_exit_sells_only_the_remainder(fake, market):
    position = open_acme(qty=10)
    take_profit = next(leg for leg in fake.order("entry-c1-ACME")["legs"] if leg["type"] == "limit")
    fake.fill(take_profit["id"], price=115.0, qty=4)  # the target leg sells 4 of 10 at the broker
    assert request_exit(get_runtime(), position.id, "rsi_overbought")
    closed = execute_exit(get_runtime(), position.id)
    assert [float(o["filled_qty"]) for o in sells(fake)] == [6.0]  # what was still held, not the entry's 10
    assert "ACME" not in fake.positions  # flat, never short
    assert (closed.status, closed.exit_reason) == ("closed", "rsi_overbought")
    assert closed.exit_price == pytest.approx((4 * 115.0 + 6 * 100.0) / 10)  # every fill counts
    assert closed.realized_pnl == pytest.approx(4 * 15.0)
    rows = position_orders(position.id)
    assert (rows["take_profit"].status, rows["take_profit"].filled_qty) == ("canceled", 4)
    assert (rows["exit"].qty, rows["exit"].status) == (6, "filled")


def test_both_legs_filling_in_a_fast_market_never_sells_more_than_was_bought(fake, market):
    position = open_acme(qty=10)
    take_profit = next(leg for leg in fake.order("entry-c1-ACME")["legs"] if leg["type"] == "limit")
    fake.fill(take_profit["id"], price=115.0, qty=4)
    market.set("ACME", 94.0)  # a gap through the resized stop: the stop sells the other 6
    assert request_exit(get_runtime(), position.id, "stop_loss")
    closed = execute_exit(get_runtime(), position.id)
    assert sells(fake) == [] and "ACME" not in fake.positions  # the legs sold it all; nothing more is sent
    assert (closed.status, closed.exit_reason) == ("closed", "stop_loss")
    assert closed.exit_price == pytest.approx((4 * 115.0 + 6 * 94.0) / 10)


def test_two_deliveries_of_one_bracket_entry_open_one_position_at_alpaca(fake, market):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for n in range(20):  # a redelivered enter_position racing the first delivery, 20 rounds
        symbol = f"R{n:02d}"
        market.set(symbol, 50.0)
        barrier = threading.Barrier(2)

        def deliver(_):
            barrier.wait()
            return open_position(get_runtime(), symbol=symbol, qty=5, client_order_id=f"entry-c{n}-{symbol}").id

        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(deliver, range(2))
        assert first == second, f"round {n}: two positions for one order"
        assert len([o for o in fake.orders if o["client_order_id"] == f"entry-c{n}-{symbol}"]) == 1
        assert float(fake.positions[symbol]["qty"]) == 5  # the broker holds what our books hold
    assert query(lambda s: s.scalar(select(func.count()).select_from(Position))) == 20


def test_a_position_closed_elsewhere_leaves_no_working_stop_behind(fake, market):
    from catalyst.brokers.base import BrokerOrderReport
    from catalyst.positions import close_with_fills

    fake.partial_fills("ACME", 0.6)
    position = open_acme(qty=10)  # 6 filled; a standalone gtc stop protects them
    fake.partial_fills("ACME", None)
    (stop,) = live_stops(fake)
    # another run sold the 6 and is closing the position (e.g. a redriven exit racing this one)
    sold = BrokerOrderReport("x", f"exit-p{position.id}", "ACME", "sell", 6, "filled", 6, 100.0)
    close_with_fills(get_runtime(), position.id, [sold], reason="manual")
    assert fake.order(stop["id"])["status"] in ("pending_cancel", "canceled")  # it cannot sell short later
    assert live_stops(fake) == []


@pytest.mark.parametrize("raised, expected", [
    ("chunked", "OrderOutcomeUnknown"),  # the reply broke off mid-body: the order may exist
    ("json", "OrderOutcomeUnknown"),     # the reply could not be read: likewise
    ("redis", "BrokerError"),            # the shared rate-limit store failed before sending: nothing placed
])
def test_every_transport_failure_of_a_submit_is_mapped_never_raw(fake, market, raised, expected):
    import redis
    import requests

    from catalyst.brokers.base import BrokerError, OrderOutcomeUnknown, OrderRequest

    errors = {"chunked": requests.exceptions.ChunkedEncodingError("connection broken"),
              "json": requests.exceptions.JSONDecodeError("Expecting value", "", 0),
              "redis": redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")}
    broker = get_runtime().broker

    def fail(*_a, **_k):
        raise errors[raised]

    broker.client.submit_order = fail
    with pytest.raises(BrokerError) as caught:
        broker.submit_order(OrderRequest("entry-c1-ACME", "ACME", "buy", 1))
    assert type(caught.value).__name__ == expected
    assert isinstance(caught.value, OrderOutcomeUnknown) == (expected == "OrderOutcomeUnknown")


def test_an_exit_cancels_a_stop_leg_whose_replacement_our_books_never_learned(fake, market):
    from catalyst.protection import raise_stop

    fake.partial_fills("ACME", 0.6)
    position = open_acme()  # 6 filled: a standalone stop (no bracket group to cancel it with) protects them
    fake.partial_fills("ACME", None)
    fake.fail("PATCH", "/v2/orders/", "lost_reply")  # the trail's replace is applied; its answer is lost ...
    fake.fail("GET", "/v2/orders/", "500")  # ... and so is the lookup that would have learned the new leg
    raise_stop(get_runtime(), position.id, 97.0)
    stale = db_stop(position.id)
    assert stale.status in ("new", "held", "accepted") and stale.client_order_id == f"stop-p{position.id}-1"  # still the replaced leg
    request_exit(get_runtime(), position.id, "manual")
    closed = execute_exit(get_runtime(), position.id)
    assert (closed.status, closed.exit_price) == ("closed", 100.0)
    assert len(sells(fake)) == 1 and "ACME" not in fake.positions  # the live successor was cancelled first
    assert live_stops(fake) == []
