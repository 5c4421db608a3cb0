"""What an operator expects from the synthetic market: scripted days, repeatable, no peeking."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from catalyst.core.domain import BadInput, UnknownSymbol
from catalyst.marketdata.synthetic import SyntheticMarketData

NY = ZoneInfo("America/New_York")
DATES = [date(2025, 3, 12), date(2024, 11, 4), date(2026, 1, 16)]  # Wed, Mon, Fri
TICKERS = ["CHOP", "CRSH", "DNTR", "FLAT", "GAPU", "MOON", "SLID", "SPIK", "STDY", "UPTR", "VOLC", "WHIP"]


@pytest.fixture(scope="module")
def md() -> SyntheticMarketData:
    return SyntheticMarketData()


def ny(d: date, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, ss, tzinfo=NY)


def bar_at(md: SyntheticMarketData, symbol: str, d: date, hh: int, mm: int):
    return md.session_bars(symbol, d)[(hh - 9) * 60 + mm - 30]


def test_universe_is_the_twelve_scripted_symbols(md):
    assert md.name == "synthetic"
    assert md.symbols() == TICKERS


def test_every_symbol_has_a_catalyst_headline(md):
    assert all(symbol in md.catalyst(symbol) for symbol in md.symbols())


def test_two_instances_see_the_same_price():
    at = ny(DATES[0], 11, 17, 5)
    a, b = SyntheticMarketData(seed=7), SyntheticMarketData(seed=7)
    for symbol in TICKERS:
        assert a.quote(symbol, at) == b.quote(symbol, at)
        assert a.bars(symbol, at, 30) == b.bars(symbol, at, 30)


def test_another_process_computes_the_same_price(md):
    code = (
        "from datetime import datetime; from zoneinfo import ZoneInfo;"
        "from catalyst.marketdata.synthetic import SyntheticMarketData;"
        "at = datetime(2025, 3, 12, 10, 33, tzinfo=ZoneInfo('America/New_York'));"
        "q = SyntheticMarketData(seed=7).quote('CRSH', at);"
        "print(repr(q.price), q.timestamp.isoformat(), q.volume)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    q = md.quote("CRSH", ny(DATES[0], 10, 33))
    assert out.stdout.split() == [repr(q.price), q.timestamp.isoformat(), str(q.volume)]


def test_a_different_seed_gives_a_different_market():
    at = ny(DATES[0], 12, 0)
    assert SyntheticMarketData(seed=7).quote("UPTR", at) != SyntheticMarketData(seed=8).quote("UPTR", at)


def test_bars_cover_only_the_weekday_session(md):
    day = md.session_bars("UPTR", DATES[0])
    assert len(day) == 390
    assert day[0].timestamp == ny(DATES[0], 9, 30)
    assert day[-1].timestamp == ny(DATES[0], 15, 59)
    assert all(b.timestamp.tzinfo == NY for b in day)
    assert md.session_bars("UPTR", date(2025, 3, 15)) == ()  # Saturday


@pytest.mark.parametrize("d", DATES)
def test_ohlc_is_consistent_for_every_symbol(md, d):
    for symbol in TICKERS:
        for bar in md.session_bars(symbol, d):
            assert bar.symbol == symbol
            assert bar.high >= max(bar.open, bar.close)
            assert bar.low <= min(bar.open, bar.close)
            assert bar.low > 0
            prices = (bar.open, bar.high, bar.low, bar.close)
            assert all(type(p) is float and round(p, 2) == p for p in prices)
            assert isinstance(bar.volume, int) and bar.volume > 0


def change(md, symbol, d, hh=15, mm=59) -> float:
    """Return from the session's first open to the close of the bar at hh:mm."""
    return bar_at(md, symbol, d, hh, mm).close / md.session_bars(symbol, d)[0].open - 1


@pytest.mark.parametrize("d", DATES)
def test_uptr_climbs_about_four_percent(md, d):
    assert 0.025 <= change(md, "UPTR", d) <= 0.055


@pytest.mark.parametrize("d", DATES)
def test_dntr_falls_about_four_percent(md, d):
    assert -0.055 <= change(md, "DNTR", d) <= -0.025


@pytest.mark.parametrize("d", DATES)
def test_crsh_is_flat_then_crashes_mid_morning(md, d):
    day = md.session_bars("CRSH", d)
    first = day[0].open
    assert all(abs(b.close / first - 1) < 0.015 for b in day[:55])
    peak = max(b.high for b in day[:60])
    crashed = [b for b in day if b.low <= peak * 0.93]
    assert crashed, "CRSH never fell 7% from its morning peak"
    assert ny(d, 10, 0) <= crashed[0].timestamp < ny(d, 11, 0)


@pytest.mark.parametrize("d", DATES)
def test_spik_spikes_in_the_first_hour_then_fades(md, d):
    day = md.session_bars("SPIK", d)
    assert max(b.high for b in day[:60]) >= day[0].open * 1.10
    assert abs(change(md, "SPIK", d)) <= 0.03


@pytest.mark.parametrize("d", DATES)
def test_volc_volume_collapses_while_price_drifts(md, d):
    day = md.session_bars("VOLC", d)
    assert sum(b.volume for b in day[-60:]) <= 0.25 * sum(b.volume for b in day[:60])
    assert all(b.volume < 0.2 * day[0].volume for b in day[-60:])
    assert abs(change(md, "VOLC", d)) <= 0.05


@pytest.mark.parametrize("d", DATES)
def test_chop_keeps_reverting_through_the_open(md, d):
    day = md.session_bars("CHOP", d)
    sides = [b.close > day[0].open for b in day]
    crossings = sum(a != b for a, b in zip(sides, sides[1:]))
    assert crossings >= 5
    assert abs(change(md, "CHOP", d)) <= 0.02


@pytest.mark.parametrize("d", DATES)
def test_gapu_gaps_up_and_grinds_to_sixteen_percent_by_midday(md, d):
    reference = md.reference_price("GAPU", d)
    assert md.session_bars("GAPU", d)[0].open >= reference * 1.02
    assert bar_at(md, "GAPU", d, 12, 45).close >= reference * 1.13
    assert change(md, "GAPU", d) > 0.08


@pytest.mark.parametrize("d", DATES)
def test_flat_barely_moves(md, d):
    day = md.session_bars("FLAT", d)
    assert max(b.high for b in day) / min(b.low for b in day) - 1 <= 0.005


@pytest.mark.parametrize("d", DATES)
def test_slid_bleeds_six_percent_by_afternoon(md, d):
    day = md.session_bars("SLID", d)
    assert change(md, "SLID", d, 14, 30) <= -0.045
    assert max(b.high for b in day) <= day[0].open * 1.01


@pytest.mark.parametrize("d", DATES)
def test_whip_swings_five_percent_both_ways(md, d):
    day = md.session_bars("WHIP", d)
    assert max(b.high for b in day) >= day[0].open * 1.04
    assert min(b.low for b in day) <= day[0].open * 0.96


@pytest.mark.parametrize("d", DATES)
def test_stdy_gains_about_one_percent(md, d):
    assert 0.004 <= change(md, "STDY", d) <= 0.016


@pytest.mark.parametrize("d", DATES)
def test_moon_rallies_twenty_percent_by_afternoon(md, d):
    assert change(md, "MOON", d, 14, 30) >= 0.15
    assert change(md, "MOON", d) >= 0.15


def test_quote_mid_minute_never_reveals_the_running_bar(md):
    d = DATES[0]
    for symbol in TICKERS:
        q = md.quote(symbol, ny(d, 10, 0, 30))
        assert q.price == bar_at(md, symbol, d, 9, 59).close
        assert q.timestamp == ny(d, 10, 0)
        assert q.volume == bar_at(md, symbol, d, 9, 59).volume


def test_quote_at_the_minute_boundary_shows_the_bar_just_finished(md):
    d = DATES[0]
    q = md.quote("SPIK", ny(d, 10, 1))
    assert (q.price, q.timestamp) == (bar_at(md, "SPIK", d, 10, 0).close, ny(d, 10, 1))


def test_pre_open_quote_is_the_previous_weekdays_close(md):
    monday = date(2024, 11, 4)
    friday_close = md.session_bars("MOON", date(2024, 11, 1))[-1]
    q = md.quote("MOON", ny(monday, 8, 0))
    assert (q.price, q.timestamp) == (friday_close.close, ny(date(2024, 11, 1), 16, 0))
    assert md.quote("MOON", ny(monday, 9, 30, 30)).price == friday_close.close


def test_weekend_quote_is_fridays_close(md):
    q = md.quote("UPTR", ny(date(2025, 3, 15), 12, 0))
    assert q.price == md.session_bars("UPTR", date(2025, 3, 14))[-1].close


def test_quote_time_in_another_zone_means_the_same_instant(md):
    at = ny(DATES[0], 13, 7, 12)
    assert md.quote("WHIP", at) == md.quote("WHIP", at.astimezone(timezone.utc))


def test_bars_are_completed_ascending_and_most_recent(md):
    d = DATES[0]
    got = md.bars("CHOP", ny(d, 10, 0, 30), 5)
    assert [b.timestamp for b in got] == [ny(d, 9, 55 + i) for i in range(5)]


def test_bars_early_in_the_session_reach_back_to_the_previous_weekday(md):
    monday = date(2024, 11, 4)
    got = md.bars("GAPU", ny(monday, 9, 32), 5)
    assert [b.timestamp for b in got] == [
        ny(date(2024, 11, 1), 15, 57),
        ny(date(2024, 11, 1), 15, 58),
        ny(date(2024, 11, 1), 15, 59),
        ny(monday, 9, 30),
        ny(monday, 9, 31),
    ]


def test_bars_look_back_at_most_five_previous_weekdays(md):
    got = md.bars("FLAT", ny(DATES[0], 16, 30), 100_000)
    assert len(got) == 6 * 390
    assert got == sorted(got, key=lambda b: b.timestamp)
    assert md.bars("FLAT", ny(DATES[0], 12, 0), 0) == []


def test_unknown_symbol_is_named_with_the_known_universe(md):
    with pytest.raises(UnknownSymbol, match="NOPE.*UPTR"):
        md.quote("NOPE", ny(DATES[0], 12, 0))
    with pytest.raises(UnknownSymbol, match="NOPE"):
        md.bars("NOPE", ny(DATES[0], 12, 0), 5)


def test_naive_times_and_bad_counts_are_refused(md):
    with pytest.raises(BadInput, match="offset"):
        md.quote("UPTR", datetime(2025, 3, 12, 12, 0))
    with pytest.raises(BadInput, match="offset"):
        md.bars("UPTR", datetime(2025, 3, 12, 12, 0), 5)
    with pytest.raises(BadInput, match="count"):
        md.bars("UPTR", ny(DATES[0], 12, 0), -1)
    with pytest.raises(BadInput, match="date"):
        md.session_bars("UPTR", ny(DATES[0], 12, 0))


def test_day_boundary_in_utc_uses_the_new_york_session(md):
    # 2025-03-13 01:00 UTC is still the evening of 2025-03-12 in New York.
    at = datetime(2025, 3, 13, 1, 0, tzinfo=timezone.utc)
    assert md.quote("STDY", at).timestamp == ny(DATES[0], 16, 0)
    assert md.quote("STDY", at + timedelta(hours=12, minutes=31)).timestamp == ny(date(2025, 3, 13), 9, 31)


# -- what the funnel reads: the previous close, the pre-market price, scripted extra symbols ----------------

def test_the_gap_is_measured_from_the_implied_previous_close_and_known_before_the_open(md):
    d = DATES[0]
    previous_close = md.previous_close("GAPU", ny(d, 8, 0))
    assert previous_close == round(md.reference_price("GAPU", d), 2)
    first_open = md.session_bars("GAPU", d)[0].open
    assert first_open / previous_close - 1 == pytest.approx(0.04, abs=0.01)  # GAPU's scripted 4 % gap
    pre = md.premarket_quote("GAPU", ny(d, 9, 0))
    assert (pre.price, pre.timestamp) == (first_open, ny(d, 9, 0))
    assert md.premarket_quote("GAPU", ny(d, 3, 0)) == md.quote("GAPU", ny(d, 3, 0))  # before 04:00: last close
    assert md.premarket_quote("GAPU", ny(d, 10, 0)) == md.quote("GAPU", ny(d, 10, 0))  # in session: the quote
    assert md.previous_close("GAPU", ny(date(2025, 3, 15), 10, 0)) is None  # a Saturday has no session


def test_extra_scripted_symbols_can_be_priced_and_sized_for_a_test():
    from catalyst.marketdata.synthetic import BEHAVIOURS, Behaviour

    penny = Behaviour(((0, 0.0), (60, 0.4), (389, 0.4)), "PNNY runs", price=2.0, volume_scale=50.0)
    md = SyntheticMarketData(behaviours={**BEHAVIOURS, "PNNY": penny})
    assert "PNNY" in md.symbols() and "PNNY" not in SyntheticMarketData().symbols()
    assert md.reference_price("PNNY", DATES[0]) == pytest.approx(2.0, rel=0.02)
    assert md.quote("PNNY", ny(DATES[0], 10, 45)).price == pytest.approx(2.8, rel=0.03)
    # the scripted twelve are untouched by the addition
    assert md.quote("GAPU", ny(DATES[0], 11, 0)) == SyntheticMarketData().quote("GAPU", ny(DATES[0], 11, 0))


# --- a universe of any size (load tests, make bench) ---------------------------------------------------------------

def test_a_synthetic_universe_of_any_size_keeps_the_dozen_and_adds_generated_symbols_every_process_agrees_on():
    from catalyst.marketdata.synthetic import universe

    code = ("from datetime import date\nfrom catalyst.marketdata.synthetic import SyntheticMarketData, universe\n"
            "md = SyntheticMarketData(behaviours=universe(1000))\n"
            "print([b.close for b in md.session_bars('SYN00777', date(2025, 3, 12))[::50]])")
    elsewhere = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                               cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    md = SyntheticMarketData(behaviours=universe(1000))
    symbols = md.symbols()
    assert len(symbols) == 1000 and set(TICKERS) <= set(symbols)
    assert sorted(set(symbols) - set(TICKERS)) == [f"SYN{i:05d}" for i in range(1, 989)]
    assert str([b.close for b in md.session_bars("SYN00777", date(2025, 3, 12))[::50]]) == elsewhere
    assert md.session_bars("CRSH", date(2025, 3, 12)) == SyntheticMarketData().session_bars("CRSH", date(2025, 3, 12))
    assert universe(5) == {k: v for k, v in list(universe(1000).items())[:5]}, "a smaller universe is a prefix"


def test_generated_symbols_trade_a_full_plausible_session_without_news():
    from catalyst.marketdata.synthetic import universe

    md = SyntheticMarketData(behaviours=universe(112))
    day = date(2025, 3, 12)
    generated = sorted(set(md.symbols()) - set(TICKERS))
    moves = []
    for symbol in generated:
        bars = md.session_bars(symbol, day)
        assert len(bars) == 390 and all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars)
        moves.append(bars[-1].close / md.reference_price(symbol, day) - 1)
    assert max(abs(m) for m in moves) < 0.06, "quiet, drifting or choppy: no crash or spike among them"
    assert len({round(m, 4) for m in moves}) > 50, "a hundred different paths, not one"
    assert min(moves) < -0.01 and max(moves) > 0.01, "some drift down, some up"
    assert len(generated) == 100 and md.news(generated, ny(day, 0, 0), ny(day, 23, 0)) == []


@pytest.mark.parametrize("spec", ["synthetic:0", "synthetic:abc", "synthetic:-5", "synthetic:", "synthetic:100001",
                                  "synthetic:\u00b2"])
def test_a_bad_synthetic_universe_size_is_refused_with_what_to_write(spec, monkeypatch):
    from catalyst.runtime import build_market_data
    from catalyst.settings import Settings

    settings = Settings(_env_file=None, CATALYST_MARKET_DATA=spec)
    with pytest.raises(BadInput, match=r"synthetic:<N> takes a number|1 to 100,000 symbols"):
        build_market_data(settings, None)


def test_catalyst_market_data_synthetic_n_builds_that_universe():
    from catalyst.runtime import build_market_data
    from catalyst.settings import Settings

    market = build_market_data(Settings(_env_file=None, CATALYST_MARKET_DATA="synthetic:250"), None)
    assert len(market.symbols()) == 250 and "SYN00238" in market.symbols() and "SYN00239" not in market.symbols()
