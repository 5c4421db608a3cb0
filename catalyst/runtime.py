"""Wiring: settings → clock, calendar, market data and broker for this process.

Everything process-wide is built once and cached; tests call :func:`reset_runtime`.
The simulated clock's anchor is kept in ``trading_state`` so that every process started
with the same ``CATALYST_CLOCK`` spec reads the same simulated time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from catalyst.clock import Clock, SimClock, WallClock, parse_clock_spec
from catalyst.db.engine import session_scope
from catalyst.db.models import TradingState
from catalyst.core.domain import BadInput
from catalyst.marketdata.base import MarketData
from catalyst.core.profiles import MarketProfile, profile_for
from catalyst.core.sessions import SessionCalendar
from catalyst.settings import Settings, get_settings

CLOCK_KEY = "sim_clock:"


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    calendar: SessionCalendar
    market_data: MarketData
    broker: object
    profile: MarketProfile
    _advisor: object | None = None

    @property
    def advisor(self):
        """Built on first MODERATE signal: most checks never need it."""
        if self._advisor is None:
            from catalyst.advisor import build_advisor

            self._advisor = build_advisor(self.settings)
        return self._advisor


def build_market_data(settings: Settings, calendar: SessionCalendar) -> MarketData:
    spec = settings.market_data
    if spec.startswith("synthetic:") and spec != "synthetic:crash":
        from catalyst.marketdata.synthetic import SyntheticMarketData, universe

        size = spec.split(":", 1)[1].strip()
        if not (size.isascii() and size.isdecimal()):
            raise BadInput(f"CATALYST_MARKET_DATA={spec!r}: synthetic:<N> takes a number of symbols, e.g. "
                           "synthetic:1000")
        return SyntheticMarketData(behaviours=universe(int(size)))
    if spec in ("synthetic", "synthetic:crash"):
        from catalyst.marketdata.synthetic import SyntheticMarketData

        market = SyntheticMarketData()
        if spec == "synthetic:crash":  # the demo's crash scenario: a market-wide slide, then a flash crash
            from catalyst.marketdata.crash import CrashMarketData

            return CrashMarketData(market, calendar)
        return market
    if spec.startswith("replay:"):
        from catalyst.marketdata.replay import ReplayMarketData

        paths = [p.strip() for p in spec.split(":", 1)[1].split(",") if p.strip()]
        if not paths:
            raise BadInput("CATALYST_MARKET_DATA=replay: needs a CSV path, e.g. replay:data/SPY.csv")
        return ReplayMarketData(paths[0] if len(paths) == 1 else paths)
    if spec == "alpaca":
        from catalyst.marketdata.alpaca import AlpacaMarketData, LocalCycleCache, RedisCycleCache

        _require_alpaca_keys(settings)
        cache = RedisCycleCache(settings.redis_url) if settings.redis_url else LocalCycleCache()
        return AlpacaMarketData(api_key=settings.alpaca_api_key, secret_key=settings.alpaca_secret_key,
                                data_url=settings.alpaca_data_url, feed=settings.alpaca_feed,
                                timeout=settings.alpaca_timeout, bucket=alpaca_bucket(settings), cache=cache,
                                cycle_seconds=settings.monitor_check_interval, watchlist=_watched_symbols,
                                calendar=calendar)
    raise BadInput(f"CATALYST_MARKET_DATA={spec!r} is not one of synthetic, synthetic:crash, synthetic:<N>, "
                   "replay:<csv path>, alpaca")


_buckets: dict = {}


def alpaca_bucket(settings: Settings):
    """One rate-limit bucket per process for every Alpaca client (shared across processes via Redis)."""
    from catalyst.ratelimit import bucket_from_settings

    key = (settings.redis_url, settings.alpaca_rate_limit, settings.alpaca_rate_window)
    if key not in _buckets:
        _buckets[key] = bucket_from_settings(settings, rate=settings.alpaca_rate_limit, per=settings.alpaca_rate_window)
    return _buckets[key]


def _watched_symbols() -> list[str]:
    """Symbols of every position still open or closing: the batch each monitor cycle prices."""
    from catalyst.db.models import Position

    with session_scope() as s:
        return list(s.scalars(select(Position.symbol).where(Position.status != "closed").distinct()))


def _require_alpaca_keys(settings: Settings) -> None:
    if not settings.alpaca_api_key or not settings.alpaca_secret_key:
        raise BadInput("Alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY")


def build_broker(settings: Settings, market_data: MarketData, clock: Clock):
    if settings.broker == "paper":
        from catalyst.brokers.paper import PaperBroker

        return PaperBroker(market_data, clock, settings.paper_starting_cash, settings.sqlalchemy_url)
    from catalyst.brokers.alpaca import AlpacaBroker

    _require_alpaca_keys(settings)
    return AlpacaBroker(api_key=settings.alpaca_api_key, secret_key=settings.alpaca_secret_key,
                        base_url=settings.alpaca_base_url, live_trading=settings.live_trading,
                        timeout=settings.alpaca_timeout, bucket=alpaca_bucket(settings))


def build_clock(settings: Settings) -> Clock:
    spec = parse_clock_spec(settings.clock)
    if spec is None:
        return WallClock()
    anchor = clock_anchor(settings, spec.text)
    return SimClock(start=spec.start, speed=spec.speed, anchor=anchor, spec=spec.text)


def clock_anchor(settings: Settings, spec_text: str) -> float:
    """The wall epoch at which simulated time started; the first process to ask sets it."""
    key = CLOCK_KEY + spec_text
    url = settings.sqlalchemy_url
    with session_scope(url) as s:
        row = s.get(TradingState, key)
        if row is not None:
            return float(row.value["anchor"])
    try:
        with session_scope(url) as s:
            s.add(TradingState(key=key, value={"anchor": time.time()}, updated_at=datetime.now(UTC)))
    except IntegrityError:
        pass
    with session_scope(url) as s:
        return float(s.get(TradingState, key).value["anchor"])


def reset_clock_anchor(settings: Settings, at: float | None = None) -> None:
    """Restart simulated time from its start (used by `catalyst demo` before launching processes)."""
    spec = parse_clock_spec(settings.clock)
    if spec is None:
        return
    key = CLOCK_KEY + spec.text
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(delete(TradingState).where(TradingState.key == key))
        s.add(TradingState(key=key, value={"anchor": at if at is not None else time.time()},
                           updated_at=datetime.now(UTC)))


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    clock = clock or build_clock(settings)
    calendar = SessionCalendar.for_market(settings.market, tuple(settings.closed_dates))
    market_data = build_market_data(settings, calendar)
    profile = profile_for(settings.market, settings.signals)
    return Runtime(settings, clock, calendar, market_data, build_broker(settings, market_data, clock), profile)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime, built once from settings (or installed by :func:`use_runtime`)."""
    global _runtime
    if _runtime is None:
        rt = build_runtime(get_settings())
        if rt.settings.broker == "alpaca":
            from catalyst.calendar_check import cross_check

            cross_check(rt)  # the broker knows unscheduled closures; it wins where it disagrees
        _runtime = rt
    return _runtime


def use_runtime(rt: Runtime | None) -> None:
    """Install a runtime for this process (replay steps its own clock through the same tasks)."""
    global _runtime
    _runtime = rt


def reset_runtime() -> None:
    use_runtime(None)
    get_settings.cache_clear()
