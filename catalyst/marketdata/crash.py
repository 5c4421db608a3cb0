"""A market-wide crash laid over another market's prices: the demo's ``--scenario crash``.

Every symbol follows its own path until the shock starts, then its prices are scaled by the same
market move: a slide, a pause, then a flash gap (the kind of open that jumps every stop), as
(minutes after the open, fraction) knots. Volumes and everything else pass through unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np

from catalyst.core.domain import Bar, Quote

# From 11:00 a slide to -10 % by 11:10, a pause, then a flash crash to -25 % at 12:00, where it stays.
CRASH_KNOTS: tuple[tuple[float, float], ...] = ((0, 0.0), (90, 0.0), (100, -0.10), (150, -0.10), (151, -0.25),
                                                (390, -0.25))


class CrashMarketData:
    """Wraps ``inner`` (any market-data adapter) and applies the crash path in the calendar's time zone."""

    def __init__(self, inner, calendar, knots: tuple[tuple[float, float], ...] = CRASH_KNOTS) -> None:
        self.inner = inner
        self.calendar = calendar
        self.name = f"{getattr(inner, 'name', 'market')}+crash"
        self._minutes, self._moves = (np.array(v, dtype=float) for v in zip(*knots))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # symbols, scan_universe, news, catalyst, ... are the inner market's

    def move_at(self, ts: datetime) -> float:
        """The market move (a fraction: -0.04 is 4 % down) at ``ts``; zero outside a session."""
        session = self.calendar.session_at(ts)
        if session is None:
            return 0.0
        minutes = (ts - session.open).total_seconds() / 60.0
        return float(np.interp(minutes, self._minutes, self._moves))

    def quote(self, symbol: str, at: datetime) -> Quote | None:
        quote = self.inner.quote(symbol, at)
        if quote is None:
            return None
        return replace(quote, price=_cents(quote.price * (1 + self.move_at(quote.timestamp))))

    def bars(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        return [self._scaled(b) for b in self.inner.bars(symbol, end, count)]

    def _scaled(self, bar: Bar) -> Bar:
        start, finish = self.move_at(bar.timestamp), self.move_at(bar.timestamp + timedelta(minutes=1))  # a minute bar closes at its end
        o, c = bar.open * (1 + start), bar.close * (1 + finish)
        high = max(bar.high * (1 + max(start, finish)), o, c)
        low = min(bar.low * (1 + min(start, finish)), o, c)
        return replace(bar, open=_cents(o), high=_cents(high), low=_cents(low), close=_cents(c))


def _cents(value: float) -> float:
    return max(round(value, 2), 0.01)
