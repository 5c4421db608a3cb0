"""Technical indicators over a list of bars: RSI(14), MACD(12/26/9), session VWAP, ATR(14).

Pure core: :func:`compute` takes bars and returns a frozen :class:`Indicators`; it does no I/O.
It builds one DataFrame and calls the plain pandas-ta functions (``ta.rsi``, ``ta.macd``,
``ta.vwap``, ``ta.atr``; the ``.ta`` accessor warns under pandas 3). An indicator whose input
is too short, or whose last value is NaN or infinite, is ``None``: Catalyst never guesses.

Conventions (pandas-ta 0.4.71b0 without TA-Lib, read from its source):

- RSI(14): changes ``d = close.diff()``; gains ``max(d, 0)`` and losses ``|min(d, 0)|`` are
  smoothed with Wilder's RMA, i.e. ``ewm(alpha=1/14, adjust=False)``. Because the first change
  is the first non-NaN value, the RMA is seeded with that *single first change* (not with the
  average of the first 14 changes as in Wilder's book / TA-Lib). ``RSI = 100*up/(up+down)``.
  The seed's influence decays as (13/14)^n: about 1.5e-5 of the initial gap after 150 bars,
  2e-10 after 300, so short inputs (15..~100 bars) give an RSI that differs noticeably from
  TA-Lib/textbook values. pandas-ta refuses fewer than 15 closes.
- MACD(12, 26, 9): each EMA is seeded with the simple average of its first ``n`` inputs
  (placed at position ``n-1``), then ``ewm(span=n, adjust=False)``; MACD = EMA12 - EMA26
  (first value at bar 26), signal = the same SMA-seeded EMA(9) of the MACD line starting at
  its first valid value (first value at bar 34), histogram = MACD - signal.
- ATR(14): true range ``max(h-l, |h-prev_c|, |prev_c-l|)`` with the first bar's TR = ``h-l``;
  seeded with the average of the first 14 TRs (bars 1..14, first value at bar 14), then RMA
  ``ewm(alpha=1/14, adjust=False)``. pandas-ta refuses fewer than 15 bars.
- VWAP: typical price ``(h+l+c)/3``; cumulative ``sum(tp*v)/sum(v)`` grouped by the local
  calendar day (anchor ``"D"``) of the index, which :func:`compute` converts to the exchange
  zone first. pandas-ta needs at least 2 bars in the whole input for it.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from catalyst.core.domain import Bar, BadInput

RSI_LENGTH = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
ATR_LENGTH = 14
VWAP_ANCHOR = "D"

# Fewest bars for which pandas-ta returns a value (below these it returns None and so do we).
RSI_MIN_BARS = RSI_LENGTH + 1  # 15: 14 changes
MACD_MIN_BARS = MACD_SLOW + MACD_SIGNAL - 1  # 34: 26 for the slow EMA, 8 more for the signal's seed
ATR_MIN_BARS = ATR_LENGTH + 1  # 15
VWAP_MIN_BARS = 2  # pandas-ta's ordered-index check needs two rows (in the whole input)
# Bars after which pandas-ta's RSI (seeded with the first change) matches Wilder's textbook RSI
# (seeded with the mean of the first 14 changes) to well under 0.01 RSI points. Informational.
RSI_STABLE_BARS = 150

_MACD_COLS = tuple(f"MACD{k}_{MACD_FAST}_{MACD_SLOW}_{MACD_SIGNAL}" for k in ("", "s", "h"))


@dataclass(frozen=True)
class Indicators:
    """Indicator values at the last bar; ``None`` means unknown (too little data, or not finite)."""

    bars: int
    rsi: float | None = None
    macd: float | None = None
    macd_signal: float | None = None
    macd_hist: float | None = None
    vwap: float | None = None
    atr: float | None = None
    last_volume: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def unknown(self) -> tuple[str, ...]:
        """Names of the indicators that are ``None``, in field order."""
        return tuple(f.name for f in fields(self) if f.name != "bars" and getattr(self, f.name) is None)


_ta_module = None
_ta_lock = threading.Lock()


def _ta():
    """Import pandas-ta on first use (it takes ~0.4 s) without letting its import-time warnings out.

    pandas-ta 0.4.71b0 calls ``Timestamp.dayofyear`` and sets ``mode.copy_on_write`` at import,
    both of which raise ``Pandas4Warning`` (a ``DeprecationWarning``) under pandas 3.
    """
    global _ta_module
    if _ta_module is None:
        with _ta_lock:
            if _ta_module is None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pandas_ta")
                    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pandas_ta")
                    import pandas_ta

                _ta_module = pandas_ta
    return _ta_module


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise BadInput(f"unknown time zone {tz!r}") from None


def _last(values: pd.Series | None) -> float | None:
    if values is None or len(values) == 0:
        return None
    value = float(values.iloc[-1])
    return value if math.isfinite(value) else None


def _frame(bars: list[Bar], zone: ZoneInfo) -> pd.DataFrame:
    symbols = {b.symbol for b in bars}
    if len(symbols) > 1:
        raise BadInput(f"bars mix symbols {', '.join(sorted(symbols))}; indicators need one symbol")
    ohlcv = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], dtype=float)
    bad_price = ~np.isfinite(ohlcv[:, :4]) | (ohlcv[:, :4] <= 0)
    bad_volume = ~np.isfinite(ohlcv[:, 4]) | (ohlcv[:, 4] < 0)
    bad = np.flatnonzero(bad_price.any(axis=1) | bad_volume)
    if bad.size:
        b = bars[int(bad[0])]
        raise BadInput(
            f"bar {b.symbol} {b.timestamp.isoformat()} has a non-finite or non-positive price or a bad volume "
            f"(o={b.open!r} h={b.high!r} l={b.low!r} c={b.close!r} v={b.volume!r})"
        )
    # UTC first (bars may carry different offsets, e.g. across a DST change), then exchange time.
    index = pd.DatetimeIndex(pd.to_datetime([b.timestamp for b in bars], utc=True)).tz_convert(zone)
    steps = np.diff(index.asi8)
    if steps.size and (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise BadInput(
            f"bars must be in strictly ascending time order: {bars[i + 1].timestamp.isoformat()} "
            f"follows {bars[i].timestamp.isoformat()}"
        )
    return pd.DataFrame(ohlcv, index=index, columns=["open", "high", "low", "close", "volume"])


def compute(bars: list[Bar], tz: str = "America/New_York") -> Indicators:
    """Indicators at the last of ``bars`` (strictly ascending, one symbol); ``tz`` is the exchange zone.

    Never raises on short input (too short gives ``None`` values; ``[]`` gives ``bars=0``).
    Raises ``BadInput`` for descending/duplicate timestamps, mixed symbols, non-finite or
    non-positive prices, negative volume, or an unknown zone.
    """
    zone = _zone(tz)
    bars = list(bars)
    if not bars:
        return Indicators(bars=0)
    df = _frame(bars, zone)
    n = len(df)
    ta = _ta()
    high, low, close, volume = df["high"], df["low"], df["close"], df["volume"]

    rsi = ta.rsi(close, length=RSI_LENGTH) if n >= RSI_MIN_BARS else None
    macd = macd_signal = macd_hist = None
    if n >= MACD_MIN_BARS:
        frame = ta.macd(close, fast=MACD_FAST, slow=MACD_SLOW, signal=MACD_SIGNAL)
        if frame is not None:
            macd, macd_signal, macd_hist = (_last(frame[c]) for c in _MACD_COLS)
    atr = ta.atr(high, low, close, length=ATR_LENGTH) if n >= ATR_MIN_BARS else None
    vwap = None
    if n >= VWAP_MIN_BARS:
        # pandas-ta's vwap calls warnings.simplefilter("ignore", UserWarning) -- a process-wide
        # change -- to hide pandas' "to_period drops timezone" UserWarning; catch_warnings undoes
        # that on exit, and our own filter hides exactly that one warning whatever the filters are.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Converting to PeriodArray/Index", category=UserWarning)
            vwap = ta.vwap(high, low, close, volume, anchor=VWAP_ANCHOR)

    return Indicators(
        bars=n,
        rsi=_last(rsi),
        macd=macd,
        macd_signal=macd_signal,
        macd_hist=macd_hist,
        vwap=_last(vwap),
        atr=_last(atr),
        last_volume=_last(volume),
    )


_warm = False
_warm_lock = threading.Lock()


def numba_cache_dir() -> str:
    """Set ``NUMBA_CACHE_DIR`` if unset (``$CATALYST_VAR_DIR/numba``, else a temp dir) and return it."""
    current = os.environ.get("NUMBA_CACHE_DIR")
    if current:
        return current
    candidates = [Path(os.environ.get("CATALYST_VAR_DIR") or "var") / "numba",
                  Path(tempfile.gettempdir()) / "catalyst-numba"]
    for path in candidates:
        try:
            path = path.resolve()
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            os.environ["NUMBA_CACHE_DIR"] = str(path)
            return str(path)
    return ""  # nowhere writable: numba then simply does not cache


def _synthetic_bars() -> list[Bar]:
    start = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)  # 09:30 New York
    bars, price = [], 100.0
    for i in range(60):
        ts = start + timedelta(minutes=i) + (timedelta(days=1) if i >= 30 else timedelta(0))
        step = 0.1 * math.sin(i / 3.0) + 0.02
        bars.append(Bar(ts, "WARM", price, price + 0.2, price - 0.2, price + step, 1000.0 + 10 * i))
        price += step
    return bars


def warm_up() -> None:
    """Pay one-off costs at worker start: NUMBA_CACHE_DIR, the pandas-ta import, first-call kernels.

    Idempotent and cheap after the first call.
    """
    global _warm
    if _warm:
        return
    with _warm_lock:
        if _warm:
            return
        numba_cache_dir()
        compute(_synthetic_bars())
        _warm = True
