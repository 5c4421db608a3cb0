"""Indicators and volume use the regular session only (issue 7): Alpaca's minute bars include the pre-market
(from 04:00 ET) and the after-hours (to 20:00 ET, 17:00 after an early close); none of them may reach VWAP,
RSI/MACD/ATR, the volume-collapse exit, the entry volume or the scanner's figures. Real alpaca-py against the
fake Alpaca (which serves extended-hours bars 2% above the price on a volume of 500,000), real PostgreSQL and Redis.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from catalyst.cycles import snapshot as scan_snapshot
from catalyst.entries import _entry_volume
from catalyst.monitor import INDICATOR_BARS, _compute
from catalyst.runtime import get_runtime
from tests.alpaca_support import alpaca_env, alpaca_market
from tests.fake_alpaca import FakeAlpaca

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NY = ZoneInfo("America/New_York")
# Black Friday 2025: the session closes at 13:00 ET (after-hours to 17:00), the day before (Thanksgiving) is a
# holiday, and the last full session (Wednesday) closed at 16:00 with after-hours to 20:00.
BLACK_FRIDAY_OPEN = datetime(2025, 11, 28, 9, 30, tzinfo=NY)
BARS = "/v2/stocks/bars"


def et(month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=NY)


@pytest.fixture
def fake():
    with FakeAlpaca(now=BLACK_FRIDAY_OPEN + timedelta(minutes=5)) as api:
        yield api


@pytest.fixture
def market(fake, pg_url, redis_url, tmp_path):
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, start=BLACK_FRIDAY_OPEN + timedelta(minutes=5))
    with alpaca_market(fake, env, {"ACME": 100.0}) as driver:
        yield driver


def figures(rt, end: datetime) -> dict:
    """Every figure Catalyst derives from bars at ``end``: indicators, recent/entry volume, scanner volume."""
    snap = _compute(rt, "ACME", end, end, None)
    scanned = scan_snapshot(rt, "ACME", end) if rt.calendar.is_open(end) else None
    return {"vwap": snap.vwap, "rsi": snap.rsi, "macd": snap.macd, "macd_hist": snap.macd_hist, "atr": snap.atr,
            "bars": snap.bars, "recent_volume": snap.recent_volume, "entry_volume": _entry_volume(rt, "ACME", end),
            "scan": None if scanned is None else (scanned.volume, scanned.typical_volume, scanned.rsi)}


# (end, first and last bar expected among the last INDICATOR_BARS regular-session minutes)
ENDS = [
    # two minutes into Black Friday: behind it 5.5 h of pre-market, a holiday and Wednesday's 4 h of after-hours
    (et(11, 28, 9, 32), et(11, 26, 12, 42), et(11, 28, 9, 31)),
    # after the 13:00 early close, in the after-hours
    (et(11, 28, 14, 30), et(11, 28, 9, 40), et(11, 28, 12, 59)),
    # after the after-hours too (17:00 on an early close)
    (et(11, 28, 19, 0), et(11, 28, 9, 40), et(11, 28, 12, 59)),
]


@pytest.mark.parametrize("end, first, last", ENDS, ids=["after-open", "after-early-close", "evening"])
def test_extended_hours_bars_never_reach_indicators_or_volume(fake, market, end, first, last):
    rt = get_runtime()
    calls = fake.count("GET", BARS)
    bars = rt.market_data.bars("ACME", end, INDICATOR_BARS)
    assert fake.count("GET", BARS) == calls + 1  # one request, as before
    outside = [b.timestamp.astimezone(NY).isoformat() for b in bars if not rt.calendar.is_open(b.timestamp)]
    assert outside == [], f"{len(outside)} bars outside the regular session reached Catalyst, e.g. {outside[:3]}"
    assert {(b.close, b.volume) for b in bars} == {(100.0, 1000.0)}
    # still the last INDICATOR_BARS regular-session bars, in order
    assert len(bars) == INDICATOR_BARS and (bars[0].timestamp, bars[-1].timestamp) == (first, last)
    assert all(a.timestamp < b.timestamp for a, b in zip(bars, bars[1:]))

    seen = figures(rt, end)
    assert seen["vwap"] == pytest.approx(100.0) and seen["recent_volume"] == 1000.0
    assert seen["entry_volume"] == 1000.0 and seen["bars"] == INDICATOR_BARS
    fake.lenient("extended_hours_bars")  # the same market without any extended-hours bar
    assert seen == figures(rt, end)


def test_entry_volume_in_the_first_minute_is_the_sessions_not_the_pre_markets(fake, market):
    rt = get_runtime()
    end = BLACK_FRIDAY_OPEN + timedelta(minutes=1)  # one regular bar today (09:30); the 5 before are pre-market
    recent = rt.market_data.bars("ACME", end, 5)
    assert [b.timestamp for b in recent] == [et(11, 26, 15, m) for m in (56, 57, 58, 59)] + [BLACK_FRIDAY_OPEN]
    assert _entry_volume(rt, "ACME", end) == 1000.0
    assert _compute(rt, "ACME", end, end, None).recent_volume == 1000.0


def test_count_is_the_last_regular_bars_even_when_they_lie_more_than_five_days_back(fake, market):
    rt = get_runtime()
    # Monday 2025-07-07 09:32: behind it a weekend, the 4th of July holiday and the 13:00 early close of the 3rd
    end = datetime(2025, 7, 7, 9, 32, tzinfo=NY)
    calls = fake.count("GET", BARS)
    bars = rt.market_data.bars("ACME", end, 1000)  # 2 + 210 (3rd) + 390 (2nd) + 390 (1st) + 8 (June 30th)
    assert fake.count("GET", BARS) == calls + 1
    assert len(bars) == 1000 and all(rt.calendar.is_open(b.timestamp) for b in bars)
    assert bars[0].timestamp == datetime(2025, 6, 30, 15, 52, tzinfo=NY)
    assert bars[-1].timestamp == datetime(2025, 7, 7, 9, 31, tzinfo=NY)
    assert not [b for b in bars if datetime(2025, 7, 3, 13, 0, tzinfo=NY) <= b.timestamp < end - timedelta(minutes=2)]


def test_an_unscheduled_late_open_from_the_brokers_calendar_keeps_its_pre_market_out(fake, pg_url, redis_url,
                                                                                       tmp_path):
    # exchange_calendars says Black Friday opens at 09:30; Alpaca's calendar says 10:30 (say, a systems delay):
    # the broker wins, so 09:30-10:29 is pre-market and none of it may reach the indicators.
    fake.set_session(BLACK_FRIDAY_OPEN.date(), "10:30", "13:00")
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, start=BLACK_FRIDAY_OPEN + timedelta(minutes=5))
    with alpaca_market(fake, env, {"ACME": 100.0}):
        rt = get_runtime()
        bars = rt.market_data.bars("ACME", et(11, 28, 10, 35), 30)
    assert {(b.close, b.volume) for b in bars} == {(100.0, 1000.0)}
    assert [b.timestamp for b in bars[-5:]] == [et(11, 28, 10, 30 + m) for m in range(5)]
    assert bars[-6].timestamp == et(11, 26, 15, 59)
