"""The signal table of DESIGN.md §3, row by row, for the US and HK profiles: each threshold is
checked exactly at, just inside and just outside, and the decision flow maps strengths to actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalyst.core.domain import Quote, Strength
from catalyst.core.exits import (
    HeldPosition,
    MarketFacts,
    assess_exit,
    indicator_signals,
    pnl_signals,
    session_signals,
    trailing_signal,
)
from catalyst.core.profiles import PROFILES, profile_for
from catalyst.core.sessions import SessionCalendar

US, HK = PROFILES["US"], PROFILES["HK"]
EPS = 0.01
NOW = datetime(2025, 3, 4, 16, 0, tzinfo=UTC)


def fired(signals, name):
    """The strength of signal ``name`` among ``signals`` (None when it did not fire)."""
    matches = [s for s in signals if s.name == name]
    assert len(matches) <= 1
    return matches[0].strength if matches else None


def position(entry=100.0, entry_volume=1000.0, high=None, stop=None, target=None) -> HeldPosition:
    return HeldPosition("TEST", 10, entry, NOW - timedelta(hours=1), high or entry, timedelta(hours=24), stop, target,
                        entry_volume)


# (profile, signal, value, expected strength) — at, inside and outside every tier
PNL_CASES = [
    (US, "stop_loss", -5.0, Strength.STRONG), (US, "stop_loss", -5.0 - EPS, Strength.STRONG),
    (US, "stop_loss", -5.0 + EPS, Strength.MODERATE),
    (US, "stop_loss", -3.0, Strength.MODERATE), (US, "stop_loss", -3.0 + EPS, Strength.WEAK),
    (US, "stop_loss", -2.0, Strength.WEAK), (US, "stop_loss", -2.0 + EPS, None), (US, "stop_loss", 0.0, None),
    (US, "take_profit", 10.0, Strength.STRONG), (US, "take_profit", 10.0 + EPS, Strength.STRONG),
    (US, "take_profit", 10.0 - EPS, Strength.MODERATE), (US, "take_profit", 6.0, Strength.MODERATE),
    (US, "take_profit", 6.0 - EPS, None),
    (HK, "stop_loss", -3.0, Strength.STRONG), (HK, "stop_loss", -3.0 - EPS, Strength.STRONG),
    (HK, "stop_loss", -3.0 + EPS, Strength.MODERATE), (HK, "stop_loss", -2.0, Strength.MODERATE),
    (HK, "stop_loss", -2.0 + EPS, None),  # HK has no WEAK stop tier
    (HK, "take_profit", 8.0, Strength.STRONG), (HK, "take_profit", 8.0 - EPS, Strength.MODERATE),
    (HK, "take_profit", 5.0, Strength.MODERATE), (HK, "take_profit", 5.0 - EPS, None),
]


@pytest.mark.parametrize("profile, name, pnl, expected", PNL_CASES,
                         ids=[f"{p.market}-{n}-{v:+.2f}" for p, n, v, _ in PNL_CASES])
def test_pnl_tiers_fire_at_and_beyond_each_threshold(profile, name, pnl, expected):
    signals = pnl_signals(pnl, profile)
    assert fired(signals, name) == expected
    for s in signals:  # the evidence: the P&L and the tier it crossed
        assert s.value == pytest.approx(pnl, abs=1e-4)
        assert (s.value <= s.threshold) if s.name == "stop_loss" else (s.value >= s.threshold)


INDICATOR_CASES = [
    ("rsi_overbought", {"rsi": 85.0}, Strength.STRONG), ("rsi_overbought", {"rsi": 85.0 + EPS}, Strength.STRONG),
    ("rsi_overbought", {"rsi": 85.0 - EPS}, Strength.MODERATE), ("rsi_overbought", {"rsi": 75.0}, Strength.MODERATE),
    ("rsi_overbought", {"rsi": 75.0 - EPS}, None),
    ("volume_collapse", {"recent_volume": 250.0}, Strength.STRONG),
    ("volume_collapse", {"recent_volume": 249.0}, Strength.STRONG),
    ("volume_collapse", {"recent_volume": 251.0}, Strength.MODERATE),
    ("volume_collapse", {"recent_volume": 400.0}, Strength.MODERATE),
    ("volume_collapse", {"recent_volume": 401.0}, None),
    ("macd_bearish", {"macd_hist": -0.5}, None), ("macd_bearish", {"macd_hist": -0.5 - 1e-4}, Strength.MODERATE),
    ("macd_bearish", {"macd_hist": -0.5 + 1e-4}, None),
]


@pytest.mark.parametrize("profile", [US, HK], ids=["US", "HK"])
@pytest.mark.parametrize("name, facts, expected", INDICATOR_CASES,
                         ids=[f"{n}-{list(f.values())[0]}" for n, f, _ in INDICATOR_CASES])
def test_indicator_signals_fire_at_and_beyond_each_threshold(profile, name, facts, expected):
    signals, unknown = indicator_signals(position(entry_volume=1000.0), MarketFacts(**facts), profile)
    assert fired(signals, name) == expected
    assert name not in unknown


@pytest.mark.parametrize("profile, drop_pct, expected", [
    (US, 3.0, Strength.MODERATE), (US, 3.0 + EPS, Strength.MODERATE), (US, 3.0 - EPS, None),
    (HK, 2.0, Strength.MODERATE), (HK, 2.0 + EPS, Strength.MODERATE), (HK, 2.0 - EPS, None),
], ids=["US-at", "US-beyond", "US-inside", "HK-at", "HK-beyond", "HK-inside"])
def test_trailing_stop_fires_at_its_distance_below_the_high_watermark(profile, drop_pct, expected):
    high = 200.0
    price = high * (1 - drop_pct / 100)
    assert fired(trailing_signal(price, high, profile), "trailing_stop") == expected


@pytest.mark.parametrize("minutes, name, expected", [
    (15.0, "near_close", Strength.STRONG), (0.5, "near_close", Strength.STRONG), (15.01, "near_close", None),
    (60.0, "power_hour", Strength.WEAK), (30.01, "power_hour", Strength.WEAK), (30.0, "power_hour", None),
    (60.01, "power_hour", None), (20.0, "power_hour", None), (20.0, "near_close", None),
])
@pytest.mark.parametrize("profile", [US, HK], ids=["US", "HK"])
def test_session_signals_follow_the_minutes_left_in_the_session(profile, minutes, name, expected):
    assert fired(session_signals(MarketFacts(minutes_to_close=minutes), profile), name) == expected


def test_near_close_uses_the_actual_early_close():
    cal = SessionCalendar.for_market("US")
    ny = ZoneInfo("America/New_York")
    early = datetime(2026, 11, 27, 12, 45, tzinfo=ny)  # closes at 13:00
    normal = datetime(2026, 11, 25, 12, 45, tzinfo=ny)  # closes at 16:00
    assert fired(session_signals(MarketFacts(minutes_to_close=cal.minutes_to_close(early)), US), "near_close") \
        == Strength.STRONG
    assert session_signals(MarketFacts(minutes_to_close=cal.minutes_to_close(normal)), US) == []


def test_missing_indicators_are_unknown_not_guessed():
    signals, unknown = indicator_signals(position(entry_volume=None), MarketFacts(), US)
    assert signals == []
    assert set(unknown) == {"rsi_overbought", "macd_bearish", "volume_collapse"}


def quote(price: float) -> Quote:
    return Quote("TEST", price, NOW - timedelta(seconds=30), 1000)


@pytest.mark.parametrize("price, facts, action, reason", [
    (94.0, MarketFacts(), "exit", "stop_loss"),                         # -6%: STRONG
    (96.5, MarketFacts(), "consult", "stop_loss"),                      # -3.5%: MODERATE → advisor
    (97.5, MarketFacts(), "hold", "stop_loss"),                         # -2.5%: WEAK → record, hold
    (101.0, MarketFacts(), "hold", None),                               # nothing
    (101.0, MarketFacts(rsi=90.0), "exit", "rsi_overbought"),
    (101.0, MarketFacts(rsi=80.0, minutes_to_close=45), "consult", "rsi_overbought"),
    (101.0, MarketFacts(minutes_to_close=45), "hold", "power_hour"),
    (101.0, MarketFacts(minutes_to_close=10), "exit", "near_close"),
    (111.0, MarketFacts(macd_hist=-1.0), "exit", "take_profit"),        # STRONG outranks MODERATE
], ids=["strong-stop", "moderate-stop", "weak-stop", "quiet", "rsi-strong", "rsi-moderate", "power-hour",
        "near-close", "strongest-wins"])
def test_decision_flow_maps_the_strongest_signal_to_an_action(price, facts, action, reason):
    a = assess_exit(position(), quote(price), NOW, timedelta(minutes=5), US, facts)
    assert (a.action, a.reason) == (action, reason)
    if a.signals:
        assert a.signals[0].name == reason
        assert a.signals[0].strength == max(s.strength for s in a.signals)


def test_hk_profile_is_tighter_than_us():
    # -3.5% is only MODERATE in the US but STRONG in Hong Kong
    us = assess_exit(position(), quote(96.5), NOW, timedelta(minutes=5), US)
    hk = assess_exit(position(), quote(96.5), NOW, timedelta(minutes=5), HK)
    assert (us.action, hk.action) == ("consult", "exit")


def test_thresholds_can_be_overridden_from_config():
    profile = profile_for("US", {"rsi_strong": 95, "stop_loss_strong": -8})
    signals, _ = indicator_signals(position(), MarketFacts(rsi=90.0), profile)
    assert fired(signals, "rsi_overbought") == Strength.MODERATE
    assert fired(pnl_signals(-6.0, profile), "stop_loss") == Strength.MODERATE


# -- properties over the whole table -------------------------------------------------------------

maybe = lambda s: st.none() | s  # noqa: E731
facts_strategy = st.builds(
    MarketFacts,
    rsi=maybe(st.floats(0, 100)),
    macd_hist=maybe(st.floats(-5, 5)),
    recent_volume=maybe(st.floats(0, 1e6)),
    minutes_to_close=maybe(st.floats(0, 400)),
)
prices = st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False)
bad_prices = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -1.0])
positions_strategy = st.builds(
    lambda entry, high_mult, vol, stop, target, hours: HeldPosition(
        "TEST", 10, entry, NOW - timedelta(hours=hours), entry * high_mult, timedelta(hours=24),
        stop and entry * stop, target and entry * target, vol),
    prices, st.floats(1.0, 3.0), maybe(st.floats(1, 1e6)), maybe(st.floats(0.5, 0.99)), maybe(st.floats(1.01, 2.0)),
    st.floats(0, 48))
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(pos=positions_strategy, price=bad_prices, facts=facts_strategy, profile=st.sampled_from([US, HK]),
       age=st.floats(0, 600))
def test_no_exit_is_ever_decided_from_a_bad_price(pos, price, facts, profile, age):
    a = assess_exit(pos, Quote("TEST", price, NOW - timedelta(seconds=age), 100), NOW, timedelta(minutes=5),
                    profile, facts)
    assert (a.action, a.signals) == ("hold", ())
    assert a.reason in ("bad_price", "stale_quote")


@FAST
@given(pos=positions_strategy, price=prices, facts=facts_strategy, profile=st.sampled_from([US, HK]),
       age=st.floats(301, 10_000))
def test_no_exit_is_ever_decided_from_a_stale_or_missing_price(pos, price, facts, profile, age):
    stale = assess_exit(pos, Quote("TEST", price, NOW - timedelta(seconds=age), 100), NOW, timedelta(minutes=5),
                        profile, facts)
    missing = assess_exit(pos, None, NOW, timedelta(minutes=5), profile, facts)
    assert (stale.action, stale.reason, stale.signals) == ("hold", "stale_quote", ())
    assert (missing.action, missing.reason, missing.signals) == ("hold", "no_price", ())


@FAST
@given(pos=positions_strategy, price=prices, facts=facts_strategy, profile=st.sampled_from([US, HK]))
def test_the_flow_follows_the_strongest_signal_and_is_deterministic(pos, price, facts, profile):
    q = Quote("TEST", price, NOW - timedelta(seconds=5), 100)
    a = assess_exit(pos, q, NOW, timedelta(minutes=5), profile, facts)
    assert a == assess_exit(pos, q, NOW, timedelta(minutes=5), profile, facts)
    strongest = max((s.strength for s in a.signals), default=None)
    expected = {Strength.STRONG: "exit", Strength.MODERATE: "consult"}.get(strongest, "hold")
    assert a.action == expected  # a STRONG signal always exits; MODERATE always consults
    if a.signals:
        assert a.reason == a.signals[0].name and a.signals[0].strength == strongest
    assert a.high_watermark >= pos.high_watermark
