"""Pre-trade risk checks as pure functions (issue 9): every rule, its edge, and the order of the answer."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalyst.core.risk import Book, Entry, Holding, Limits, Refusal, TradingState, check_entry, day_span, market_day

LIMITS = Limits(max_positions=5, max_position_value_usd=5000.0, min_position_value_usd=0.0,
                max_sector_exposure_usd=None, max_daily_loss_usd=2000.0, min_reward_risk=1.5)
NY = ZoneInfo("America/New_York")


def entry(symbol="AAA", qty=10, price=50.0, stop=47.5, target=57.5, sector=None) -> Entry:
    return Entry(symbol, qty, price, stop, target, sector)


def held(symbol, qty=10, price=50.0, cost=50.0, stop=47.5, sector=None, in_flight=False) -> Holding:
    return Holding(symbol, qty, price, cost, stop, sector, in_flight)


def reasons(e: Entry, book: Book = Book(), limits: Limits = LIMITS) -> list[str]:
    return [r.reason for r in check_entry(e, book, limits)]


def test_an_ordinary_entry_into_an_empty_book_is_admitted():
    assert check_entry(entry(), Book(), LIMITS) == []


@pytest.mark.parametrize("state, reason, word", [
    (TradingState.HALTED, "halted", "halted"),
    (TradingState.REDUCING, "reducing", "reducing risk"),
])
def test_nothing_enters_unless_trading_is_active(state, reason, word):
    (refusal,) = check_entry(entry(), Book(state=state, state_reason="daily loss at 75%"), LIMITS)
    assert refusal.reason == reason
    assert f"trading is {word} (daily loss at 75%)" in refusal.message


def test_a_second_position_in_a_symbol_is_refused_whether_held_or_in_flight():
    assert reasons(entry(), Book(holdings=(held("AAA"),))) == ["already_held"]
    assert reasons(entry(), Book(holdings=(held("AAA", in_flight=True),))) == ["already_held"]


@pytest.mark.parametrize("holdings, limit, refused", [
    (4, 5, False),
    (5, 5, True),  # entries in flight count: 3 held + 2 in flight is 5
    (6, 5, True),
    (0, 0, True),
])
def test_the_position_limit_counts_holdings_and_entries_in_flight(holdings, limit, refused):
    book = Book(holdings=tuple(held(f"S{i}", in_flight=i >= 3) for i in range(holdings)))
    got = reasons(entry(), book, Limits(max_positions=limit))
    assert got == (["position_limit"] if refused else [])


@pytest.mark.parametrize("qty, price, reason", [
    (100, 50.0, None),          # $5,000.00: at the maximum is allowed
    (101, 50.0, "position_too_large"),
    (1, 5000.01, "position_too_large"),
    (3, 33.3333333, None),      # $99.9999999 rounds to the cent, never decided by float noise
])
def test_the_maximum_position_value(qty, price, reason):
    e = entry(qty=qty, price=price, stop=round(price * 0.95, 2), target=round(price * 1.15, 2))
    assert reasons(e) == ([reason] if reason else [])


@pytest.mark.parametrize("qty, minimum, refused", [(10, 500.0, False), (9, 500.0, True), (1, 0.0, False)])
def test_the_minimum_position_value(qty, minimum, refused):
    got = reasons(entry(qty=qty), Book(), Limits(min_position_value_usd=minimum))
    assert got == (["position_too_small"] if refused else [])


def test_sector_exposure_counts_holdings_and_entries_in_flight_in_that_sector_only():
    book = Book(holdings=(held("MSFT", qty=40, sector="Technology"), held("NVDA", qty=30, sector=" technology ",
                                                                            in_flight=True),
                          held("XOM", qty=90, sector="Energy")))
    limits = Limits(max_sector_exposure_usd=4000.0)
    assert reasons(entry(qty=10, sector="Technology"), book, limits) == []  # 2000 + 1500 + 500 = 4000
    (refusal,) = check_entry(entry(qty=11, sector="Technology"), book, limits)
    assert refusal.reason == "sector_exposure"
    assert "sector Technology would hold $4,050.00 ($3,500.00 held or in flight + $550.00 of AAA)" in refusal.message
    assert reasons(entry(qty=11, sector="Utilities"), book, limits) == []
    assert reasons(entry(qty=11, sector=None), book, limits) == []  # an unmapped symbol has no sector limit
    assert reasons(entry(qty=11, sector="Technology"), book, Limits()) == []  # no sector limit configured


def test_the_daily_loss_projection_adds_realized_unrealized_open_risk_and_this_trades_risk():
    # realized -1,500; a position marked 2 below cost (unrealized -20) with 0.5 left to its stop (open risk 5);
    # this trade risks 10 x 2.50 = 25: the day could lose 1,550.
    book = Book(holdings=(held("BBB", price=48.0, cost=50.0, stop=47.5),), realized_pnl=-1500.0)
    assert reasons(entry(), book) == []
    assert reasons(entry(), book, Limits(max_daily_loss_usd=1550.01)) == []
    (refusal,) = check_entry(entry(), book, Limits(max_daily_loss_usd=1550.0))  # reaching the limit is refused
    assert refusal.reason == "daily_loss_limit"
    assert refusal.message == ("with AAA the day could lose $1,550.00, reaching the $1,550.00 daily loss limit: "
                               "realized -$1,500.00, unrealized -$20.00, open risk to stops $5.00, "
                               "this trade's risk to its stop $25.00")


def test_an_entry_in_flight_puts_its_risk_to_its_stop_in_the_projection():
    limits = Limits(max_daily_loss_usd=1000.0)
    book = Book(realized_pnl=-950.0)
    assert reasons(entry(), book, limits) == []  # 950 + 25
    assert reasons(entry(), Book(holdings=(held("BBB", in_flight=True),), realized_pnl=-950.0),
                   limits) == ["daily_loss_limit"]  # 950 + 25 + 25
    # ... and the same once it has filled: its remaining risk to the stop still counts
    assert reasons(entry(), Book(holdings=(held("BBB"),), realized_pnl=-950.0), limits) == ["daily_loss_limit"]


def test_a_day_already_beyond_its_loss_limit_admits_nothing():
    assert reasons(entry(qty=1), Book(realized_pnl=-2000.0)) == ["daily_loss_limit"]


def test_gains_today_leave_room_for_more_risk():
    assert reasons(entry(qty=100, stop=30.0, target=90.0), Book(realized_pnl=0.0),
                   Limits(max_daily_loss_usd=1500.0)) == ["daily_loss_limit"]  # risk 2,000
    assert reasons(entry(qty=100, stop=30.0, target=90.0), Book(realized_pnl=600.0),
                   Limits(max_daily_loss_usd=1500.0)) == []


@pytest.mark.parametrize("price, stop, target, minimum, ratio", [
    (50.0, 47.5, 57.5, 1.5, 3.0),
    (50.0, 45.0, 57.5, 1.5, 1.5),     # exactly the minimum: admitted
    (50.0, 45.0, 57.49, 1.5, None),   # a cent short: refused
    (100.0, 90.0, 110.0, 1.5, None),  # 1:1
    (100.0, 90.0, 110.0, 1.0, 1.0),
    (100.0, 90.0, 110.0, 0.0, 1.0),   # no minimum: not checked
])
def test_reward_to_risk_must_reach_the_minimum(price, stop, target, minimum, ratio):
    e = entry(qty=1, price=price, stop=stop, target=target)
    got = reasons(e, Book(), Limits(min_reward_risk=minimum))
    assert got == ([] if ratio is not None else ["reward_risk"])
    if ratio is not None:
        assert e.reward_risk == pytest.approx(ratio)


def test_reward_to_risk_without_a_target_is_unknown_and_refused():
    (refusal,) = check_entry(entry(target=None), Book(), LIMITS)
    assert refusal.reason == "reward_risk" and "unknown (no target)" in refusal.message


def test_a_stop_at_or_above_the_price_is_refused():
    assert reasons(entry(stop=50.0)) == ["stop_not_below_price", "reward_risk"]


@pytest.mark.parametrize("qty, price", [(0, 50.0), (-1, 50.0), (10, float("nan")), (float("inf"), 50.0)])
def test_a_quantity_or_price_that_is_not_a_positive_number_is_refused(qty, price):
    assert reasons(entry(qty=qty, price=price)) == ["bad_entry"]


def test_every_broken_rule_is_listed_in_a_fixed_order():
    book = Book(state=TradingState.HALTED, holdings=tuple(held(s, sector="Tech") for s in ("AAA", "B", "C", "D", "E")),
                realized_pnl=-1990.0)
    limits = Limits(max_sector_exposure_usd=1000.0, min_position_value_usd=600.0)
    got = reasons(entry(qty=11, price=50.0, stop=49.0, target=50.5, sector="Tech"), book, limits)
    assert got == ["halted", "already_held", "position_limit", "position_too_small", "sector_exposure",
                   "daily_loss_limit", "reward_risk"]
    assert reasons(entry(qty=200, sector="Tech"), Book(), Limits(max_sector_exposure_usd=1000.0,
                                                                   max_daily_loss_usd=100.0)) == [
        "position_too_large", "sector_exposure", "daily_loss_limit"]


def test_limits_are_read_from_settings():
    from catalyst.settings import load_settings

    limits = Limits.of(load_settings(max_positions=3, max_sector_exposure_usd=7000, min_reward_risk=2))
    assert (limits.max_positions, limits.max_sector_exposure_usd, limits.min_reward_risk) == (3, 7000.0, 2.0)
    assert (limits.max_position_value_usd, limits.min_position_value_usd, limits.max_daily_loss_usd) == (
        5000.0, 0.0, 2000.0)


def test_refusals_are_reason_codes_that_fit_the_decisions_column():
    book = Book(state=TradingState.REDUCING, holdings=(held("AAA"),), realized_pnl=-5000.0)
    refusals = check_entry(entry(qty=1000, stop=60.0, target=None, sector="x"), book,
                           Limits(max_positions=0, min_position_value_usd=1e9, max_sector_exposure_usd=1.0))
    assert all(isinstance(r, Refusal) and r.reason.isidentifier() and len(r.reason) <= 64 for r in refusals)
    assert len(refusals) == 9


@given(qty=st.integers(1, 10_000), price=st.floats(0.01, 10_000), room=st.integers(0, 8),
       realized=st.floats(-5000, 5000))
def test_an_admitted_entry_never_breaks_a_limit(qty, price, room, realized):
    stop, target = round(price * 0.9, 2), round(price * 1.2, 2)
    book = Book(holdings=tuple(held(f"S{i}") for i in range(room)), realized_pnl=realized)
    e = entry(qty=qty, price=price, stop=stop, target=target)
    if check_entry(e, book, LIMITS) == []:
        assert book.count < LIMITS.max_positions
        assert round(e.value, 2) <= LIMITS.max_position_value_usd
        assert -(realized + book.unrealized_pnl - book.open_risk - e.risk) < LIMITS.max_daily_loss_usd + 0.01


# -- the market's day ---------------------------------------------------------------------------------

@pytest.mark.parametrize("now, day", [
    (datetime(2025, 3, 4, 14, 30, tzinfo=UTC), date(2025, 3, 4)),
    (datetime(2025, 3, 5, 3, 0, tzinfo=UTC), date(2025, 3, 4)),   # 22:00 in New York: still the 4th
    (datetime(2025, 3, 5, 5, 0, tzinfo=UTC), date(2025, 3, 5)),   # midnight in New York
])
def test_the_market_day_is_the_date_in_the_exchanges_time_zone(now, day):
    assert market_day(now, NY) == day


def test_a_day_span_runs_midnight_to_midnight_in_exchange_time_across_dst():
    assert day_span(date(2025, 3, 4), NY) == (datetime(2025, 3, 4, 5, tzinfo=UTC), datetime(2025, 3, 5, 5, tzinfo=UTC))
    start, end = day_span(date(2025, 3, 9), NY)  # the spring-forward day is 23 hours long
    assert (end - start).total_seconds() == 23 * 3600


# -- the daily-loss monitor (issue 9): thresholds, states, and the monitor that only escalates ----------------

from catalyst.core.risk import (DailyPnl, GuardState, GuardVerdict, daily_pnl, max_hold_problems,  # noqa: E402
                                max_hold_seconds, monitor_verdict)

DAY = date(2025, 3, 4)
NEXT_DAY = date(2025, 3, 5)


def pnl(total: float, limit: float = 1000.0, warning: float = 0.75) -> DailyPnl:
    return DailyPnl(realized=total, unrealized=0.0, limit=limit, warning_pct=warning)


@pytest.mark.parametrize("loss, level", [
    (0.0, TradingState.ACTIVE),
    (749.99, TradingState.ACTIVE),
    (750.0, TradingState.REDUCING),  # exactly 75 %
    (999.99, TradingState.REDUCING),
    (1000.0, TradingState.HALTED),  # exactly 100 %
    (1000.004, TradingState.HALTED),  # to the cent
    (5000.0, TradingState.HALTED),
])
def test_the_loss_level_is_decided_to_the_cent_exactly_at_75_and_100_percent(loss, level):
    assert pnl(-loss).level is level


def test_a_gain_is_no_loss():
    assert pnl(+3000.0).level is TradingState.ACTIVE and pnl(+3000.0).loss == 0.0


def test_a_float_sum_just_under_the_threshold_is_not_decided_by_rounding_error():
    p = DailyPnl(realized=-0.1 * 3 * 2500, unrealized=0.0, limit=1000.0, warning_pct=0.75)  # -750.0000000000001
    assert p.level is TradingState.REDUCING
    assert DailyPnl(-749.0, -0.99, 1000.0, 0.75).level is TradingState.ACTIVE  # 749.99: a cent short


def test_daily_pnl_adds_realized_and_unrealized_and_names_holdings_without_figures():
    book = Book(holdings=(held("AAA", qty=10, price=45.0, cost=50.0), held("BBB", price=float("nan")),
                          held("CCC", qty=float("inf"))), realized_pnl=-100.0)
    p = daily_pnl(book, 1000.0, 0.75)
    assert (p.realized, p.unrealized, p.total, p.unpriced) == (-100.0, -50.0, -150.0, ("BBB", "CCC"))
    assert daily_pnl(Book(realized_pnl=float("nan")), 1000.0, 0.75).total == 0.0


@pytest.mark.parametrize("current, loss, expected", [
    # from ACTIVE
    (GuardState(), 0.0, GuardVerdict(TradingState.ACTIVE, False)),
    (GuardState(), 750.0, GuardVerdict(TradingState.REDUCING, False, "reduce", "daily_loss_warning")),
    (GuardState(), 1000.0, GuardVerdict(TradingState.HALTED, True, "halt", "daily_loss_limit")),
    # REDUCING lasts for its market day, whatever the loss does meanwhile
    (GuardState(TradingState.REDUCING, market_day=DAY), 0.0, GuardVerdict(TradingState.REDUCING, False)),
    (GuardState(TradingState.REDUCING, market_day=DAY), 800.0, GuardVerdict(TradingState.REDUCING, False)),
    (GuardState(TradingState.REDUCING, market_day=DAY), 1000.0,
     GuardVerdict(TradingState.HALTED, True, "halt", "daily_loss_limit")),
    # HALTED is never lowered by the monitor
    (GuardState(TradingState.HALTED, flatten=True), 0.0, GuardVerdict(TradingState.HALTED, True)),
    (GuardState(TradingState.HALTED, flatten=True), 2000.0, GuardVerdict(TradingState.HALTED, True)),
    (GuardState(TradingState.HALTED, flatten=False), 750.0, GuardVerdict(TradingState.HALTED, False)),
    # a halt that kept its positions becomes an emergency stop at the limit
    (GuardState(TradingState.HALTED, flatten=False), 1000.0,
     GuardVerdict(TradingState.HALTED, True, "flatten", "daily_loss_limit")),
])
def test_the_monitor_only_escalates(current, loss, expected):
    assert monitor_verdict(current, DAY, pnl(-loss)) == expected


def test_reducing_lifts_on_the_next_market_day_and_a_new_days_loss_is_judged_afresh():
    yesterday = GuardState(TradingState.REDUCING, reason="daily loss warning", market_day=DAY)
    assert yesterday.effective(NEXT_DAY).state is TradingState.ACTIVE
    assert yesterday.effective(DAY).state is TradingState.REDUCING
    assert monitor_verdict(yesterday, NEXT_DAY, pnl(0.0)) == GuardVerdict(TradingState.ACTIVE, False, "lift",
                                                                          "new_market_day")
    assert monitor_verdict(yesterday, NEXT_DAY, pnl(-800.0)).change == "reduce"
    assert monitor_verdict(yesterday, NEXT_DAY, pnl(-1000.0)).change == "halt"
    halted = GuardState(TradingState.HALTED, market_day=DAY)
    assert halted.effective(NEXT_DAY).state is TradingState.HALTED  # only an operator lifts HALTED


@pytest.mark.parametrize("value, state, flatten", [
    (None, TradingState.ACTIVE, False),
    ({}, TradingState.ACTIVE, False),
    ({"halted": False, "reason": None}, TradingState.ACTIVE, False),  # the CLI's old resume
    ({"halted": True, "reason": "operator"}, TradingState.HALTED, False),  # the CLI's old halt
    ({"halted": True, "state": "HALTED", "flatten": True}, TradingState.HALTED, True),
    ({"halted": False, "state": "reducing", "market_day": "2025-03-04"}, TradingState.REDUCING, False),
    ({"halted": False, "state": "REDUCING", "market_day": "not a day"}, TradingState.REDUCING, False),
    ({"state": "HALTED?"}, TradingState.ACTIVE, False),
    ("garbage", TradingState.ACTIVE, False),
])
def test_the_stored_state_is_read_safely(value, state, flatten):
    parsed = GuardState.parse(value)
    assert (parsed.state, parsed.flatten) == (state, flatten)


# -- max hold per strategy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy, expected", [
    ("opening_range_breakout", 30 * 60.0),
    ("Momentum", 90 * 60.0),  # the entry reason's spelling does not matter
    ("manual", 24 * 3600.0),  # not configured: the default hours
    (None, 24 * 3600.0),
])
def test_max_hold_comes_from_the_strategy_else_the_default_hours(strategy, expected):
    assert max_hold_seconds(strategy, {"opening_range_breakout": 30, "momentum": 90}, 24.0) == expected


@pytest.mark.parametrize("mapping, problem", [
    ({"momentum": 0}, "must be a number of minutes above 0, got 0"),
    ({"momentum": -5}, "above 0, got -5"),
    ({"momentum": float("nan")}, "above 0, got nan"),
    ({"momentum": True}, "above 0, got True"),
    ({"momentum": "30"}, "above 0, got '30'"),
    ({" ": 30}, "must be a name"),
    ({"momentum": 30, "MOMENTUM": 20}, "listed twice"),
    (["momentum"], "must be a mapping"),
])
def test_a_bad_max_hold_mapping_is_refused_with_a_clear_message(mapping, problem):
    assert any(problem in p for p in max_hold_problems(mapping)), max_hold_problems(mapping)
    assert max_hold_problems({"momentum": 90, "opening_range_breakout": 30.5}) == []
