"""The demo's crash market: every symbol follows its own path, then falls with the market."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from catalyst.core.sessions import SessionCalendar
from catalyst.marketdata.crash import CRASH_KNOTS, CrashMarketData
from catalyst.marketdata.synthetic import SyntheticMarketData

EST = timezone(timedelta(hours=-5))
OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)


@pytest.fixture(scope="module")
def markets():
    plain = SyntheticMarketData()
    return plain, CrashMarketData(plain, SessionCalendar.for_market("US"))


@pytest.mark.parametrize("minutes", [30, 90, 95, 120, 152, 389])
def test_every_symbol_moves_with_the_market(markets, minutes):
    plain, crash = markets
    move = float(np.interp(minutes, *zip(*CRASH_KNOTS)))
    assert (move == 0.0) == (minutes <= 90)
    at = OPEN + timedelta(minutes=minutes)
    for symbol in plain.symbols():
        assert crash.quote(symbol, at).price == pytest.approx(plain.quote(symbol, at).price * (1 + move), abs=0.011)


def test_the_flash_crash_is_one_bar_that_jumps_every_stop(markets):
    plain, crash = markets
    (bar,) = crash.bars("FLAT", OPEN + timedelta(minutes=151), 1)
    assert bar.timestamp == OPEN + timedelta(minutes=150)
    assert bar.close / bar.open == pytest.approx(0.75 / 0.90, rel=2e-3)  # -17 % within the minute
    assert bar.low <= min(bar.open, bar.close) and bar.high >= max(bar.open, bar.close)


def test_outside_a_session_and_everything_else_is_the_inner_market(markets):
    plain, crash = markets
    before = OPEN - timedelta(hours=2)
    assert crash.quote("UPTR", before) == plain.quote("UPTR", before)
    assert crash.symbols() == plain.symbols()
