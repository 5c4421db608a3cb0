"""Position sizing as pure functions (issue 9): three modes, whole shares, stop and target from config or ATR."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalyst.core.risk import Refusal
from catalyst.core.sizing import Plan, SizingRules, plan, protective_prices, whole

FIXED = SizingRules(mode="fixed", position_size_usd=1000.0, stop_loss_pct=0.05, take_profit_pct=0.15)


@pytest.mark.parametrize("price, qty", [
    (50.0, 20),       # exactly 1,000
    (33.0, 30),       # 990: the 31st share would pass 1,000
    (999.99, 1),
    (0.2, 5000),
    (0.3, 3333),
])
def test_fixed_dollar_sizing_buys_whole_shares_rounded_down(price, qty):
    sized = plan("AAA", price, FIXED)
    assert isinstance(sized, Plan) and sized.qty == qty and isinstance(sized.qty, int)
    assert sized.qty * price <= 1000.0 + 1e-6


def test_a_share_dearer_than_the_allotment_is_a_refusal_not_an_order():
    refused = plan("BRK", 1000.01, FIXED)
    assert refused == Refusal("zero_shares", "BRK: fixed sizing buys no whole share at 1000.01 "
                                             "(it allots $1,000.00): no order")


@pytest.mark.parametrize("equity, pct, price, qty", [
    (100_000.0, 0.02, 50.0, 40),
    (100_000.0, 0.02, 2001.0, 0),
    (12_345.67, 0.10, 7.0, 176),
])
def test_percent_of_equity_sizing(equity, pct, price, qty):
    sized = plan("AAA", price, SizingRules(mode="equity_pct", equity_pct=pct), equity=equity)
    if qty:
        assert (sized.qty, sized.budget_usd, sized.equity) == (qty, round(equity * pct, 2), equity)
    else:
        assert isinstance(sized, Refusal) and sized.reason == "zero_shares"


@pytest.mark.parametrize("equity", [None, 0.0, -5.0, float("nan"), float("inf")])
def test_percent_of_equity_without_a_usable_equity_is_refused(equity):
    refused = plan("AAA", 50.0, SizingRules(mode="equity_pct"), equity=equity)
    assert isinstance(refused, Refusal) and refused.reason == "equity_unknown"


@pytest.mark.parametrize("price, stop_pct, atr, stop_multiple, risk, qty, stop", [
    (50.0, 0.05, None, None, 100.0, 40, 47.5),        # 100 / 2.50
    (50.0, 0.05, 1.2, 2.0, 100.0, 41, 47.6),          # 100 / 2.40 = 41.67
    (20.0, 0.05, 0.05, 1.0, 100.0, 2000, 19.95),      # a tight stop buys many shares ...
    (10.0, 0.05, None, None, 1.0, 2, 9.5),            # 1 / 0.50
    (10.0, 0.05, None, None, 0.49, 0, 9.5),           # ... too little risk buys none
])
def test_atr_risk_sizing_divides_the_risk_per_trade_by_the_distance_to_the_stop(price, stop_pct, atr, stop_multiple,
                                                                                risk, qty, stop):
    rules = SizingRules(mode="atr_risk", risk_per_trade_usd=risk, stop_loss_pct=stop_pct,
                        atr_stop_multiple=stop_multiple)
    sized = plan("AAA", price, rules, atr=atr)
    if qty:
        assert (sized.qty, sized.stop) == (qty, stop)
        assert sized.qty * (price - sized.stop) <= risk + 1e-6
    else:
        assert isinstance(sized, Refusal) and sized.reason == "zero_shares"
        assert "risk at 0.50 a share" in sized.message


def test_every_mode_is_capped_at_the_maximum_position_value():
    rules = SizingRules(mode="atr_risk", risk_per_trade_usd=100.0, atr_stop_multiple=1.0, max_position_value_usd=5000.0)
    sized = plan("AAA", 20.0, rules, atr=0.05)  # 2,000 shares ($40,000) by risk; 250 by value
    assert (sized.qty, sized.capped) == (250, True)
    assert plan("AAA", 20.0, SizingRules(position_size_usd=10_000.0, max_position_value_usd=5000.0)).qty == 250
    refused = plan("AAA", 6000.0, SizingRules(position_size_usd=10_000.0, max_position_value_usd=5000.0))
    assert refused.reason == "zero_shares" and "capped at $5,000.00" in refused.message


@pytest.mark.parametrize("price, rules, atr, expected", [
    (50.0, SizingRules(stop_loss_pct=0.05, take_profit_pct=0.15), None, (47.5, 57.5)),
    (33.33, SizingRules(stop_loss_pct=0.05, take_profit_pct=0.15), None, (31.66, 38.33)),  # in cents
    (50.0, SizingRules(atr_stop_multiple=2.0, atr_target_multiple=4.0), 0.8, (48.4, 53.2)),
    (50.0, SizingRules(atr_stop_multiple=2.0), 0.8, (48.4, 57.5)),        # target from the percentage
    (50.0, SizingRules(atr_target_multiple=3.0), 0.8, (47.5, 52.4)),      # stop from the percentage
])
def test_stop_and_target_come_from_percentages_or_atr_multiples(price, rules, atr, expected):
    assert protective_prices(price, rules, atr) == expected


@pytest.mark.parametrize("price, rules, atr, reason", [
    (50.0, SizingRules(atr_stop_multiple=2.0), None, "atr_unknown"),
    (50.0, SizingRules(atr_stop_multiple=2.0), float("nan"), "atr_unknown"),
    (50.0, SizingRules(atr_target_multiple=2.0), 0.0, "atr_unknown"),
    (5.0, SizingRules(atr_stop_multiple=3.0), 2.0, "stop_below_zero"),
    (5.0, SizingRules(atr_stop_multiple=1.0), 0.001, "stop_too_close"),    # 4.999 rounds to 5.00
    (5.0, SizingRules(atr_target_multiple=1.0), 0.001, "target_too_close"),
    (0.0, SizingRules(), None, "bad_price"),
    (0.1, SizingRules(), None, "stop_too_close"),  # a sub-penny stop cannot be placed: 0.095 is 0.10 in cents
])
def test_protective_prices_that_cannot_protect_are_refused(price, rules, atr, reason):
    refused = protective_prices(price, rules, atr)
    assert isinstance(refused, Refusal) and refused.reason == reason


def test_a_plan_names_the_numbers_it_came_from():
    sized = plan("AAA", 50.0, SizingRules(mode="equity_pct", equity_pct=0.02, atr_stop_multiple=2.0), equity=100_000,
                 atr=1.0)
    assert sized.as_dict() == {"qty": 40, "stop": 48.0, "target": 57.5, "mode": "equity_pct", "budget_usd": 2000.0,
                               "capped": False, "atr": 1.0, "equity": 100_000}


def test_rules_are_read_from_settings_and_an_unknown_mode_is_refused():
    from catalyst.settings import load_settings

    rules = SizingRules.of(load_settings(sizing="atr_risk", risk_per_trade_usd=250, atr_stop_multiple=1.5))
    assert (rules.mode, rules.risk_per_trade_usd, rules.atr_stop_multiple, rules.max_position_value_usd) == (
        "atr_risk", 250.0, 1.5, 5000.0)
    assert rules.needs_atr and not rules.needs_equity
    with pytest.raises(ValueError, match="not one of fixed, equity_pct, atr_risk"):
        SizingRules(mode="kelly")


@given(price=st.floats(1, 100_000), dollars=st.floats(1, 1_000_000))
def test_fixed_size_never_exceeds_the_allotment_and_never_leaves_a_whole_share_unbought(price, dollars):
    sized = plan("AAA", price, SizingRules(position_size_usd=dollars, stop_loss_pct=0.05, take_profit_pct=0.15))
    if isinstance(sized, Refusal):
        assert sized.reason == "zero_shares" and price > dollars * (1 - 1e-9)
    else:
        assert sized.qty >= 1
        assert sized.qty * price <= dollars * (1 + 1e-9)
        assert (sized.qty + 1) * price > dollars * (1 - 1e-9)


@pytest.mark.parametrize("shares, n", [(2.9999999999999996, 3), (3.0, 3), (2.99, 2), (0.999, 0), (-1.0, 0),
                                       (math.inf, 0), (math.nan, 0)])
def test_whole_shares_round_down_but_not_below_a_float_error(shares, n):
    assert whole(shares) == n
