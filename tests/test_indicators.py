"""catalyst.core.indicators against independent plain-numpy implementations on real price series.

The reference implementations below are loops written from the definitions pandas-ta 0.4.71b0
uses (read from pandas_ta/momentum/rsi.py, momentum/macd.py, overlap/ema.py, overlap/rma.py,
volatility/atr.py, volatility/true_range.py, volume/vwap.py), not calls into pandas-ta:

- RSI(14): Wilder smoothing (alpha = 1/14, recursive) of gains and losses, seeded with the
  *first* change (``ewm(adjust=False)`` starts at the first non-NaN value). After convergence it
  equals the textbook RSI seeded with the mean of the first 14 changes; both are checked.
- MACD(12/26/9): EMAs with alpha = 2/(n+1), each seeded with the simple mean of its first n
  inputs; the signal is that EMA(9) of the MACD line from its first value.
- ATR(14): true range with TR[0] = high-low, seeded with the mean of TR[0..13], then Wilder.
- VWAP: sum(typical * volume) / sum(volume) over the bars of the last bar's New York date.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import warnings
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from catalyst.core import indicators
from catalyst.core.domain import Bar, BadInput
from catalyst.core.indicators import Indicators, compute

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
DAILY = ["SPY", "ORCL", "NVDA"]
FLOAT_FIELDS = ["rsi", "macd", "macd_signal", "macd_hist", "vwap", "atr", "last_volume"]


# ---------------------------------------------------------------------------- data


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[Bar, ...]:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"price fixture {path} is not available")
    with path.open(newline="") as fh:
        return tuple(
            Bar(
                timestamp=datetime.fromisoformat(row["timestamp"]),
                symbol=row["symbol"],
                open=float(row["open"]),
                high=float(row["high"]),
                low=float(row["low"]),
                close=float(row["close"]),
                volume=float(row["volume"]),
            )
            for row in csv.DictReader(fh)
        )


def daily(symbol: str) -> tuple[Bar, ...]:
    return _load(f"{symbol}-daily.csv")


def arrays(bars) -> dict[str, np.ndarray]:
    return {k: np.array([getattr(b, k) for b in bars], dtype=float) for k in ("open", "high", "low", "close", "volume")}


def index_on_or_after(bars, day: date) -> int:
    for i, b in enumerate(bars):
        if b.timestamp.date() >= day:
            return i
    raise AssertionError(f"{day} is after the series")


def checkpoints(bars, named_dates=()) -> list[int]:
    """Bar counts N to feed compute(bars[:N]) with: early, mid, named dates, last."""
    n = len(bars)
    points = {15, 20, 34, 35, 50, 100, 250, 1000, n // 3, n // 2, n - 1, n}
    points |= {index_on_or_after(bars, d) + 1 for d in named_dates}
    return sorted(p for p in points if 1 <= p <= n)


NAMED = [date(2000, 3, 10), date(2001, 9, 17), date(2008, 10, 10), date(2011, 8, 8), date(2014, 12, 31)]


def named_for(bars):
    last = bars[-1].timestamp.date()
    first = bars[0].timestamp.date()
    return [d for d in NAMED if first < d <= last]


# ---------------------------------------------------------------------------- independent references


def ref_rsi_first_change_seed(close: np.ndarray, n: int = 14) -> np.ndarray:
    """pandas-ta's RSI: Wilder RMA of gains/losses seeded with the first change."""
    out = np.full(close.size, np.nan)
    alpha = 1.0 / n
    up = down = None
    for i in range(1, close.size):
        change = close[i] - close[i - 1]
        gain, loss = (change, 0.0) if change > 0 else (0.0, -change)
        if up is None:
            up, down = gain, loss
        else:
            up = (1.0 - alpha) * up + alpha * gain
            down = (1.0 - alpha) * down + alpha * loss
        out[i] = 100.0 * up / (up + down) if up + down > 0 else np.nan
    return out


def ref_rsi_textbook(close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's RSI as in his book / TA-Lib: seeded with the mean of the first n changes."""
    out = np.full(close.size, np.nan)
    gains = [max(close[i] - close[i - 1], 0.0) for i in range(1, n + 1)]
    losses = [max(close[i - 1] - close[i], 0.0) for i in range(1, n + 1)]
    up, down = sum(gains) / n, sum(losses) / n
    out[n] = 100.0 * up / (up + down)
    for i in range(n + 1, close.size):
        change = close[i] - close[i - 1]
        up = (up * (n - 1) + max(change, 0.0)) / n
        down = (down * (n - 1) + max(-change, 0.0)) / n
        out[i] = 100.0 * up / (up + down)
    return out


def ref_ema_sma_seeded(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(x.size, np.nan)
    if x.size < n:
        return out
    alpha = 2.0 / (n + 1)
    out[n - 1] = sum(x[:n]) / n
    for i in range(n, x.size):
        out[i] = (1.0 - alpha) * out[i - 1] + alpha * x[i]
    return out


def ref_macd(close: np.ndarray, fast=12, slow=26, signal=9):
    line = ref_ema_sma_seeded(close, fast) - ref_ema_sma_seeded(close, slow)
    sig = np.full(close.size, np.nan)
    sig[slow - 1:] = ref_ema_sma_seeded(line[slow - 1:], signal)
    return line, sig, line - sig


def true_ranges(high, low, close) -> np.ndarray:
    tr = np.empty(close.size)
    tr[0] = high[0] - low[0]
    for i in range(1, close.size):
        tr[i] = max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(close[i - 1] - low[i]))
    return tr


def ref_atr_pandas_ta(high, low, close, n: int = 14) -> np.ndarray:
    tr = true_ranges(high, low, close)
    out = np.full(close.size, np.nan)
    out[n - 1] = sum(tr[:n]) / n
    for i in range(n, close.size):
        out[i] = (1.0 - 1.0 / n) * out[i - 1] + tr[i] / n
    return out


def ref_atr_textbook(high, low, close, n: int = 14) -> np.ndarray:
    """Wilder's ATR: TR from the second bar, seeded with the mean of TR[1..n]."""
    tr = true_ranges(high, low, close)
    out = np.full(close.size, np.nan)
    out[n] = sum(tr[1:n + 1]) / n
    for i in range(n + 1, close.size):
        out[i] = (out[i - 1] * (n - 1) + tr[i]) / n
    return out


def ref_session_vwap(bars, zone: str = "America/New_York") -> float:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    day = bars[-1].timestamp.astimezone(tz).date()
    session = [b for b in bars if b.timestamp.astimezone(tz).date() == day]
    pv = math.fsum((b.high + b.low + b.close) / 3.0 * b.volume for b in session)
    return pv / math.fsum(b.volume for b in session)


def close_to(a, b, rel=1e-9, abs_=1e-9) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# ---------------------------------------------------------------------------- RSI / MACD


@pytest.mark.parametrize("symbol", DAILY)
def test_rsi_matches_independent_implementation(symbol):
    bars = daily(symbol)
    ref = ref_rsi_first_change_seed(arrays(bars)["close"])
    points = checkpoints(bars, named_for(bars))
    assert len(points) >= 8
    for n in points:
        got = compute(list(bars[:n])).rsi
        assert close_to(got, ref[n - 1]), f"{symbol} RSI after {n} bars: {got} vs {ref[n - 1]}"
        assert 0.0 <= got <= 100.0


@pytest.mark.parametrize("symbol", DAILY)
def test_rsi_converges_to_textbook_wilder(symbol):
    """Seeding differs (first change vs mean of 14 changes) but is forgotten after a few hundred bars."""
    bars = daily(symbol)
    textbook = ref_rsi_textbook(arrays(bars)["close"])
    for n in [p for p in checkpoints(bars, named_for(bars)) if p >= 300]:
        got = compute(list(bars[:n])).rsi
        assert close_to(got, textbook[n - 1], rel=1e-6, abs_=0.0), f"{symbol} after {n}: {got} vs {textbook[n - 1]}"
    # ... and early on they really do differ, which is why RSI_STABLE_BARS is documented.
    assert not close_to(compute(list(bars[:20])).rsi, textbook[19], rel=1e-6, abs_=0.0)
    n = indicators.RSI_STABLE_BARS
    assert abs(compute(list(bars[:n])).rsi - textbook[n - 1]) < 0.01


@pytest.mark.parametrize("symbol", DAILY)
def test_macd_matches_independent_implementation(symbol):
    bars = daily(symbol)
    line, sig, hist = ref_macd(arrays(bars)["close"])
    points = [p for p in checkpoints(bars, named_for(bars)) if p >= indicators.MACD_MIN_BARS]
    assert len(points) >= 8
    for n in points:
        got = compute(list(bars[:n]))
        assert close_to(got.macd, line[n - 1]), f"{symbol} MACD after {n}: {got.macd} vs {line[n - 1]}"
        assert close_to(got.macd_signal, sig[n - 1]), f"{symbol} signal after {n}: {got.macd_signal} vs {sig[n - 1]}"
        assert close_to(got.macd_hist, hist[n - 1]), f"{symbol} hist after {n}: {got.macd_hist} vs {hist[n - 1]}"
        assert got.macd_hist == pytest.approx(got.macd - got.macd_signal, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("symbol", DAILY)
def test_atr_matches_independent_wilder_atr(symbol):
    bars = daily(symbol)
    a = arrays(bars)
    exact = ref_atr_pandas_ta(a["high"], a["low"], a["close"])
    textbook = ref_atr_textbook(a["high"], a["low"], a["close"])
    for n in checkpoints(bars, named_for(bars)):
        got = compute(list(bars[:n])).atr
        assert close_to(got, exact[n - 1]), f"{symbol} ATR after {n}: {got} vs {exact[n - 1]}"
        assert got > 0
        if n >= 300:
            assert close_to(got, textbook[n - 1], rel=1e-6, abs_=0.0)
    # sanity: ATR(14) sits within the range of the last 14 true ranges
    tr = true_ranges(a["high"], a["low"], a["close"])
    got = compute(list(bars)).atr
    assert tr[-14:].min() <= got <= tr[-14:].max() * 1.5


# ---------------------------------------------------------------------------- short input


def test_empty_input_is_all_unknown():
    result = compute([])
    assert result == Indicators(bars=0)
    assert result.unknown == tuple(FLOAT_FIELDS)


def test_too_short_inputs_give_none_never_nan():
    bars = list(daily("SPY")[:60])
    one = compute(bars[:1])
    assert one.bars == 1 and one.rsi is None and one.macd is None and one.atr is None and one.vwap is None
    assert one.last_volume == bars[0].volume
    fourteen = compute(bars[:14])
    assert fourteen.rsi is None and fourteen.atr is None and fourteen.macd_hist is None
    fifteen = compute(bars[:15])
    assert fifteen.rsi is not None and fifteen.atr is not None and fifteen.macd is None
    thirty_three = compute(bars[:33])
    assert thirty_three.rsi is not None
    assert thirty_three.macd is None and thirty_three.macd_signal is None and thirty_three.macd_hist is None
    assert set(thirty_three.unknown) == {"macd", "macd_signal", "macd_hist"}
    thirty_four = compute(bars[:34])
    assert None not in (thirty_four.macd, thirty_four.macd_signal, thirty_four.macd_hist)
    for n in range(0, 60):
        result = compute(bars[:n])
        assert result.bars == n
        for name in FLOAT_FIELDS:
            value = getattr(result, name)
            assert value is None or (isinstance(value, float) and math.isfinite(value)), (n, name, value)


def test_minimum_bar_constants_match_pandas_ta():
    bars = list(daily("NVDA")[:40])
    assert compute(bars[: indicators.RSI_MIN_BARS - 1]).rsi is None
    assert compute(bars[: indicators.RSI_MIN_BARS]).rsi is not None
    assert compute(bars[: indicators.ATR_MIN_BARS - 1]).atr is None
    assert compute(bars[: indicators.ATR_MIN_BARS]).atr is not None
    assert compute(bars[: indicators.MACD_MIN_BARS - 1]).macd_hist is None
    assert compute(bars[: indicators.MACD_MIN_BARS]).macd_hist is not None
    assert compute(bars[: indicators.VWAP_MIN_BARS - 1]).vwap is None
    assert compute(bars[: indicators.VWAP_MIN_BARS]).vwap is not None


def flat_bars(n: int, volume: float = 0.0) -> list[Bar]:
    start = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)
    return [Bar(start + timedelta(minutes=i), "FLAT", 10.0, 10.0, 10.0, 10.0, volume) for i in range(n)]


def test_undefined_values_are_none_not_nan():
    # No price change at all: RSI is 0/0; no volume: VWAP is 0/0. Neither may come back as NaN.
    result = compute(flat_bars(50))
    assert result.rsi is None
    assert result.vwap is None
    assert result.macd == pytest.approx(0.0, abs=1e-12) and result.macd_hist == pytest.approx(0.0, abs=1e-12)
    assert result.last_volume == 0.0
    assert set(result.unknown) == {"rsi", "vwap"}


# ---------------------------------------------------------------------------- VWAP


def test_vwap_on_a_real_session_matches_independent_sum():
    bars = list(_load("SPY-2013-10-10-1min.csv"))
    assert len(bars) == 390
    for n in (2, 30, 195, 389, 390):
        got = compute(bars[:n]).vwap
        assert close_to(got, ref_session_vwap(bars[:n]), rel=1e-12), n
    full = compute(bars)
    assert 167.0 < full.vwap < 169.5
    assert full.last_volume == bars[-1].volume


def test_previous_session_does_not_leak_into_vwap_real_days_across_dst():
    friday = list(_load("SHY-2008-03-07-1min.csv"))  # -05:00
    monday = list(_load("SHY-2008-03-10-1min.csv"))  # -04:00, first session after the DST change
    both = friday + monday
    got = compute(both).vwap
    assert close_to(got, ref_session_vwap(monday), rel=1e-12)
    assert close_to(got, compute(monday).vwap, rel=1e-12)
    # the test means something: a VWAP over both days is a different number
    pv = math.fsum((b.high + b.low + b.close) / 3 * b.volume for b in both)
    assert not close_to(got, pv / math.fsum(b.volume for b in both), rel=1e-9)
    # mid-Friday input still gives Friday's VWAP
    assert close_to(compute(friday[:100]).vwap, ref_session_vwap(friday[:100]), rel=1e-12)


def test_previous_day_bars_with_very_different_prices_do_not_leak():
    today = list(_load("SPY-2013-10-10-1min.csv"))
    yesterday = [
        Bar(b.timestamp - timedelta(days=1), b.symbol, b.open * 2, b.high * 2, b.low * 2, b.close * 2, b.volume * 5)
        for b in today
    ]
    assert close_to(compute(yesterday + today).vwap, ref_session_vwap(today), rel=1e-12)
    assert close_to(compute(yesterday + today[:1]).vwap, (today[0].high + today[0].low + today[0].close) / 3, rel=1e-12)


def test_vwap_session_is_the_exchange_local_date():
    # Evening bars in New York cross midnight UTC: one New York day, two UTC days.
    start = datetime(2024, 3, 4, 17, 0, tzinfo=timezone(timedelta(hours=-5)))
    bars = [Bar(start + timedelta(minutes=30 * i), "X", 10.0 + i, 10.5 + i, 9.5 + i, 10.0 + i, 100.0 * (i + 1))
            for i in range(6)]  # 17:00 .. 19:30 New York = 22:00 .. 00:30 UTC (next day from 19:00)
    assert close_to(compute(bars).vwap, ref_session_vwap(bars, "America/New_York"), rel=1e-12)
    assert close_to(compute(bars, tz="UTC").vwap, ref_session_vwap(bars, "UTC"), rel=1e-12)
    assert not close_to(compute(bars).vwap, compute(bars, tz="UTC").vwap, rel=1e-9)


# ---------------------------------------------------------------------------- bad input, determinism


def test_descending_or_duplicate_bars_are_refused():
    bars = list(daily("ORCL")[:40])
    with pytest.raises(BadInput, match="ascending"):
        compute(list(reversed(bars)))
    swapped = bars[:20] + [bars[21], bars[20]] + bars[22:]
    with pytest.raises(BadInput, match="ascending"):
        compute(swapped)
    with pytest.raises(BadInput, match="ascending"):
        compute(bars[:10] + [bars[9]] + bars[10:])


def test_other_bad_input_is_refused():
    bars = list(daily("ORCL")[:40])
    nan_close = Bar(bars[5].timestamp, "ORCL", 1.0, 1.0, 1.0, float("nan"), 1.0)
    with pytest.raises(BadInput, match="non-finite"):
        compute(bars[:5] + [nan_close] + bars[6:])
    negative_volume = Bar(bars[5].timestamp, "ORCL", 1.0, 1.0, 1.0, 1.0, -1.0)
    with pytest.raises(BadInput):
        compute(bars[:5] + [negative_volume] + bars[6:])
    other = Bar(bars[5].timestamp, "NVDA", 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(BadInput, match="mix symbols"):
        compute(bars[:5] + [other] + bars[6:])
    with pytest.raises(BadInput, match="time zone"):
        compute(bars, tz="Mars/Olympus_Mons")


def test_deterministic_and_input_untouched():
    bars = list(daily("NVDA")[-400:])
    snapshot = list(bars)
    first, second = compute(bars), compute(list(bars))
    assert first == second
    assert first.as_dict() == second.as_dict()
    assert bars == snapshot
    assert first.unknown == ()


def test_as_dict_and_unknown():
    result = compute(list(daily("SPY")[:20]))
    d = result.as_dict()
    assert list(d) == ["bars"] + FLOAT_FIELDS
    assert d["bars"] == 20 and d["rsi"] == result.rsi
    assert result.unknown == ("macd", "macd_signal", "macd_hist")
    with pytest.raises(Exception):
        result.rsi = 1.0  # frozen


# ---------------------------------------------------------------------------- warnings, warm-up


def test_compute_raises_no_warnings_and_leaves_filters_alone():
    bars = list(_load("SHY-2008-03-07-1min.csv")) + list(_load("SHY-2008-03-10-1min.csv"))
    compute(bars)  # make sure pandas-ta is imported
    before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inner = list(warnings.filters)
        compute(bars)
        compute(bars[:33])
        assert list(warnings.filters) == inner  # pandas-ta's vwap simplefilter() was contained
    assert list(warnings.filters) == before


def test_fresh_process_import_and_warm_up_are_warning_free(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR",)}
    env["CATALYST_VAR_DIR"] = str(tmp_path / "var")
    code = (
        "import os\n"
        "from catalyst.core import indicators\n"
        "indicators.warm_up(); indicators.warm_up()\n"
        "print(os.environ['NUMBA_CACHE_DIR'])\n"
    )
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str((tmp_path / "var" / "numba").resolve())
    assert (tmp_path / "var" / "numba").is_dir()
    assert "VWAP requires" not in run.stdout


def test_numba_cache_dir_respects_existing_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert indicators.numba_cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("CATALYST_VAR_DIR", str(tmp_path / "v"))
    assert indicators.numba_cache_dir() == str((tmp_path / "v" / "numba").resolve())
    assert os.environ["NUMBA_CACHE_DIR"] == str((tmp_path / "v" / "numba").resolve())


def test_warm_up_is_idempotent(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    indicators.warm_up()
    indicators.warm_up()
    assert indicators._warm is True
