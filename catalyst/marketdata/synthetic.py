"""Deterministic synthetic minute bars for a dozen symbols with scripted intraday behaviours (and, for load
tests, a universe of any size: :func:`universe`).

Every price is a pure function of ``(seed, symbol, session date, minute)``: the RNG for a
day is seeded from a SHA-256 of ``f"{seed}:{symbol}:{date}"`` (never ``hash()``, which is
salted per process), so a scheduler, a worker and a test computing the same minute agree
exactly. Days are generated lazily, whole, and cached.

Each session is independent: its path is measured from a *reference price* (the implied
prior close, see :meth:`SyntheticMarketData.reference_price`) drawn from the seed, so the
previous weekday's actual last bar is close to, but not equal to, today's reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from catalyst.core.domain import Bar, BadInput, Quote, UnknownSymbol, require_aware
from catalyst.core.news import NewsItem

SESSION_OPEN = time(9, 30)
PREMARKET_OPEN = time(4, 0)
SESSION_MINUTES = 390  # 09:30 .. 15:59 bar starts
LOOKBACK_WEEKDAYS = 5  # previous weekdays searched by quote() and bars()
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Behaviour:
    """One symbol's script: the day's return path as (minute, return) knots plus noise."""

    knots: tuple[tuple[int, float], ...]
    headline: str
    noise: float = 0.0015  # stationary s.d. of the multiplicative AR(1) noise
    volume_collapse: bool = False
    news_minute: int | None = None  # when the headline is published, minutes from the open (None: no news)
    price: float | None = None  # the reference price's anchor (default: drawn from the seed, 20..400)
    volume_scale: float = 1.0  # multiplies the seeded base volume


def _chop_knots() -> tuple[tuple[int, float], ...]:
    """Alternate +-1.2% every 15 minutes so the price keeps reverting through the open."""
    swings = [(m, 0.012 * (1 if k % 2 else -1)) for k, m in enumerate(range(15, 375, 15), start=1)]
    return ((0, 0.0), *swings, (389, 0.0))


BEHAVIOURS: dict[str, Behaviour] = {
    "UPTR": Behaviour(((0, 0.0), (389, 0.04)), "UPTR wins multi-year supply contract", news_minute=-45),
    "DNTR": Behaviour(((0, 0.0), (389, -0.04)), "DNTR guidance cut on weak demand", news_minute=-120),
    "CRSH": Behaviour(
        ((0, 0.0), (60, 0.0), (64, -0.09), (389, -0.085)), "CRSH halted after regulator probe report",
        news_minute=61,
    ),
    "SPIK": Behaviour(
        ((0, 0.0), (40, 0.12), (150, 0.01), (389, 0.0)), "SPIK takeover rumour denied by management",
        news_minute=10,
    ),
    "VOLC": Behaviour(
        ((0, 0.0), (389, -0.025)), "VOLC interest fades after morning upgrade", volume_collapse=True
    ),
    "CHOP": Behaviour(_chop_knots(), "CHOP trades sideways ahead of court ruling", noise=0.002),
    "GAPU": Behaviour(((0, 0.04), (195, 0.16), (389, 0.165)), "GAPU beats earnings, raises outlook",
                      news_minute=-90),
    "FLAT": Behaviour(((0, 0.0), (389, 0.0)), "FLAT no news", noise=0.0002),
    "SLID": Behaviour(((0, 0.0), (270, -0.06), (389, -0.06)), "SLID loses key customer"),
    "WHIP": Behaviour(
        ((0, 0.0), (30, 0.05), (75, -0.05), (120, 0.05), (180, -0.045), (389, 0.01)),
        "WHIP conflicting tariff headlines",
        noise=0.002,
    ),
    "STDY": Behaviour(((0, 0.0), (389, 0.01)), "STDY dividend reaffirmed", noise=0.0008),
    "MOON": Behaviour(((0, 0.0), (270, 0.20), (389, 0.21)), "MOON drug approved by FDA", news_minute=30),
}


GENERATED_PREFIX = "SYN"  # generated symbols: SYN00001, SYN00002, ... (after the scripted dozen)
MAX_UNIVERSE = 100_000


def universe(size: int, seed: int = 7) -> dict[str, Behaviour]:
    """``size`` symbols: the scripted dozen first, then generated ones (for load tests and benchmarks at any N).

    A generated symbol's script is a pure function of ``(seed, symbol)``: a quiet day, a gentle drift of at most
    3 % either way, or a chop, with no news; every process building the same universe agrees exactly."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_UNIVERSE:
        raise BadInput(f"a synthetic universe has 1 to {MAX_UNIVERSE:,} symbols, not {size!r}")
    scripted = dict(list(BEHAVIOURS.items())[:size])
    generated = {f"{GENERATED_PREFIX}{i:05d}": _generated(seed, f"{GENERATED_PREFIX}{i:05d}")
                 for i in range(1, size - len(scripted) + 1)}
    return scripted | generated


def _generated(seed: int, symbol: str) -> Behaviour:
    rng = _rng(seed, symbol, "script")
    shape = rng.integers(0, 3)
    if shape == 0:
        return Behaviour(((0, 0.0), (389, 0.0)), f"{symbol} no news", noise=float(rng.uniform(0.0002, 0.001)))
    if shape == 1:
        drift = float(rng.uniform(-0.03, 0.03))
        return Behaviour(((0, 0.0), (389, drift)), f"{symbol} no news", noise=float(rng.uniform(0.0005, 0.0015)))
    return Behaviour(_chop_knots(), f"{symbol} no news", noise=float(rng.uniform(0.001, 0.002)))


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded from a stable digest of ``parts`` (identical in every process)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))


def _ar1(rng: np.random.Generator, n: int, sd: float, phi: float = 0.9) -> np.ndarray:
    """Mean-reverting noise: wiggles around the script without drifting away from it."""
    shocks = rng.standard_normal(n) * sd * np.sqrt(1 - phi * phi)
    out = np.empty(n)
    level = rng.standard_normal() * sd
    for i in range(n):
        level = phi * level + shocks[i]
        out[i] = level
    return out


def _volume_profile(behaviour: Behaviour) -> np.ndarray:
    """Relative volume per minute: the usual U shape, or a collapse after the first hour."""
    m = np.arange(SESSION_MINUTES, dtype=float)
    if behaviour.volume_collapse:
        return np.where(m < 60, 1.0, np.maximum(0.08, np.exp(-(m - 60) / 25)))
    return 1.0 + 1.5 * np.exp(-m / 20) + 0.8 * np.exp(-(SESSION_MINUTES - 1 - m) / 20)


class SyntheticMarketData:
    """A reproducible fake market for demos and tests; see :data:`BEHAVIOURS`."""

    name = "synthetic"

    def __init__(self, seed: int = 7, tz: str = "America/New_York",
                 behaviours: dict[str, Behaviour] | None = None) -> None:
        self.seed = seed
        self.tz = ZoneInfo(tz)
        self.behaviours = dict(BEHAVIOURS if behaviours is None else behaviours)  # tests add scripted symbols
        self._day = lru_cache(maxsize=1024)(self._generate_day)

    def symbols(self) -> list[str]:
        return sorted(self.behaviours)

    def catalyst(self, symbol: str) -> str:
        """The made-up news headline that explains the symbol's behaviour."""
        return self._behaviour(symbol).headline

    def reference_price(self, symbol: str, day: date) -> float:
        """The implied prior close that ``day``'s path (and GAPU's gap) is measured from."""
        self._behaviour(symbol)
        _require_date(day)
        scripted = self.behaviours[symbol].price
        anchor = scripted if scripted is not None else _rng(self.seed, symbol).uniform(20.0, 400.0)
        jitter = _rng(self.seed, symbol, day.isoformat(), "ref").uniform(-0.02, 0.02)
        return anchor * (1.0 + jitter)

    def session_bars(self, symbol: str, day: date) -> tuple[Bar, ...]:
        """All 390 bars of ``day`` (empty on weekends), regardless of the current time."""
        self._behaviour(symbol)
        _require_date(day)
        if day.weekday() >= 5:
            return ()
        return self._day(symbol, day)

    def previous_close(self, symbol: str, at: datetime) -> float | None:
        """The implied prior close of the session on ``at``'s weekday (what its gap is measured from).

        Sessions are generated independently, so the previous weekday's last bar is not it.
        """
        day = require_aware(at, "previous close time").astimezone(self.tz).date()
        return round(self.reference_price(symbol, day), 2) if day.weekday() < 5 else None

    def premarket_quote(self, symbol: str, at: datetime) -> Quote | None:
        """Before a weekday's open the gap is already known: from 04:00 the price is the day's opening price.

        Outside that window (or once the session has started) this is :meth:`quote`.
        """
        at = require_aware(at, "quote time")
        local = at.astimezone(self.tz)
        day = local.date()
        start = datetime.combine(day, PREMARKET_OPEN, tzinfo=self.tz)
        if day.weekday() >= 5 or not start <= local < datetime.combine(day, SESSION_OPEN, tzinfo=self.tz):
            return self.quote(symbol, at)
        first = self.session_bars(symbol, day)[0]
        return Quote(symbol, first.open, at, 0.0)

    def news(self, symbols: list[str], since: datetime, until: datetime) -> list[NewsItem]:
        """Each scripted symbol's headline, published ``news_minute`` from every weekday's open; newest first."""
        since, until = require_aware(since, "news since"), require_aware(until, "news until")
        items = []
        for symbol in sorted(set(symbols)):
            behaviour = self._behaviour(symbol)
            if behaviour.news_minute is None:
                continue
            day = since.astimezone(self.tz).date()
            while day <= until.astimezone(self.tz).date():
                published = datetime.combine(day, SESSION_OPEN, tzinfo=self.tz) + behaviour.news_minute * _MINUTE
                if day.weekday() < 5 and since <= published <= until:
                    items.append(NewsItem(symbol, behaviour.headline, published, "synthetic"))
                day += timedelta(days=1)
        return sorted(items, key=lambda i: (i.created_at, i.symbol), reverse=True)

    def quote(self, symbol: str, at: datetime) -> Quote | None:
        """Close of the newest completed bar, stamped at its end.

        Before 09:30 (or at weekends) that is the previous weekday's last close. Because a
        previous weekday always exists, the protocol's "open of the first bar in progress"
        case never arises here and ``None`` is unreachable in practice.
        """
        at = require_aware(at, "quote time")
        done = self.bars(symbol, at, 1)
        if not done:
            return None
        bar = done[-1]
        return Quote(symbol, bar.close, bar.timestamp + _MINUTE, bar.volume)

    def bars(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        """Up to ``count`` bars completed by ``end``, ascending, from ``end``'s session and at
        most :data:`LOOKBACK_WEEKDAYS` previous weekdays."""
        end = require_aware(end, "bars end")
        count = _require_count(count)
        self._behaviour(symbol)
        collected: list[Bar] = []
        for day in self._days_back(end):
            if len(collected) >= count:
                break
            day_bars = self._day(symbol, day)
            done = _completed(day_bars, end)
            collected[:0] = day_bars[max(0, done - (count - len(collected))) : done]
        return collected

    def _behaviour(self, symbol: str) -> Behaviour:
        try:
            return self.behaviours[symbol]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.behaviours))
            raise UnknownSymbol(f"unknown symbol {symbol!r} for synthetic data; known: {known}") from None

    def _days_back(self, end: datetime) -> list[date]:
        """``end``'s local date if a weekday, then previous weekdays, newest first."""
        day = end.astimezone(self.tz).date()
        days = [day] if day.weekday() < 5 else []
        while len(days) < LOOKBACK_WEEKDAYS + 1:
            day -= timedelta(days=1)
            if day.weekday() < 5:
                days.append(day)
        return days

    def _generate_day(self, symbol: str, day: date) -> tuple[Bar, ...]:
        """Script + noise for one session; pure in (seed, symbol, day)."""
        behaviour = self.behaviours[symbol]
        rng = _rng(self.seed, symbol, day.isoformat())
        minutes, returns = zip(*behaviour.knots)
        # Points 0..390: point k is the price at minute boundary k (open of bar k).
        path = np.interp(np.arange(SESSION_MINUTES + 1), minutes, returns)
        noise = _ar1(rng, SESSION_MINUTES + 1, behaviour.noise)
        prices = self.reference_price(symbol, day) * (1 + path) * (1 + noise)
        prices = np.maximum(np.round(prices, 2), 0.01)
        wicks = np.abs(rng.standard_normal((2, SESSION_MINUTES))) * max(behaviour.noise, 0.0003) * 0.5
        base_volume = _rng(self.seed, symbol, "volume").uniform(5_000, 200_000) * behaviour.volume_scale
        volumes = base_volume * _volume_profile(behaviour) * rng.uniform(0.75, 1.3, SESSION_MINUTES)
        start = datetime.combine(day, SESSION_OPEN, tzinfo=self.tz)
        return tuple(
            _bar(symbol, start + k * _MINUTE, prices[k], prices[k + 1], wicks[0, k], wicks[1, k], volumes[k])
            for k in range(SESSION_MINUTES)
        )


def _bar(symbol: str, ts: datetime, o: float, c: float, up: float, down: float, volume: float) -> Bar:
    """A rounded bar whose high/low still bracket open and close after rounding."""
    o, c, up, down = float(o), float(c), float(up), float(down)
    high = max(round(max(o, c) * (1 + up), 2), o, c)
    low = max(min(round(min(o, c) * (1 - down), 2), o, c), 0.01)
    return Bar(ts, symbol, o, high, low, c, max(1, int(round(volume))))


def _completed(day_bars: tuple[Bar, ...], end: datetime) -> int:
    """How many of a session's bars have finished (start + 1 min <= end)."""
    if not day_bars:
        return 0
    elapsed = end.timestamp() - day_bars[0].timestamp.timestamp()
    return int(min(max(elapsed // 60, 0), len(day_bars)))


def _require_date(day: date) -> None:
    """A session is a calendar date; a datetime here would hide a time-zone choice."""
    if isinstance(day, datetime) or not isinstance(day, date):
        raise BadInput(f"session day must be a date, got {day!r}")


def _require_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadInput(f"bar count must be a non-negative integer, got {count!r}")
    return count
