"""Pre-trade risk checks: pure functions from a proposed entry, the book and the limits to refusals.

Every entry, the scanner's and an operator's alike, is judged by :func:`check_entry` at the
moment its intent is written, under the entry gate (``catalyst.entries.admit_entry``), so what
the book holds and what is in flight cannot change between the check and the write. This
module only judges: it reads nothing and writes nothing.

The answer is the ordered list of every rule the entry breaks (empty: admitted), each a reason
code for ``decisions.reason`` and a message an operator can act on.

Money rules count entries in flight like positions: an entry has no mark until it fills, so it
is valued at its admission price and puts its risk to its stop at stake. The daily-loss
projection is the day's worst case if every stop is hit: today's realized P&L, plus each
holding's unrealized P&L and its remaining risk to its stop, plus this trade's risk to its stop.
Counting the open risk makes the answer the same whether a concurrent entry is still in flight
or has already filled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import Enum


class TradingState(str, Enum):
    """Whether new entries may open. REDUCING: exits continue, nothing new enters."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


@dataclass(frozen=True)
class Refusal:
    """Why an entry is not sent: a reason code (fits ``decisions.reason``) and a clear message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Holding:
    """An open position, or an entry in flight (``in_flight``: no mark yet, valued at its admission price)."""

    symbol: str
    qty: float
    price: float  # the mark: a position's last price, an in-flight entry's admission price
    cost: float  # the entry price (an in-flight entry: its admission price)
    stop: float | None
    sector: str | None = None
    in_flight: bool = False

    @property
    def value(self) -> float:
        return self.qty * self.price

    @property
    def unrealized(self) -> float:
        return self.qty * (self.price - self.cost)

    @property
    def risk(self) -> float:
        """What is still lost if the stop is hit from here (without a stop: the whole value)."""
        if self.stop is None:
            return self.value
        return self.qty * max(self.price - self.stop, 0.0)


@dataclass(frozen=True)
class Book:
    """What the account holds and has in flight, today's realized P&L and the trading state."""

    state: TradingState = TradingState.ACTIVE
    holdings: tuple[Holding, ...] = ()
    realized_pnl: float = 0.0  # today's, in the market's day
    state_reason: str | None = None

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(h.symbol for h in self.holdings)

    @property
    def count(self) -> int:
        return len(self.holdings)

    @property
    def unrealized_pnl(self) -> float:
        return sum(h.unrealized for h in self.holdings)

    @property
    def open_risk(self) -> float:
        return sum(h.risk for h in self.holdings)

    def sector_value(self, sector: str) -> float:
        key = _sector_key(sector)
        return sum(h.value for h in self.holdings if h.sector and _sector_key(h.sector) == key)

    def with_entry(self, entry: "Entry") -> "Book":
        """The book once ``entry`` is in flight (planning several entries in one cycle)."""
        held = Holding(entry.symbol, entry.qty, entry.price, entry.price, entry.stop, entry.sector, in_flight=True)
        return Book(self.state, self.holdings + (held,), self.realized_pnl, self.state_reason)


@dataclass(frozen=True)
class Entry:
    """A proposed long entry: ``qty`` shares at about ``price``, protected at ``stop``, aiming at ``target``."""

    symbol: str
    qty: float
    price: float
    stop: float | None
    target: float | None
    sector: str | None = None

    @property
    def value(self) -> float:
        return self.qty * self.price

    @property
    def risk(self) -> float:
        """Lost if the stop is hit (without a stop: the whole value)."""
        return self.qty * max(self.price - (self.stop if self.stop is not None else 0.0), 0.0)

    @property
    def reward_risk(self) -> float | None:
        """Reward to the target per unit of risk to the stop; ``None`` without a target or below-price stop."""
        if self.target is None:
            return None
        per_share = self.price - (self.stop if self.stop is not None else 0.0)
        return (self.target - self.price) / per_share if per_share > 0 else None


@dataclass(frozen=True)
class Limits:
    """The pre-trade limits (issue 9 defaults; ``max_sector_exposure_usd=None``: no sector limit)."""

    max_positions: int = 5
    max_position_value_usd: float = 5000.0
    min_position_value_usd: float = 0.0
    max_sector_exposure_usd: float | None = None
    max_daily_loss_usd: float = 2000.0
    min_reward_risk: float = 1.5

    @classmethod
    def of(cls, settings) -> "Limits":
        """The limits named by a settings object (anything with these attributes)."""
        return cls(max_positions=settings.max_positions, max_position_value_usd=settings.max_position_value_usd,
                   min_position_value_usd=settings.min_position_value_usd,
                   max_sector_exposure_usd=settings.max_sector_exposure_usd,
                   max_daily_loss_usd=settings.max_daily_loss_usd, min_reward_risk=settings.min_reward_risk)


def check_entry(entry: Entry, book: Book, limits: Limits) -> list[Refusal]:
    """Every rule ``entry`` breaks, in a fixed order (the first is the recorded reason); ``[]`` admits it.

    ``book`` must not contain ``entry`` itself (a retried intent is left out of its own book).
    """
    refusals: list[Refusal] = []
    symbol = entry.symbol
    if book.state is not TradingState.ACTIVE:
        why = f" ({book.state_reason})" if book.state_reason else ""
        word = "halted" if book.state is TradingState.HALTED else "reducing risk"
        refusals.append(Refusal(book.state.value.lower(),
                                f"trading is {word}{why}: no entry in {symbol} is sent"))
    if symbol in book.symbols:
        refusals.append(Refusal("already_held", f"{symbol} is already held or being entered"))
    if book.count >= limits.max_positions:
        refusals.append(Refusal("position_limit", f"position limit {limits.max_positions} reached "
                                                  f"({book.count} held or in flight): no entry in {symbol}"))
    if not (_finite_positive(entry.qty) and _finite_positive(entry.price)):
        refusals.append(Refusal("bad_entry", f"entry in {symbol} needs a quantity and a price above zero, "
                                             f"got {entry.qty!r} at {entry.price!r}"))
        return refusals  # nothing below can be computed from it
    if entry.stop is not None and not entry.stop < entry.price:
        refusals.append(Refusal("stop_not_below_price", f"stop {entry.stop:g} of {symbol} is not below the "
                                                        f"price {entry.price:g}: it would fire at once"))
    worth = f"{entry.qty:g} {symbol} at {_usd(entry.price)} is worth {_usd(entry.value)}"
    if _cents(entry.value) > _cents(limits.max_position_value_usd):
        refusals.append(Refusal("position_too_large", f"{worth}, above the {_usd(limits.max_position_value_usd)} "
                                                      "maximum position value"))
    if _cents(entry.value) < _cents(limits.min_position_value_usd):
        refusals.append(Refusal("position_too_small", f"{worth}, below the {_usd(limits.min_position_value_usd)} "
                                                      "minimum position value"))
    if limits.max_sector_exposure_usd is not None and entry.sector:
        held = book.sector_value(entry.sector)
        if _cents(held + entry.value) > _cents(limits.max_sector_exposure_usd):
            refusals.append(Refusal("sector_exposure", f"sector {entry.sector} would hold {_usd(held + entry.value)} "
                                                       f"({_usd(held)} held or in flight + {_usd(entry.value)} of "
                                                       f"{symbol}), above its {_usd(limits.max_sector_exposure_usd)} "
                                                       "limit"))
    projected = book.realized_pnl + book.unrealized_pnl - book.open_risk - entry.risk
    if _cents(-projected) >= _cents(limits.max_daily_loss_usd):
        refusals.append(Refusal("daily_loss_limit", (
            f"with {symbol} the day could lose {_usd(-projected)}, reaching the {_usd(limits.max_daily_loss_usd)} "
            f"daily loss limit: realized {_signed(book.realized_pnl)}, unrealized {_signed(book.unrealized_pnl)}, "
            f"open risk to stops {_usd(book.open_risk)}, this trade's risk to its stop {_usd(entry.risk)}")))
    if limits.min_reward_risk > 0:
        ratio = entry.reward_risk
        if ratio is None or round(ratio, 6) < limits.min_reward_risk:  # 7.5/5.0 is 1.5, whatever the float says
            shown = "unknown (no target)" if entry.target is None else (
                "unknown" if ratio is None else f"{ratio:.2f}")
            refusals.append(Refusal("reward_risk", f"reward:risk of {symbol} is {shown} (target {entry.target}, "
                                                   f"stop {entry.stop}, price {entry.price:g}), below the minimum "
                                                   f"{limits.min_reward_risk:g}"))
    return refusals


def market_day(now: datetime, tz: tzinfo) -> date:
    """The market's day of ``now``: its date in the exchange's time zone (a session's date)."""
    return now.astimezone(tz).date()


def day_span(day: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """``day`` from midnight to midnight in the exchange's time zone, in UTC (DST days included)."""
    start = datetime.combine(day, time.min, tz)
    end = datetime.combine(day + timedelta(days=1), time.min, tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _cents(x: float) -> float:
    """Money compared to the cent: a float rounding error never decides a limit."""
    return round(x, 2)


def _sector_key(sector: str) -> str:
    return sector.strip().casefold()


def _usd(x: float) -> str:
    return f"${x:,.2f}"


def _signed(x: float) -> str:
    return f"-${-x:,.2f}" if x < 0 else f"+${x:,.2f}"
