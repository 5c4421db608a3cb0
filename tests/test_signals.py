"""The signal table of DESIGN.md §3, row by row, for the US and HK profiles: each threshold is
checked exactly at, just inside and just outside, and the decision flow maps strengths to actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalyst.core.domain import BadInput, Quote, Strength
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


# -- thresholds from configuration: ranges, order, null ------------------------------------------
# A threshold that is out of range or out of order changes which exits fire (``take_profit_strong: -1``
# sells every position on its first check), so a profile refuses it, naming it, instead of trading on it.

OUT_OF_RANGE = [
    ("rsi_strong", -5), ("rsi_strong", 101), ("rsi_moderate", 0), ("rsi_moderate", 40),
    ("take_profit_strong", -1), ("take_profit_moderate", 0), ("take_profit_strong", 5000),
    ("take_profit_strong", 0.08),  # seed 002's fractions: 0.08 would be a 0.08 % target, not 8 %
    ("stop_loss_strong", 5), ("stop_loss_moderate", 0), ("stop_loss_weak", -100), ("stop_loss_strong", -0.03),
    ("volume_collapse_strong", 1.5), ("volume_collapse_moderate", 1), ("volume_collapse_strong", 0),
    ("volume_collapse_moderate", -0.1),
    ("trailing_stop_pct", -3), ("trailing_stop_pct", 0), ("trailing_stop_pct", 100), ("trailing_stop_pct", 0.03),
    ("macd_hist_below", 0.5),
    ("near_close_minutes", -1), ("near_close_minutes", 0), ("near_close_minutes", 400),
    ("power_hour_from_minutes", 0), ("power_hour_from_minutes", 600), ("power_hour_until_minutes", -5),
]


@pytest.mark.parametrize("market", ["US", "HK"])
@pytest.mark.parametrize("name, value", OUT_OF_RANGE, ids=[f"{n}={v}" for n, v in OUT_OF_RANGE])
def test_a_threshold_out_of_its_range_is_refused_naming_it(market, name, value):
    with pytest.raises(BadInput) as info:
        profile_for(market, {name: value})
    message = str(info.value)
    assert name in message and f"{value:g}" in message, message
    assert "\n" not in message


NOT_NUMBERS = [("rsi_strong", "85"), ("rsi_strong", True), ("take_profit_strong", float("nan")),
               ("stop_loss_strong", [5]), ("take_profit_strong", -float("inf")), ("rsi_strong", -float("inf")),
               ("stop_loss_strong", float("inf"))]


@pytest.mark.parametrize("name, value", NOT_NUMBERS, ids=[f"{n}={v!r}" for n, v in NOT_NUMBERS])
def test_a_threshold_that_is_not_a_usable_number_is_refused_naming_it(name, value):
    with pytest.raises(BadInput, match=name):
        profile_for("US", {name: value})


OUT_OF_ORDER = [
    # (overrides on the US profile, the two thresholds the message must name)
    ({"stop_loss_moderate": -6}, ("stop_loss_strong", "stop_loss_moderate")),
    ({"stop_loss_weak": -4}, ("stop_loss_moderate", "stop_loss_weak")),
    ({"stop_loss_moderate": None, "stop_loss_weak": -6}, ("stop_loss_strong", "stop_loss_weak")),  # across a null
    ({"stop_loss_strong": -3}, ("stop_loss_strong", "stop_loss_moderate")),  # equal: the moderate tier never fires
    ({"take_profit_moderate": 12}, ("take_profit_strong", "take_profit_moderate")),
    ({"take_profit_strong": 5}, ("take_profit_strong", "take_profit_moderate")),
    ({"rsi_moderate": 90}, ("rsi_strong", "rsi_moderate")),
    ({"rsi_strong": 75}, ("rsi_strong", "rsi_moderate")),
    ({"volume_collapse_moderate": 0.2}, ("volume_collapse_strong", "volume_collapse_moderate")),
    ({"power_hour_until_minutes": 60}, ("power_hour_until_minutes", "power_hour_from_minutes")),
    ({"near_close_minutes": 60}, ("near_close_minutes", "power_hour_from_minutes")),
]


@pytest.mark.parametrize("overrides, names", OUT_OF_ORDER, ids=[str(o) for o, _ in OUT_OF_ORDER])
def test_tiers_out_of_order_are_refused_naming_both(overrides, names):
    """A stronger tier lies beyond a weaker one (deeper loss, higher gain or RSI, lower volume, nearer the close)."""
    with pytest.raises(BadInput) as info:
        profile_for("US", overrides)
    for name in names:
        assert name in str(info.value)


def test_hk_tiers_are_checked_against_the_hk_defaults():
    profile_for("US", {"stop_loss_moderate": -3.5})  # US strong tier is -5
    with pytest.raises(BadInput, match="stop_loss_strong"):
        profile_for("HK", {"stop_loss_moderate": -3.5})  # HK strong tier is -3


def test_every_problem_is_reported_at_once():
    with pytest.raises(BadInput) as info:
        profile_for("US", {"rsi_strong": -5, "take_profit_strong": -1, "bogus": 1})
    for name in ("rsi_strong", "take_profit_strong", "bogus"):
        assert name in str(info.value)


def test_an_unknown_signal_name_is_refused_naming_it():
    with pytest.raises(BadInput, match="rsi_stong"):
        profile_for("US", {"rsi_stong": 90})


@pytest.mark.parametrize("name", ["rsi_overbought", "rsi_oversold"])
def test_seed_002_signal_names_are_refused_as_not_supported(name):
    with pytest.raises(BadInput, match=f"{name} is not supported"):
        profile_for("US", {name: 70})


# The tier, the signal it raises and a US-default situation where exactly that tier fires:
# (price, high-watermark, market facts), for a position entered at 100 on a volume of 1,000.
TIERS = {
    "stop_loss_strong": ("stop_loss", Strength.STRONG, 94.0, None, MarketFacts()),
    "stop_loss_moderate": ("stop_loss", Strength.MODERATE, 96.5, None, MarketFacts()),
    "stop_loss_weak": ("stop_loss", Strength.WEAK, 97.5, None, MarketFacts()),
    "take_profit_strong": ("take_profit", Strength.STRONG, 111.0, None, MarketFacts()),
    "take_profit_moderate": ("take_profit", Strength.MODERATE, 107.0, None, MarketFacts()),
    "rsi_strong": ("rsi_overbought", Strength.STRONG, 101.0, None, MarketFacts(rsi=90.0)),
    "rsi_moderate": ("rsi_overbought", Strength.MODERATE, 101.0, None, MarketFacts(rsi=80.0)),
    "volume_collapse_strong": ("volume_collapse", Strength.STRONG, 101.0, None, MarketFacts(recent_volume=200.0)),
    "volume_collapse_moderate": ("volume_collapse", Strength.MODERATE, 101.0, None, MarketFacts(recent_volume=300.0)),
    "trailing_stop_pct": ("trailing_stop", Strength.MODERATE, 104.0, 110.0, MarketFacts()),
    "macd_hist_below": ("macd_bearish", Strength.MODERATE, 101.0, None, MarketFacts(macd_hist=-1.0)),
    "near_close_minutes": ("near_close", Strength.STRONG, 101.0, None, MarketFacts(minutes_to_close=10)),
    "power_hour_from_minutes": ("power_hour", Strength.WEAK, 101.0, None, MarketFacts(minutes_to_close=45)),
}


def _fired_pairs(profile, tier):
    _, _, price, high, facts = TIERS[tier]
    a = assess_exit(position(high=high), quote(price), NOW, timedelta(minutes=5), profile, facts)
    return {(s.name, s.strength) for s in a.signals}


@pytest.mark.parametrize("tier", TIERS)
def test_any_tier_switched_off_with_null_never_fires(tier):
    name, strength, *_ = TIERS[tier]
    assert (name, strength) in _fired_pairs(US, tier)  # control: the tier fires with the defaults
    off = profile_for("US", {tier: None})
    assert (name, strength) not in _fired_pairs(off, tier)
    assert off.thresholds()[tier] is None  # shown as switched off


def test_a_whole_signal_can_be_switched_off():
    off = profile_for("US", {"volume_collapse_strong": None, "volume_collapse_moderate": None})
    for recent in (0.0, 100.0, 300.0):
        signals, unknown = indicator_signals(position(), MarketFacts(recent_volume=recent), off)
        assert fired(signals, "volume_collapse") is None and "volume_collapse" not in unknown


def test_power_hour_until_null_runs_the_window_to_the_close():
    open_ended = profile_for("US", {"power_hour_until_minutes": None})
    assert fired(session_signals(MarketFacts(minutes_to_close=20), US), "power_hour") is None
    assert fired(session_signals(MarketFacts(minutes_to_close=20), open_ended), "power_hour") == Strength.WEAK
    assert fired(session_signals(MarketFacts(minutes_to_close=10), open_ended), "near_close") == Strength.STRONG


def test_a_null_tier_keeps_the_remaining_tiers_working():
    profile = profile_for("US", {"stop_loss_moderate": None})
    assert fired(pnl_signals(-4.0, profile), "stop_loss") == Strength.WEAK  # moderate gone: -4 % is only weak
    assert fired(pnl_signals(-6.0, profile), "stop_loss") == Strength.STRONG


def test_the_entry_rsi_cap_is_the_lowest_active_rsi_tier():
    """The scan never buys what the monitor would call overbought, whichever RSI tiers are on."""
    assert US.overbought_rsi == 75.0
    assert profile_for("US", {"rsi_moderate": None}).overbought_rsi == 85.0
    assert profile_for("US", {"rsi_moderate": None, "rsi_strong": None}).overbought_rsi == float("inf")


def test_an_infinite_threshold_on_its_never_firing_side_means_off():
    """Code (tests) may write "never" as an infinity; it is the same as null."""
    profile = profile_for("US", {"stop_loss_strong": -float("inf"), "take_profit_strong": float("inf"),
                                 "trailing_stop_pct": float("inf")})
    shown = profile.thresholds()
    assert [shown[k] for k in ("stop_loss_strong", "take_profit_strong", "trailing_stop_pct")] == [None, None, None]


def test_good_overrides_and_the_built_in_profiles_pass():
    for market in PROFILES:
        assert profile_for(market, {}) == PROFILES[market]
    profile = profile_for("US", {"rsi_strong": 90, "rsi_moderate": 70, "stop_loss_weak": None, "macd_hist_below": 0})
    assert (profile.rsi_strong, profile.rsi_moderate, profile.macd_hist_below) == (90.0, 70.0, 0.0)
