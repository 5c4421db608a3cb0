"""Intraday patterns on hand-built bars: each one found where a trader would see it, and only there.

Every result carries its evidence in numbers, and its score is the sum of the stored parts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from catalyst.core import patterns
from catalyst.core.domain import Bar

NY = ZoneInfo("America/New_York")
OPEN = datetime(2025, 3, 12, 9, 30, tzinfo=NY)


def bars(closes: list[float], volumes: list[float] | float = 10_000, wick: float = 0.05) -> list[Bar]:
    """Minute bars from the open: open = previous close, high/low a small wick beyond the body."""
    vols = volumes if isinstance(volumes, list) else [volumes] * len(closes)
    out, prev = [], closes[0]
    for i, (c, v) in enumerate(zip(closes, vols)):
        out.append(Bar(OPEN + timedelta(minutes=i), "TEST", prev, max(prev, c) + wick, min(prev, c) - wick, c, v))
        prev = c
    return out


def ramp(start: float, end: float, n: int) -> list[float]:
    return [round(start + (end - start) * i / (n - 1), 4) for i in range(n)]


def wiggle(level: float, n: int, amp: float = 0.2) -> list[float]:
    return [level + (amp if i % 2 else -amp) for i in range(n)]


def assert_explained(result: patterns.PatternResult) -> None:
    parts = result.evidence["score_parts"]
    assert result.score == pytest.approx(min(max(sum(parts.values()), 0.0), 1.0), abs=1e-4)
    assert 0 < result.score <= 1


# -- opening-range breakout ------------------------------------------------------------------------------

RANGE = wiggle(100.0, 15, 0.5)  # 15 minutes between ~99.45 and ~100.55


@pytest.mark.parametrize("closes,volumes,present", [
    (RANGE + [100.4, 100.8, 101.2], 10_000, True),  # closes above the range high
    (RANGE + [100.3, 100.2, 100.4], 10_000, False),  # still inside the range
    (RANGE + [99.0, 98.5, 98.0], 10_000, False),  # broke down, not out
    (RANGE[:10], 10_000, False),  # the range is not complete yet
], ids=["breakout", "inside", "breakdown", "range-incomplete"])
def test_opening_range_breakout_table(closes, volumes, present):
    result = patterns.opening_range_breakout(bars(closes, volumes))
    assert (result.score > 0) is present
    if present:
        assert_explained(result)
        ev = result.evidence
        assert ev["or_high"] == pytest.approx(100.55, abs=0.01) and ev["or_low"] == pytest.approx(99.45, abs=0.01)
        assert ev["breakout_price"] == closes[-1] and ev["breakout_pct"] > 0
    else:
        assert result.score == 0 and "absent" in result.evidence


def test_a_breakout_on_heavy_volume_scores_higher_than_one_on_thin_volume():
    closes = RANGE + [100.4, 100.5, 100.6, 100.7, 100.9]
    thin = patterns.opening_range_breakout(bars(closes, 10_000))
    heavy = patterns.opening_range_breakout(bars(closes, [10_000] * 15 + [30_000] * 5))
    assert heavy.score > thin.score > 0
    assert heavy.evidence["volume_ratio"] == pytest.approx(3.0)
    assert_explained(heavy)


def test_a_breakout_far_above_the_range_is_marked_extended():
    near = patterns.opening_range_breakout(bars(RANGE + [100.8]))
    far = patterns.opening_range_breakout(bars(RANGE + [104.0]))
    assert near.evidence["score_parts"]["not_extended"] == 0.2
    assert far.evidence["score_parts"]["not_extended"] == 0.0
    assert near.score > far.score


# -- VWAP reclaim -----------------------------------------------------------------------------------------

DIP_AND_RECLAIM = [100.0] * 10 + ramp(100.0, 98.5, 8) + ramp(98.6, 100.6, 6) + [100.8, 101.0]


@pytest.mark.parametrize("closes,present,why", [
    (DIP_AND_RECLAIM, True, None),
    ([100.0] * 10 + ramp(100.0, 98.5, 8) + [98.4, 98.6], False, "not_above_vwap"),  # still below
    (ramp(100.0, 103.0, 30), False, "never_below_vwap"),  # never dipped below
    ([100.0, 100.1, 100.2], False, "too_few_bars"),
], ids=["reclaim", "still-below", "never-below", "too-few"])
def test_vwap_reclaim_table(closes, present, why):
    result = patterns.vwap_reclaim(bars(closes))
    assert (result.score > 0) is present
    if present:
        assert_explained(result)
        ev = result.evidence
        assert ev["bars_below"] >= patterns.MIN_BELOW_BARS
        assert ev["last_close"] > ev["vwap"] and ev["dip_depth_pct"] > 0
        assert ev["reclaim_price"] > 0 and ev["reclaimed_at"]
    else:
        assert result.evidence["absent"] == why


def test_vwap_matches_the_typical_price_volume_average():
    bs = bars([10.0, 11.0, 12.0], [100, 200, 700], wick=0.0)
    tp = [(b.high + b.low + b.close) / 3 for b in bs]
    assert patterns.session_vwap(bs)[-1] == pytest.approx((tp[0] * 100 + tp[1] * 200 + tp[2] * 700) / 1000)


def test_a_reclaim_on_a_volume_surge_scores_higher():
    quiet = patterns.vwap_reclaim(bars(DIP_AND_RECLAIM))
    volumes = [10_000] * len(DIP_AND_RECLAIM)
    first_above = int((datetime.fromisoformat(quiet.evidence["reclaimed_at"]) - OPEN).total_seconds() // 60)
    volumes[first_above] = 40_000  # the first bar back above VWAP
    loud = patterns.vwap_reclaim(bars(DIP_AND_RECLAIM, volumes))
    assert loud.evidence["reclaimed_at"] == quiet.evidence["reclaimed_at"]
    assert loud.score > quiet.score


# -- bull flag --------------------------------------------------------------------------------------------

POLE = ramp(100.0, 106.0, 10)  # +6 % in 10 minutes
FLAG = [105.6, 105.3, 105.1, 105.2, 105.0, 105.1]  # gives back ~1 of 6
BASE = [100.0] * 20


@pytest.mark.parametrize("closes,present,why", [
    (BASE + POLE + FLAG, True, None),
    (BASE + POLE + FLAG + [106.4], True, None),  # and breaks out of the flag
    (BASE + POLE + [104.5, 103.0, 101.5, 101.0, 101.2], False, "pullback_too_deep"),
    (BASE + wiggle(100.0, 16, 0.3), False, "no_pole"),
    (BASE + ramp(100.0, 106.0, 16), False, "no_flag"),  # a straight run, no pause: highs keep rising
], ids=["flag", "flag-breakout", "deep-pullback", "no-pole", "straight-run"])
def test_bull_flag_table(closes, present, why):
    result = patterns.bull_flag(bars(closes, [30_000] * 30 + [10_000] * (len(closes) - 30)))
    assert (result.score > 0) is present, result.evidence
    if present:
        assert_explained(result)
        ev = result.evidence
        assert ev["pole_pct"] == pytest.approx(6.0 + 0.1, abs=0.2)  # the wick widens it a little
        assert 0 < ev["pullback_pct"] <= 50
        assert ev["flag_bars"] >= patterns.MIN_FLAG_BARS and ev["flag_volume_ratio"] < 0.8
    else:
        assert result.evidence["absent"] == why


def test_a_flag_breaking_its_high_scores_higher_than_one_still_forming():
    forming = patterns.bull_flag(bars(BASE + POLE + FLAG))
    breaking = patterns.bull_flag(bars(BASE + POLE + FLAG + [106.4]))
    assert breaking.evidence["breakout"] is True and forming.evidence["breakout"] is False
    assert breaking.score > forming.score


# -- choosing the strategy ---------------------------------------------------------------------------------

def test_the_strategy_is_the_best_pattern_or_momentum():
    found = patterns.detect(bars(RANGE + [100.4, 100.8, 101.2]))
    assert [r.name for r in found] == [patterns.OPENING_RANGE_BREAKOUT, patterns.VWAP_RECLAIM, patterns.BULL_FLAG]
    assert patterns.strategy(found) == patterns.OPENING_RANGE_BREAKOUT
    assert patterns.strategy(patterns.detect(bars([100.0] * 40, wick=0.0))) == patterns.NO_PATTERN
    assert patterns.strategy([]) == patterns.NO_PATTERN


def test_patterns_never_raise_on_empty_or_one_bar_sessions():
    for session in ([], bars([100.0])):
        assert all(r.score == 0 for r in patterns.detect(session))
