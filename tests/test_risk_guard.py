"""The risk guard on the real entry path (issue 9: pre-trade risk checks, sizing).

Real PostgreSQL, the paper broker (its book in its own tables, like a remote broker's), replayed
flat prices and a simulated clock five minutes into a session. Every entry — the scanner's and an
operator's — is checked under the entry gate when its intent is written: a refusal is a decision
with its reasons and no order. Races run real threads released together by a barrier, 20 rounds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from catalyst.brokers.base import BrokerError
from catalyst.core.domain import BadInput
from catalyst.core.indicators import compute as compute_indicators
from catalyst.cycles import evaluate_cycle
from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, Order, PaperOrder, PaperPosition, Position, Security, TradingState
from catalyst.records import security_id
from catalyst.entries import open_position
from catalyst.positions import execute_exit
from catalyst.runtime import get_runtime
from tests.support import environment, query, race, rows, scanned_cycle, write_replay_csv

pytestmark = pytest.mark.postgres

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH"]
OTHER = "JJJ"  # held before a race starts
ZIG = "ZIG"  # swings a dollar every minute: a known ATR
PRICE = 50.0
QTY = 10  # $500 a position, $25 to its stop (47.50)
ROUNDS = 20


@pytest.fixture
def market(pg_url, tmp_path):
    """This process on the test database with replayed prices; ``market(**env)`` enters it with extra settings."""
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [PRICE] * 240)) for s in SYMBOLS + [OTHER]]
    paths.append(str(write_replay_csv(tmp_path / f"{ZIG}.csv", ZIG, SESSION_OPEN,
                                      [PRICE + (i % 2) for i in range(240)])))

    def _enter(**extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": "replay:" + ",".join(paths),
                            "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=5)).isoformat()}@1",
                            **extra})

    return _enter


def manual_id() -> str:
    return f"manual-{uuid.uuid4().hex[:24]}"  # the form `catalyst open` sends


def enter_task(**kwargs):
    """The real ``enter_position`` task, run in this thread as a worker would run its message."""
    return entry_task().apply(kwargs=kwargs)


def entry_task():
    """The registered task itself (finalizing the Celery app first: threads must not race to bind it)."""
    import tasks.trading  # noqa: F401 - registers the task
    from catalyst.celery import app

    return app.tasks["catalyst.enter_position"]


def enter(symbol: str, qty: float = QTY, **kw) -> Position:
    return open_position(get_runtime(), symbol=symbol, qty=qty, client_order_id=kw.pop("client_order_id", manual_id()),
                         **kw)


def broker_holdings() -> dict[str, float]:
    return {p.symbol: p.qty for p in rows(PaperPosition) if p.qty}


def book_holdings() -> dict[str, float]:
    return {p.symbol: p.qty for p in rows(Position, Position.status != "closed")}


def close_all(*keep: str) -> None:
    for p in rows(Position, Position.status != "closed"):
        if p.symbol not in keep:
            execute_exit(get_runtime(), p.id)


def closed_position(symbol: str, realized: float, closed_at: datetime) -> None:
    """A position closed earlier, with its realized P&L (as the exit path leaves it)."""
    with session_scope() as s:
        s.add(Position(security_id=security_id(s, symbol, "XNYS"), symbol=symbol, qty=100, status="closed", entry_price=PRICE,
                       high_watermark=PRICE, stop_loss_price=47.5, take_profit_price=57.5, max_hold_seconds=3600,
                       opened_at=closed_at - timedelta(hours=1), closed_at=closed_at, exit_price=PRICE + realized / 100,
                       exit_reason="stop_loss", realized_pnl=realized, updated_at=closed_at))


def cycle_with_candidates(symbols: list[str], price: float = PRICE) -> int:
    """A scanned cycle whose candidates all pass the scanner's screen."""
    return scanned_cycle(symbols, price)


def entry_decisions() -> list[Decision]:
    return query(lambda s: s.scalars(select(Decision).where(Decision.kind == "entry").order_by(Decision.id)).all())


def assert_nothing_sent(held_before: dict[str, float]) -> None:
    assert broker_holdings() == book_holdings() == held_before


# -- each refusal, through the real entry path: a decision with its reasons, no order ---------------------

def trading_state(state: dict):
    """The ``halted`` row as the CLI (and, for REDUCING, the risk monitor) leaves it."""
    def setup():
        with session_scope() as s:
            s.add(TradingState(key="halted", value=state, updated_at=datetime.now(UTC)))
    return setup


def a_loss_today(realized: float):
    return lambda: closed_position(OTHER, realized, datetime(2025, 3, 4, 9, 31, tzinfo=EST))


def held(symbol: str, qty: float = QTY):
    return lambda: enter(symbol, qty)


REFUSALS = {
    # rule: (settings, setup, entry kwargs, reason, a fragment of the message)
    "halted": ({}, trading_state({"halted": True, "reason": "operator"}), {}, "halted", "trading is halted (operator)"),
    "reducing": ({}, trading_state({"halted": False, "state": "REDUCING", "reason": "daily loss at 75%"}), {}, "reducing",
                 "trading is reducing risk (daily loss at 75%)"),
    "already_held": ({}, held("AAA"), {}, "already_held", "AAA is already held or being entered"),
    "position_limit": ({"CATALYST_MAX_POSITIONS": "1"}, held("BBB"), {}, "position_limit",
                       "position limit 1 reached (1 held or in flight)"),
    "position_too_large": ({}, None, {"qty": 101}, "position_too_large",
                           "101 AAA at $50.00 is worth $5,050.00, above the $5,000.00 maximum"),
    "position_too_small": ({"CATALYST_MIN_POSITION_VALUE_USD": "600"}, None, {}, "position_too_small",
                           "below the $600.00 minimum position value"),
    "sector_exposure": ({"CATALYST_SECTORS": '{"AAA": "Technology", "BBB": "Technology"}',
                         "CATALYST_MAX_SECTOR_EXPOSURE_USD": "800"}, held("BBB"), {}, "sector_exposure",
                        "sector Technology would hold $1,000.00 ($500.00 held or in flight + $500.00 of AAA)"),
    "daily_loss_limit": ({}, a_loss_today(-1980.0), {}, "daily_loss_limit",
                         "with AAA the day could lose $2,005.00, reaching the $2,000.00 daily loss limit: "
                         "realized -$1,980.00"),
    "reward_risk": ({}, None, {"stop": 45.0, "target": 52.0}, "reward_risk",
                    "reward:risk of AAA is 0.40 (target 52.0, stop 45.0, price 50), below the minimum 1.5"),
}


@pytest.mark.parametrize("rule", list(REFUSALS))
def test_an_entry_that_breaks_a_rule_is_refused_recorded_and_never_sent(market, rule):
    settings, setup, kwargs, reason, fragment = REFUSALS[rule]
    kwargs = dict(kwargs)
    with market(**settings):
        if setup:
            setup()
        before = broker_holdings()
        orders_before = len(rows(PaperOrder))
        client_order_id = manual_id()

        result = enter_task(symbol="AAA", qty=kwargs.pop("qty", QTY), client_order_id=client_order_id, **kwargs)

        assert result.failed() and isinstance(result.result, BadInput), result.result
        assert fragment in str(result.result), str(result.result)
        assert_nothing_sent(before)
        assert len(rows(PaperOrder)) == orders_before
        assert rows(Order, Order.client_order_id == client_order_id) == [], "no intent is written"
        refused = [d for d in entry_decisions() if d.action == "skip"]
        assert [(d.reason, d.symbol, d.details["client_order_id"]) for d in refused] == [
            (reason, "AAA", client_order_id)]
        assert fragment in refused[0].details["refusals"][0]["message"]
        assert refused[0].details["entry"]["price"] == PRICE


def test_a_refusal_lists_every_rule_the_entry_breaks(market):
    with market(CATALYST_MAX_POSITIONS="1"):
        enter("AAA")
        result = enter_task(symbol="AAA", qty=200, stop=45.0, target=52.0, client_order_id=manual_id())
        assert result.failed()
        (decision,) = [d for d in entry_decisions() if d.action == "skip"]
        assert [r["reason"] for r in decision.details["refusals"]] == [
            "already_held", "position_limit", "position_too_large", "reward_risk"]
        assert all(r["message"] in str(result.result) for r in decision.details["refusals"])


def test_the_position_limit_binds_an_operators_catalyst_open_too(market):
    from catalyst.cli import main

    with market(CATALYST_MAX_POSITIONS="1"):
        first = CliRunner().invoke(main, ["open", "AAA", "--qty", "10"])
        assert first.exit_code == 0, first.output
        second = CliRunner().invoke(main, ["open", "BBB", "--qty", "10"])
        assert second.exit_code != 0
        assert "position limit 1 reached" in second.output
        assert broker_holdings() == book_holdings() == {"AAA": 10}
        assert [d.reason for d in entry_decisions()] == ["manual", "position_limit"]


def test_todays_realized_loss_is_counted_in_the_markets_day_not_utc(market):
    with market():
        # 22:00 in New York on the 3rd is the 4th in UTC: yesterday's loss, whatever UTC says
        closed_position(OTHER, -1990.0, datetime(2025, 3, 4, 3, 0, tzinfo=UTC))
        assert enter("AAA").status == "open"
        # 01:00 in New York on the 4th: today's
        closed_position(OTHER, -1950.0, datetime(2025, 3, 4, 6, 0, tzinfo=UTC))
        result = enter_task(symbol="BBB", qty=QTY, client_order_id=manual_id())
        assert result.failed() and "realized -$1,950.00" in str(result.result)
        assert [d.reason for d in entry_decisions()] == ["manual", "daily_loss_limit"]
        assert "open risk to stops $25.00, this trade's risk to its stop $25.00" in str(result.result)


def test_a_sector_recorded_on_the_security_counts_when_the_map_no_longer_names_it(market):
    with market(CATALYST_SECTORS='{"AAA": "Energy"}'):
        enter("AAA")
        assert query(lambda s: s.scalar(select(Security.sector).where(Security.symbol == "AAA"))) == "Energy"
    with market(CATALYST_SECTORS='{"BBB": "Energy"}', CATALYST_MAX_SECTOR_EXPOSURE_USD="900"):
        result = enter_task(symbol="BBB", qty=QTY, client_order_id=manual_id())
        assert result.failed() and "sector Energy would hold $1,000.00" in str(result.result)
        assert entry_decisions()[-1].reason == "sector_exposure"


UNSENT = "manual-" + "a" * 24


def test_an_intent_not_yet_sent_is_checked_again_against_the_limits_when_redelivered(market):
    """Its first delivery died before sending; meanwhile the day lost money. The gate asks again: refused, retired."""
    with market():
        now = get_runtime().clock.now()
        with session_scope() as s:
            s.add(Order(client_order_id=UNSENT, symbol="AAA", side="buy", purpose="entry", qty=QTY,
                        stop_loss_price=47.5, take_profit_price=57.5, reference_price=PRICE,
                        status="pending_submit", created_at=now, updated_at=now))
        closed_position(OTHER, -1990.0, datetime(2025, 3, 4, 9, 32, tzinfo=EST))

        result = enter_task(symbol="AAA", qty=QTY, client_order_id=UNSENT)

        assert result.failed() and "reaching the $2,000.00 daily loss limit" in str(result.result), result.result
        (intent,) = rows(Order, Order.client_order_id == UNSENT)
        assert (intent.status, intent.error) == ("canceled", "daily_loss_limit before it was sent")
        assert [d.reason for d in entry_decisions()] == ["daily_loss_limit"]
        assert rows(PaperOrder) == [] and broker_holdings() == {}


# -- races: concurrent entries never exceed a limit ---------------------------------------------------

def race_entries(fn):
    entry_task()  # bound once, before the threads start
    return race(8, fn)


def assert_round(results, reason: str) -> None:
    """Two of eight entries opened; the six others refused for ``reason``, each with one decision."""
    opened = [r for r in results if not isinstance(r, Exception) and r.successful()]
    refused = [r for r in results if not isinstance(r, Exception) and r.failed()]
    assert (len(opened), len(refused)) == (2, 6), [getattr(r, "result", r) for r in results]
    assert all(isinstance(r.result, BadInput) for r in refused), [r.result for r in refused]
    recent = [d for d in entry_decisions() if d.action == "skip"][-6:]
    assert [d.reason for d in recent] == [reason] * 6, [(d.reason, d.details) for d in recent]


def test_concurrent_entries_scanner_and_manual_never_exceed_the_position_limit(market):
    with market(CATALYST_MAX_POSITIONS="3"):
        enter(OTHER)  # held throughout: room for 2
        for _ in range(ROUNDS):
            cycle_id = cycle_with_candidates(SYMBOLS)

            def one(i: int):
                symbol = SYMBOLS[i]
                if i % 2:  # an operator's `catalyst open`
                    return enter_task(symbol=symbol, qty=QTY, client_order_id=manual_id())
                return enter_task(symbol=symbol, qty=QTY, stop=47.5, target=57.5, cycle_id=cycle_id,
                                  client_order_id=f"entry-c{cycle_id}-{symbol}", reason="momentum")

            results = race_entries(one)
            assert_round(results, "position_limit")
            assert len(book_holdings()) == 3 and broker_holdings() == book_holdings()
            close_all(OTHER)
        assert len(rows(Position)) == 1 + 2 * ROUNDS


def test_concurrent_entries_never_exceed_the_sector_exposure_limit(market):
    sectors = '{' + ", ".join(f'"{s}": "Technology"' for s in SYMBOLS) + f', "{OTHER}": "Energy"' + '}'
    with market(CATALYST_SECTORS=sectors, CATALYST_MAX_SECTOR_EXPOSURE_USD="1000", CATALYST_MAX_POSITIONS="10"):
        enter(OTHER, qty=18)  # $900 of Energy: another sector's exposure never counts
        for _ in range(ROUNDS):
            results = race_entries(lambda i: enter_task(symbol=SYMBOLS[i], qty=QTY, client_order_id=manual_id()))
            assert_round(results, "sector_exposure")
            tech = sum(q for s, q in broker_holdings().items() if s in SYMBOLS) * PRICE
            assert tech == 1000.0 and broker_holdings() == book_holdings()
            close_all(OTHER)


def test_concurrent_entries_never_exceed_the_daily_loss_projection(market):
    with market(CATALYST_MAX_DAILY_LOSS_USD="1000", CATALYST_MAX_POSITIONS="10"):
        closed_position(OTHER, -930.0, datetime(2025, 3, 4, 9, 31, tzinfo=EST))  # room for two risks of $25
        for _ in range(ROUNDS):
            results = race_entries(lambda i: enter_task(symbol=SYMBOLS[i], qty=QTY, client_order_id=manual_id()))
            assert_round(results, "daily_loss_limit")
            assert len(book_holdings()) == 2 and broker_holdings() == book_holdings()
            close_all()  # flat prices: each round closes at +0, the day stays at -930


# -- the scanner's entries are sized by the sizing mode -------------------------------------------------

def planned(cycle_id: int) -> dict[str, tuple[str, str, dict]]:
    return {d.symbol: (d.action, d.reason, d.details) for d in rows(Decision, Decision.cycle_id == cycle_id,
                                                                    Decision.kind == "evaluate")}


def test_fixed_sizing_buys_whole_shares_of_the_position_size(market):
    with market(CATALYST_POSITION_SIZE_USD="1020"):
        (entry,) = evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"]))
        assert (entry.qty, entry.stop_loss_price, entry.take_profit_price) == (20, 47.5, 57.5)
        position = open_position(get_runtime(), symbol="AAA", qty=entry.qty, stop=entry.stop_loss_price,
                                 target=entry.take_profit_price, cycle_id=entry.cycle_id,
                                 client_order_id=entry.client_order_id, reason="momentum")
        assert (position.qty, position.entry_price) == (20, PRICE)


def test_percent_of_equity_sizing_reads_the_brokers_equity(market):
    with market(CATALYST_SIZING="equity_pct", CATALYST_EQUITY_PCT="0.02", CATALYST_PAPER_CASH="100000"):
        enter(OTHER, qty=40)  # cash 98,000 + 40 x 50 at market: equity is still 100,000
        assert get_runtime().broker.equity() == pytest.approx(100_000.0)
        (entry,) = evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"]))
        assert entry.qty == 40  # 2% of 100,000 at 50
        action, _, details = planned(entry.cycle_id)["AAA"]
        assert details["sizing"] == {"qty": 40, "stop": 47.5, "target": 57.5, "mode": "equity_pct",
                                     "budget_usd": 2000.0, "capped": False, "atr": None, "equity": 100_000.0}


class NoEquity:
    """A broker whose account endpoint fails (HTTP 500)."""

    def __init__(self, broker):
        self.inner, self.name, self.supports_legs = broker, broker.name, broker.supports_legs

    def equity(self):
        raise BrokerError("reading the account failed at Alpaca (HTTP 500)")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_without_the_brokers_equity_percent_of_equity_sizing_enters_nothing(market):
    with market(CATALYST_SIZING="equity_pct"):
        rt = get_runtime()
        rt.broker = NoEquity(rt.broker)
        assert evaluate_cycle(rt, cycle_with_candidates(["AAA", "BBB"])) == []
        assert {s: r for s, (_, r, _) in planned(1).items()} == {"AAA": "equity_unknown", "BBB": "equity_unknown"}
        assert rows(PaperOrder) == []


def test_atr_risk_sizing_divides_the_risk_by_the_distance_to_an_atr_stop(market):
    later = f"sim:{(SESSION_OPEN + timedelta(minutes=60)).isoformat()}@1"
    with market(CATALYST_CLOCK=later, CATALYST_SIZING="atr_risk", CATALYST_RISK_PER_TRADE_USD="100",
                CATALYST_ATR_STOP_MULTIPLE="2", CATALYST_ATR_TARGET_MULTIPLE="5"):
        rt = get_runtime()
        bars = rt.market_data.bars(ZIG, rt.clock.now(), 200)
        atr = compute_indicators(bars, "America/New_York").atr
        assert 0.5 < atr < 1.5  # a dollar swing a minute
        (entry,) = evaluate_cycle(rt, cycle_with_candidates([ZIG]))
        stop = round(PRICE - 2 * atr, 2)
        assert (entry.stop_loss_price, entry.take_profit_price) == (stop, round(PRICE + 5 * atr, 2))
        assert entry.qty == int(100 // (PRICE - stop))
        assert entry.qty * (PRICE - stop) <= 100
        assert planned(entry.cycle_id)[ZIG][2]["sizing"]["atr"] == pytest.approx(atr)


def test_an_atr_stop_without_an_atr_is_a_recorded_skip_not_an_order(market):
    with market(CATALYST_ATR_STOP_MULTIPLE="2"):  # five minutes in: too few bars for an ATR
        assert evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"])) == []
        ((action, reason, details),) = planned(1).values()
        assert (action, reason) == ("skip", "atr_unknown") and "no usable ATR" in details["message"]


def test_a_share_dearer_than_the_allotment_is_skipped_with_zero_shares(market):
    with market(CATALYST_POSITION_SIZE_USD="40"):
        assert evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"])) == []
        ((action, reason, details),) = planned(1).values()
        assert (action, reason) == ("skip", "zero_shares")
        assert "buys no whole share at 50" in details["message"]


def test_the_scanners_plan_passes_the_same_risk_checks_entries_in_the_cycle_included(market):
    with market(CATALYST_SECTORS='{"AAA": "Tech", "BBB": "Tech", "CCC": "Tech"}', CATALYST_POSITION_SIZE_USD="500",
                CATALYST_MAX_SECTOR_EXPOSURE_USD="1000"):
        entries = evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA", "BBB", "CCC", "DDD"]))
        assert [e.symbol for e in entries] == ["AAA", "BBB", "DDD"]
        skipped = planned(entries[0].cycle_id)["CCC"]
        assert skipped[:2] == ("skip", "sector_exposure")
        assert "sector Tech would hold $1,500.00" in skipped[2]["refusals"][0]["message"]


def test_a_plan_capped_at_the_maximum_value_is_trimmed_if_the_price_rose_before_it_is_sent(market):
    with market(CATALYST_POSITION_SIZE_USD="10000"):
        (entry,) = evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA"], price=45.0))
        assert entry.qty == 111  # capped: 111 x 45 = 4,995
        position = open_position(get_runtime(), symbol="AAA", qty=entry.qty, stop=47.5, target=57.5,
                                 cycle_id=entry.cycle_id, client_order_id=entry.client_order_id, reason="momentum")
        assert position.qty == 100  # at 50 the same plan would be worth 5,550: cut to 5,000
        with pytest.raises(BadInput, match="above the \\$5,000.00 maximum"):  # an operator's quantity is never cut
            enter("BBB", qty=111)


def test_no_automatic_entries_when_auto_entries_is_off(market):
    with market(CATALYST_AUTO_ENTRIES="false"):
        assert evaluate_cycle(get_runtime(), cycle_with_candidates(["AAA", "BBB"])) == []
        assert {s: (a, r) for s, (a, r, _) in planned(1).items()} == {
            "AAA": ("skip", "auto_entries_off"), "BBB": ("skip", "auto_entries_off")}
        assert enter("AAA").status == "open"  # an operator still opens by hand


# -- broker equity -----------------------------------------------------------------------------------------

def test_alpaca_equity_is_the_accounts_equity_and_a_missing_one_is_an_error():
    from catalyst.brokers.alpaca import AlpacaBroker
    from catalyst.ratelimit import LocalTokenBucket
    from tests.fake_alpaca import FakeAlpaca

    with FakeAlpaca(cash=25_000.0) as fake:
        fake.set_price("ACME", 100.0)
        broker = AlpacaBroker(api_key=fake.key_id, secret_key=fake.secret, base_url=fake.base_url,
                              live_trading=False, timeout=2, bucket=LocalTokenBucket())
        assert broker.equity() == 25_000.0
        fake.account_overrides = {"equity": None}
        with pytest.raises(BrokerError, match="no usable equity"):
            broker.equity()
        fake.account_overrides = {"equity": "0"}
        with pytest.raises(BrokerError, match="not a number above zero"):
            broker.equity()
        fake.account_overrides = {}
        fake.fail("GET", "/v2/account", "500")
        with pytest.raises(BrokerError, match="HTTP 500"):
            broker.equity()
        assert fake.count("GET", "/v2/account") == 4
