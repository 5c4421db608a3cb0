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
from catalyst.domain import BadInput
from catalyst.marketdata.base import MarketData
from catalyst.profiles import MarketProfile, profile_for
from catalyst.sessions import SessionCalendar
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


def build_market_data(spec: str) -> MarketData:
    if spec == "synthetic":
        from catalyst.marketdata.synthetic import SyntheticMarketData

        return SyntheticMarketData()
    if spec.startswith("replay:"):
        from catalyst.marketdata.replay import ReplayMarketData

        paths = [p.strip() for p in spec.split(":", 1)[1].split(",") if p.strip()]
        if not paths:
            raise BadInput("CATALYST_MARKET_DATA=replay: needs a CSV path, e.g. replay:data/SPY.csv")
        return ReplayMarketData(paths[0] if len(paths) == 1 else paths)
    if spec == "alpaca":
        raise BadInput("CATALYST_MARKET_DATA=alpaca is not available yet; use synthetic or replay:<csv>")
    raise BadInput(f"CATALYST_MARKET_DATA={spec!r} is not one of synthetic, replay:<csv path>, alpaca")


def build_broker(settings: Settings, market_data: MarketData, clock: Clock):
    if settings.broker == "paper":
        from catalyst.brokers.paper import PaperBroker

        return PaperBroker(market_data, clock, settings.paper_starting_cash, settings.sqlalchemy_url)
    raise BadInput("CATALYST_BROKER=alpaca is not available yet; use paper")


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


def is_halted(settings: Settings) -> bool:
    with session_scope(settings.sqlalchemy_url) as s:
        row = s.scalar(select(TradingState).where(TradingState.key == "halted"))
        return bool(row and row.value.get("halted"))


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    clock = clock or build_clock(settings)
    market_data = build_market_data(settings.market_data)
    calendar = SessionCalendar.for_market(settings.market, tuple(settings.closed_dates))
    profile = profile_for(settings.market, settings.signals)
    return Runtime(settings, clock, calendar, market_data, build_broker(settings, market_data, clock), profile)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime, built once from settings (or installed by :func:`use_runtime`)."""
    global _runtime
    if _runtime is None:
        _runtime = build_runtime(get_settings())
    return _runtime


def use_runtime(rt: Runtime | None) -> None:
    """Install a runtime for this process (replay steps its own clock through the same tasks)."""
    global _runtime
    _runtime = rt


def reset_runtime() -> None:
    use_runtime(None)
    get_settings.cache_clear()
