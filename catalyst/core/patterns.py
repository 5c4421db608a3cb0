"""Intraday chart patterns over one session's minute bars: pure functions, a score and its evidence.

Each detector takes the session's bars so far (ascending, regular session only) and returns a
:class:`PatternResult`: a score in 0..1 (0 = not present) and the numbers that justify it, so a
stored result explains itself. Scores are built from named parts (``score_parts`` in the
evidence) that add up to the score, never from anything that is not stored beside it.

- **Opening-range breakout**: the last close is above the high of the first
  ``OR_MINUTES`` bars. Stronger with volume behind the breakout and while it is not yet
  extended far above the range.
- **VWAP reclaim**: closes were below the session VWAP within the last ``RECLAIM_LOOKBACK``
  bars, and the last ``RECLAIM_HOLD`` closes are back above it. Stronger after a deeper dip and
  on a volume surge.
- **Bull flag**: a pole (a rise of at least ``MIN_POLE_PCT`` in at most ``MAX_POLE_BARS`` bars)
  followed by a flag of ``MIN_FLAG_BARS``..``MAX_FLAG_BARS`` bars that gives back at most half
  the pole, on lighter volume. Stronger with a taller pole, a shallower pullback, and when the
  last bar breaks the flag's high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from catalyst.core.domain import Bar

OPENING_RANGE_BREAKOUT = "opening_range_breakout"
VWAP_RECLAIM = "vwap_reclaim"
BULL_FLAG = "bull_flag"
NO_PATTERN = "momentum"  # the entry reason when no pattern scores

OR_MINUTES = 15
RECENT_BARS = 5
RECLAIM_LOOKBACK = 30
RECLAIM_HOLD = 2
MIN_BELOW_BARS = 3
MIN_POLE_PCT = 2.0
MAX_POLE_BARS = 30
MIN_FLAG_BARS = 3
MAX_FLAG_BARS = 20
MAX_PULLBACK = 0.5  # of the pole


@dataclass(frozen=True)
class PatternResult:
    name: str
    score: float  # 0..1; 0 = not present
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "evidence": self.evidence}


def _absent(name: str, why: str, **evidence: Any) -> PatternResult:
    return PatternResult(name, 0.0, {"absent": why, **evidence})


def _scored(name: str, parts: dict[str, float], **evidence: Any) -> PatternResult:
    """The score is the sum of its named parts, clamped to 0..1 and rounded like everything stored."""
    parts = {k: round(v, 4) for k, v in parts.items()}
    return PatternResult(name, round(min(max(sum(parts.values()), 0.0), 1.0), 4),
                         {**{k: _r(v) for k, v in evidence.items()}, "score_parts": parts})


def _r(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _clamp01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def _usable(bars: list[Bar]) -> bool:
    return all(math.isfinite(b.close) and b.close > 0 and math.isfinite(b.volume) and b.volume >= 0 for b in bars)


def _typical_volume(bars: list[Bar]) -> float:
    """Median bar volume of the session: one huge opening print does not set the bar."""
    return median(b.volume for b in bars) if bars else 0.0


def opening_range_breakout(bars: list[Bar], minutes: int = OR_MINUTES) -> PatternResult:
    name = OPENING_RANGE_BREAKOUT
    if len(bars) <= minutes or not _usable(bars):
        return _absent(name, "opening_range_incomplete", bars=len(bars), or_minutes=minutes)
    opening = bars[:minutes]
    or_high, or_low = max(b.high for b in opening), min(b.low for b in opening)
    last = bars[-1]
    if last.close <= or_high:
        return _absent(name, "inside_opening_range" if last.close >= or_low else "below_opening_range",
                       or_high=or_high, or_low=or_low, last_close=last.close)
    after = bars[minutes:]
    first_break = next(i for i, b in enumerate(after) if b.close > or_high)  # exists: the last bar broke out
    range_pct = (or_high / or_low - 1.0) * 100.0 if or_low > 0 else 0.0
    breakout_pct = (last.close / or_high - 1.0) * 100.0
    recent = bars[-RECENT_BARS:]
    volume_ratio = (sum(b.volume for b in recent) / len(recent)) / max(_typical_volume(bars), 1.0)
    extended = breakout_pct > max(range_pct, 0.5)  # further above the range than the range is tall
    parts = {"breakout": 0.5, "volume": 0.3 * _clamp01((volume_ratio - 1.0) / 1.0),
             "not_extended": 0.0 if extended else 0.2}
    return _scored(name, parts, or_high=or_high, or_low=or_low, or_minutes=minutes,
                   or_range_pct=range_pct, breakout_price=last.close, breakout_pct=breakout_pct,
                   first_breakout_at=after[first_break].timestamp.isoformat(), volume_ratio=volume_ratio)


def session_vwap(bars: list[Bar]) -> list[float]:
    """Cumulative VWAP after each bar (typical price ``(h+l+c)/3``, as pandas-ta computes it)."""
    out, pv, vol = [], 0.0, 0.0
    for b in bars:
        pv += (b.high + b.low + b.close) / 3.0 * b.volume
        vol += b.volume
        out.append(pv / vol if vol > 0 else (b.high + b.low + b.close) / 3.0)
    return out


def vwap_reclaim(bars: list[Bar], lookback: int = RECLAIM_LOOKBACK, hold: int = RECLAIM_HOLD) -> PatternResult:
    name = VWAP_RECLAIM
    if len(bars) < hold + MIN_BELOW_BARS or not _usable(bars):
        return _absent(name, "too_few_bars", bars=len(bars))
    vwap = session_vwap(bars)
    last, last_vwap = bars[-1], vwap[-1]
    holding = all(b.close > v for b, v in zip(bars[-hold:], vwap[-hold:]))
    if not holding:
        return _absent(name, "not_above_vwap", vwap=last_vwap, last_close=last.close)
    window = list(zip(bars[-lookback - hold:-hold], vwap[-lookback - hold:-hold]))
    below = [(b, v) for b, v in window if b.close < v]
    if len(below) < MIN_BELOW_BARS:
        return _absent(name, "never_below_vwap", vwap=last_vwap, bars_below=len(below), lookback=lookback)
    depth_pct = max((v / b.close - 1.0) * 100.0 for b, v in below)
    reclaim_index = max(i for i, (b, v) in enumerate(window) if b.close < v) + 1  # first bar back above
    reclaim_bars = (window[reclaim_index:] if reclaim_index < len(window) else []) + list(zip(bars[-hold:], vwap[-hold:]))
    reclaim_bar = reclaim_bars[0][0]
    volume_ratio = reclaim_bar.volume / max(_typical_volume(bars), 1.0)
    parts = {"reclaim": 0.5, "dip_depth": 0.25 * _clamp01(depth_pct / 1.0),
             "volume": 0.25 * _clamp01((volume_ratio - 1.0) / 1.0)}
    return _scored(name, parts, vwap=last_vwap, last_close=last.close, bars_below=len(below), lookback=lookback,
                   dip_depth_pct=depth_pct, reclaim_price=reclaim_bar.close,
                   reclaimed_at=reclaim_bar.timestamp.isoformat(), volume_ratio=volume_ratio)


def bull_flag(bars: list[Bar]) -> PatternResult:
    name = BULL_FLAG
    if len(bars) < MIN_FLAG_BARS + 2 or not _usable(bars):
        return _absent(name, "too_few_bars", bars=len(bars))
    n = len(bars)
    first_top = max(0, n - 1 - MAX_FLAG_BARS)
    last_top = n - 1 - MIN_FLAG_BARS
    top = max(range(first_top, last_top + 1), key=lambda i: (bars[i].high, i))
    pole_from = max(0, top - MAX_POLE_BARS)
    base = min(range(pole_from, top + 1), key=lambda i: (bars[i].low, -i))
    pole_high, pole_low = bars[top].high, bars[base].low
    pole_pct = (pole_high / pole_low - 1.0) * 100.0
    if pole_pct < MIN_POLE_PCT:
        return _absent(name, "no_pole", pole_pct=_r(pole_pct), min_pole_pct=MIN_POLE_PCT)
    flag = bars[top + 1:]
    body = flag[:-1]  # the last bar may break out of the flag
    if any(b.high > pole_high for b in body):
        return _absent(name, "no_flag", pole_pct=_r(pole_pct))
    flag_low = min(b.low for b in flag)
    pullback = (pole_high - flag_low) / (pole_high - pole_low)
    if pullback > MAX_PULLBACK:
        return _absent(name, "pullback_too_deep", pole_pct=_r(pole_pct), pullback_pct=_r(pullback * 100.0))
    pole_bars = bars[base:top + 1]
    pole_volume = sum(b.volume for b in pole_bars) / len(pole_bars)
    flag_volume = sum(b.volume for b in body) / len(body)
    flag_volume_ratio = flag_volume / pole_volume if pole_volume > 0 else 1.0
    flag_high = max(b.high for b in body)
    breakout = bars[-1].close > flag_high
    parts = {"flag": 0.4, "pole": 0.2 * _clamp01(pole_pct / 6.0), "shallow": 0.2 * (1.0 - pullback / MAX_PULLBACK),
             "volume_contraction": 0.1 if flag_volume_ratio < 0.8 else 0.0, "breakout": 0.1 if breakout else 0.0}
    return _scored(name, parts, pole_pct=pole_pct, pole_low=pole_low, pole_high=pole_high, pole_bars=len(pole_bars),
                   flag_bars=len(flag), flag_high=flag_high, flag_low=flag_low, pullback_pct=pullback * 100.0,
                   flag_volume_ratio=flag_volume_ratio, breakout=breakout, last_close=bars[-1].close)


DETECTORS = (opening_range_breakout, vwap_reclaim, bull_flag)


def detect(bars: list[Bar]) -> list[PatternResult]:
    """Every pattern's result for this session so far, in a fixed order."""
    return [d(bars) for d in DETECTORS]


def best(results: list[PatternResult]) -> PatternResult | None:
    """The strongest pattern present (ties: the first in :data:`DETECTORS` order), else ``None``."""
    present = [r for r in results if r.score > 0]
    return max(present, key=lambda r: r.score) if present else None  # max keeps the first of equals


def strategy(results: list[PatternResult]) -> str:
    """The entry reason a position keeps: the best pattern's name, or ``momentum``."""
    top = best(results)
    return top.name if top is not None else NO_PATTERN
