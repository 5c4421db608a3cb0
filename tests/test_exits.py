"""Exit judgement for one long position, as an operator expects it to behave.

Fixed stop and target prices and the max hold time are checked at, just inside and just
outside their thresholds; the recorded reason is the strongest signal (ties in canonical
order), and every signal carries the number that fired it and the threshold it crossed.
Property tests pin the safety rules: nothing is ever decided from a missing, unusable or
stale price, equal inputs give equal decisions, a STRONG signal always exits, and the
high-watermark only ever rises.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalyst.core.domain import BadInput, Quote, Strength
from catalyst.core.exits import (
    EXIT_REASONS,
    ExitAssessment,
    ExitSignal,
    HeldPosition,
    ordered,
    price_signals,
    quote_problem,
    realized_pnl,
)
from catalyst.core.exits import assess_exit as _assess_exit
from catalyst.core.profiles import PROFILES

# These tests isolate the Phase-2 price rules (fixed stop, fixed target, max hold): the P&L tiers,
# trailing stop and indicator signals are switched off here and covered in test_signals.py.
PRICE_ONLY = PROFILES["US"].with_overrides({
    "stop_loss_strong": -float("inf"), "stop_loss_moderate": None, "stop_loss_weak": None,
    "take_profit_strong": float("inf"), "take_profit_moderate": None, "trailing_stop_pct": float("inf")})


def assess_exit(pos, q, now, max_age, profile=PRICE_ONLY, facts=None):
    return _assess_exit(pos, q, now, max_age, profile, facts)


OPENED = datetime(2025, 3, 4, 14, 31, tzinfo=UTC)
NOW = OPENED + timedelta(hours=1)
MAX_AGE = timedelta(seconds=300)
CENT = 0.01
ONE_SECOND = timedelta(seconds=1)


def held(*, entry: float = 100.0, stop: float | None = 95.0, target: float | None = 115.0,
         max_hold: timedelta = timedelta(hours=24), high: float | None = None,
         opened_at: datetime = OPENED) -> HeldPosition:
    return HeldPosition(symbol="TEST", qty=10, entry_price=entry, opened_at=opened_at,
                        high_watermark=entry if high is None else high, max_hold=max_hold,
                        stop_loss_price=stop, take_profit_price=target)


def quote(price: float, at: datetime = NOW, volume: float = 10_000) -> Quote:
    return Quote("TEST", price, at, volume)


def names(signals) -> list[str]:
    return [s.name for s in signals]


# -- thresholds: at, just inside, just outside ---------------------------------------------------

PRICE_THRESHOLDS = [
    # (label, price, expected signal names)
    ("well between stop and target", 100.00, []),
    ("one cent above the stop", 95.01, []),
    ("exactly at the stop", 95.00, ["stop_loss"]),
    ("one cent below the stop", 94.99, ["stop_loss"]),
    ("far below the stop (gap down)", 50.00, ["stop_loss"]),
    ("one cent below the target", 114.99, []),
    ("exactly at the target", 115.00, ["take_profit"]),
    ("one cent above the target", 115.01, ["take_profit"]),
    ("far above the target (gap up)", 200.00, ["take_profit"]),
]


@pytest.mark.parametrize("label,price,expected", PRICE_THRESHOLDS, ids=[p[0] for p in PRICE_THRESHOLDS])
def test_price_signals_fire_at_and_beyond_the_fixed_stop_and_target_only(label, price, expected):
    assert names(price_signals(held(), price, NOW)) == expected


@pytest.mark.parametrize("label,price,expected", PRICE_THRESHOLDS, ids=[p[0] for p in PRICE_THRESHOLDS])
def test_assess_exit_exits_exactly_when_a_price_threshold_is_crossed(label, price, expected):
    a = assess_exit(held(), quote(price), NOW, MAX_AGE)
    assert a.exits == bool(expected)
    assert a.action == ("exit" if expected else "hold")
    assert a.reason == (expected[0] if expected else None)
    assert names(a.signals) == expected
    assert a.price == price
    assert a.pnl_pct == pytest.approx((price / 100.0 - 1.0) * 100.0)


MAX_HOLD_CASES = [
    ("one second before max hold", timedelta(hours=24) - ONE_SECOND, False),
    ("exactly at max hold", timedelta(hours=24), True),
    ("one second past max hold", timedelta(hours=24) + ONE_SECOND, True),
    ("a week past max hold", timedelta(days=8), True),
]


@pytest.mark.parametrize("label,held_for,fires", MAX_HOLD_CASES, ids=[c[0] for c in MAX_HOLD_CASES])
def test_max_hold_fires_once_the_position_has_been_held_long_enough(label, held_for, fires):
    now = OPENED + held_for
    a = assess_exit(held(), quote(100.0, now), now, MAX_AGE)
    assert a.exits is fires
    assert names(a.signals) == (["max_hold_time"] if fires else [])
    if fires:
        assert a.reason == "max_hold_time"
        (signal,) = a.signals
        assert signal.strength is Strength.STRONG
        assert signal.value == pytest.approx(held_for.total_seconds() / 3600.0)
        assert signal.threshold == pytest.approx(24.0)


def test_max_hold_is_configurable_per_position():
    short = held(max_hold=timedelta(minutes=30))
    just_before = OPENED + timedelta(minutes=30) - ONE_SECOND
    at = OPENED + timedelta(minutes=30)
    assert not assess_exit(short, quote(100.0, just_before), just_before, MAX_AGE).exits
    a = assess_exit(short, quote(100.0, at), at, MAX_AGE)
    assert a.exits and a.reason == "max_hold_time"
    assert a.signals[0].threshold == pytest.approx(0.5)


def test_a_position_without_stop_or_target_only_exits_on_max_hold():
    bare = held(stop=None, target=None)
    for price in (0.01, 1.0, 100.0, 1e6):
        assert price_signals(bare, price, NOW) == []
        assert not assess_exit(bare, quote(price), NOW, MAX_AGE).exits


def test_stop_signal_carries_the_price_and_the_stop_it_crossed():
    a = assess_exit(held(), quote(94.5), NOW, MAX_AGE)
    (signal,) = a.signals
    assert signal == ExitSignal("stop_loss", Strength.STRONG, 94.5, 95.0, signal.detail)
    assert signal.as_dict() == {"name": "stop_loss", "strength": "STRONG", "value": 94.5, "threshold": 95.0,
                                "detail": signal.detail}


def test_target_signal_carries_the_price_and_the_target_it_crossed():
    a = assess_exit(held(), quote(116.0), NOW, MAX_AGE)
    (signal,) = a.signals
    assert (signal.name, signal.strength, signal.value, signal.threshold) == ("take_profit", Strength.STRONG,
                                                                               116.0, 115.0)
    assert signal.as_dict()["strength"] == "STRONG"


# -- tie order -------------------------------------------------------------------------------------

def test_stop_loss_outranks_max_hold_when_both_fire():
    late = OPENED + timedelta(hours=25)
    a = assess_exit(held(), quote(90.0, late), late, MAX_AGE)
    assert a.reason == "stop_loss"
    assert names(a.signals) == ["stop_loss", "max_hold_time"]


def test_take_profit_outranks_max_hold_when_both_fire():
    late = OPENED + timedelta(hours=25)
    a = assess_exit(held(), quote(120.0, late), late, MAX_AGE)
    assert a.reason == "take_profit"
    assert names(a.signals) == ["take_profit", "max_hold_time"]


def test_stop_loss_outranks_take_profit_when_a_misconfigured_position_fires_both():
    crossed = held(stop=110.0, target=90.0)  # stop above target: both fire at 100
    late = OPENED + timedelta(hours=30)
    a = assess_exit(crossed, quote(100.0, late), late, MAX_AGE)
    assert names(a.signals) == ["stop_loss", "take_profit", "max_hold_time"]
    assert a.reason == "stop_loss"


def test_ordering_is_strongest_first_then_canonical_order_whatever_the_input_order():
    signals = [
        ExitSignal("macd_bearish", Strength.MODERATE, -0.6, -0.5),
        ExitSignal("max_hold_time", Strength.STRONG, 25, 24),
        ExitSignal("power_hour", Strength.WEAK, 45, 60),  # not canonical: sorts after canonical names
        ExitSignal("trailing_stop", Strength.MODERATE, 3.5, 3.0),
        ExitSignal("take_profit", Strength.STRONG, 120, 115),
        ExitSignal("stop_loss", Strength.WEAK, -2.1, -2.0),
        ExitSignal("near_close", Strength.STRONG, 10, 15),
        ExitSignal("volume_collapse", Strength.WEAK, 0.3, 0.4),
    ]
    expected = ["take_profit", "near_close", "max_hold_time", "trailing_stop", "macd_bearish", "stop_loss",
                "volume_collapse", "power_hour"]
    for perm in _some_permutations(signals):
        assert names(ordered(list(perm))) == expected


def _some_permutations(items, count: int = 50):
    """A deterministic handful of permutations (all 8! would be slow for no gain)."""
    perms = itertools.permutations(items)
    return [p for _, p in zip(range(count), perms)] + [tuple(reversed(items))]


def test_equal_strength_ties_follow_the_canonical_reason_list():
    strong = [ExitSignal(name, Strength.STRONG, 1.0, 1.0) for name in reversed(EXIT_REASONS)]
    assert names(ordered(strong)) == list(EXIT_REASONS)


# -- quotes that cannot be trusted -------------------------------------------------------------------

BAD_PRICES = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, -95.0, "100", None]


@pytest.mark.parametrize("price", BAD_PRICES, ids=repr)
def test_an_unusable_price_holds_with_bad_price_even_below_the_stop(price):
    late = OPENED + timedelta(days=3)  # max hold long passed: would exit with any good price
    a = assess_exit(held(), quote(price, late), late, MAX_AGE)
    assert (a.action, a.reason, a.signals, a.price, a.pnl_pct) == ("hold", "bad_price", (), None, None)
    assert a.high_watermark == 100.0


def test_a_missing_quote_holds_with_no_price():
    late = OPENED + timedelta(days=3)
    a = assess_exit(held(), None, late, MAX_AGE)
    assert (a.action, a.reason, a.signals, a.price) == ("hold", "no_price", (), None)


STALENESS = [
    ("fresh", timedelta(0), None),
    ("one second inside max age", MAX_AGE - ONE_SECOND, None),
    ("exactly max age", MAX_AGE, None),
    ("one second past max age", MAX_AGE + ONE_SECOND, "stale_quote"),
    ("a day old", timedelta(days=1), "stale_quote"),
]


@pytest.mark.parametrize("label,age,problem", STALENESS, ids=[s[0] for s in STALENESS])
def test_quotes_older_than_max_age_are_stale_and_decide_nothing(label, age, problem):
    a = assess_exit(held(), quote(50.0, NOW - age), NOW, MAX_AGE)  # 50 is far below the stop
    if problem is None:
        assert a.exits and a.reason == "stop_loss"
    else:
        assert (a.action, a.reason, a.signals, a.price) == ("hold", problem, (), None)


def test_a_quote_from_the_future_decides_nothing_beyond_one_second_of_skew():
    assert quote_problem(quote(100.0, NOW + ONE_SECOND), NOW, MAX_AGE) is None
    a = assess_exit(held(), quote(50.0, NOW + timedelta(seconds=2)), NOW, MAX_AGE)
    assert (a.action, a.reason, a.price) == ("hold", "future_quote", None)


def test_a_naive_now_is_refused_loudly():
    with pytest.raises(BadInput):
        assess_exit(held(), quote(100.0), datetime(2025, 3, 4, 15, 0), MAX_AGE)


def test_realized_pnl_in_money_and_percent():
    assert realized_pnl(100.0, 95.0, 10) == pytest.approx((-50.0, -5.0))
    assert realized_pnl(100.0, 115.0, 10) == pytest.approx((150.0, 15.0))


# -- properties ----------------------------------------------------------------------------------------

good_prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
bad_prices = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(float("-inf")), st.just(0.0), st.just(-0.0),
    st.floats(max_value=-1e-9, allow_nan=False),  # negatives, including -inf
)
ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
max_ages = st.timedeltas(min_value=ONE_SECOND, max_value=timedelta(hours=1))


@st.composite
def positions(draw) -> HeldPosition:
    entry = draw(good_prices)
    stop = draw(st.none() | st.floats(min_value=0.01, max_value=entry, allow_nan=False))
    target = draw(st.none() | st.floats(min_value=entry, max_value=2e6, allow_nan=False))
    high = draw(st.floats(min_value=entry, max_value=3e6, allow_nan=False))
    max_hold = draw(st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=10)))
    return held(entry=entry, stop=stop, target=target, high=high, max_hold=max_hold)


held_fors = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(pos=positions(), price=bad_prices, held_for=held_fors, age=st.timedeltas(min_value=timedelta(0),
                                                                                 max_value=timedelta(seconds=60)))
def test_no_exit_is_ever_decided_from_a_nan_infinite_zero_or_negative_price(pos, price, held_for, age):
    now = OPENED + held_for
    a = assess_exit(pos, quote(price, now - age), now, timedelta(seconds=300))
    assert not a.exits
    assert (a.action, a.reason, a.signals, a.price, a.pnl_pct) == ("hold", "bad_price", (), None, None)
    assert a.high_watermark == pos.high_watermark


@FAST
@given(pos=positions(), held_for=held_fors)
def test_no_exit_is_ever_decided_without_a_quote(pos, held_for):
    a = assess_exit(pos, None, OPENED + held_for, MAX_AGE)
    assert (a.action, a.reason, a.signals, a.price) == ("hold", "no_price", (), None)
    assert a.high_watermark == pos.high_watermark


@FAST
@given(pos=positions(), price=good_prices | bad_prices, held_for=held_fors, max_age=max_ages,
       extra=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=5)))
def test_no_exit_is_ever_decided_from_a_quote_older_than_max_age(pos, price, held_for, max_age, extra):
    now = OPENED + held_for
    a = assess_exit(pos, quote(price, now - max_age - extra), now, max_age)
    assert not a.exits
    assert a.reason in ("stale_quote", "bad_price")
    if math.isfinite(price) and price > 0:
        assert a.reason == "stale_quote"
    assert a.signals == () and a.price is None


@FAST
@given(pos=positions(), price=good_prices | bad_prices | st.none(), held_for=held_fors, age=ages, max_age=max_ages)
def test_equal_inputs_always_give_the_same_decision(pos, price, held_for, age, max_age):
    now = OPENED + held_for
    q = None if price is None else quote(price, now - age)
    first = assess_exit(pos, q, now, max_age)
    copy = HeldPosition(**{f: getattr(pos, f) for f in pos.__dataclass_fields__})
    q2 = None if q is None else Quote(q.symbol, q.price, q.timestamp, q.volume)
    second = assess_exit(copy, q2, now, max_age)
    assert _same(first, second)


def _same(a: ExitAssessment, b: ExitAssessment) -> bool:
    """Every field an operator would read from the decision record."""
    return (a.action, a.reason, a.signals, a.price, a.pnl_pct, a.high_watermark) == (
        b.action, b.reason, b.signals, b.price, b.pnl_pct, b.high_watermark)


@FAST
@given(pos=positions(), price=good_prices, held_for=held_fors, age=st.timedeltas(min_value=timedelta(0),
                                                                                  max_value=MAX_AGE))
def test_a_strong_signal_always_exits_with_the_strongest_reason(pos, price, held_for, age):
    now = OPENED + held_for
    fired = ordered(price_signals(pos, price, now))
    a = assess_exit(pos, quote(price, now - age), now, MAX_AGE)
    assert a.signals == fired
    if any(s.strength is Strength.STRONG for s in fired):
        assert a.exits
        assert a.reason == fired[0].name
        assert a.signals[0].strength is Strength.STRONG
    else:
        assert not a.exits and a.reason is None
    assert a.reason is None or a.reason in EXIT_REASONS
    for s in a.signals:  # every signal carries its evidence
        assert math.isfinite(s.value) and math.isfinite(s.threshold)


@FAST
@given(pos=positions(), prices=st.lists(good_prices | bad_prices | st.none(), min_size=1, max_size=30),
       max_age=max_ages)
def test_high_watermark_never_decreases_across_a_sequence_of_checks(pos, prices, max_age):
    high = pos.high_watermark
    now = OPENED
    for p in prices:
        now += timedelta(seconds=30)
        current = HeldPosition(**{**{f: getattr(pos, f) for f in pos.__dataclass_fields__}, "high_watermark": high})
        a = assess_exit(current, None if p is None else quote(p, now), now, max_age)
        assert a.high_watermark is not None
        assert a.high_watermark >= high
        if a.price is not None:
            assert a.high_watermark == max(high, a.price)
        high = a.high_watermark
    assert high >= pos.high_watermark
