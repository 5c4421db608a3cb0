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
from dataclasses import dataclass, replace
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

    def marked(self, marks: dict[str, float]) -> "Book":
        """The book with its positions (not entries in flight) valued at ``marks`` (symbol → price)."""
        holdings = tuple(replace(h, price=marks[h.symbol]) if not h.in_flight and h.symbol in marks else h
                         for h in self.holdings)
        return Book(self.state, holdings, self.realized_pnl, self.state_reason)

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
    state = state_refusal(book.state, book.state_reason, symbol)
    if state is not None:
        refusals.append(state)
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


def state_refusal(state: TradingState, reason: str | None, symbol: str) -> Refusal | None:
    """The trading state's own refusal (checked at admission and again when the send is claimed)."""
    if state is TradingState.ACTIVE:
        return None
    why = f" ({reason})" if reason else ""
    word = "halted" if state is TradingState.HALTED else "reducing risk"
    return Refusal(state.value.lower(), f"trading is {word}{why}: no entry in {symbol} is sent")


# -- the daily-loss monitor (catalyst.guard acts on these answers) ---------------------------------

SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@dataclass(frozen=True)
class GuardState:
    """The stored trading state (the ``halted`` row of ``trading_state``) as the guard reads it.

    ``market_day`` is the day a REDUCING state belongs to (it lifts on the next market day);
    ``flatten``: an emergency stop, every position is to be closed (a halt with kept positions is not).
    """

    state: TradingState = TradingState.ACTIVE
    reason: str | None = None
    by: str | None = None
    at: str | None = None
    market_day: date | None = None
    flatten: bool = False

    @classmethod
    def parse(cls, value) -> "GuardState":
        """Read the stored row; anything unreadable is ACTIVE, except a ``halted`` flag, which always halts."""
        value = value if isinstance(value, dict) else {}
        day = _date_or_none(value.get("market_day"))
        common = dict(reason=_text(value.get("reason")), by=_text(value.get("by")), at=_text(value.get("at")),
                      market_day=day)
        if value.get("halted"):
            return cls(TradingState.HALTED, flatten=bool(value.get("flatten")), **common)
        name = str(value.get("state") or "").upper()
        if name == TradingState.REDUCING.value:
            return cls(TradingState.REDUCING, **common)
        return cls(TradingState.ACTIVE, **common)

    def effective(self, today: date | None) -> "GuardState":
        """REDUCING lasts for its market day only; HALTED lasts until an operator resumes."""
        if self.state is TradingState.REDUCING and today is not None and self.market_day is not None \
                and today != self.market_day:
            return GuardState(TradingState.ACTIVE, market_day=today)
        return self


@dataclass(frozen=True)
class DailyPnl:
    """The market day's P&L (realized + unrealized) against the daily loss limit."""

    realized: float
    unrealized: float
    limit: float
    warning_pct: float
    unpriced: tuple[str, ...] = ()  # holdings whose figures were not numbers: left out, and named

    @property
    def total(self) -> float:
        return self.realized + self.unrealized

    @property
    def loss(self) -> float:
        return max(-self.total, 0.0)

    @property
    def used(self) -> float:
        """The share of the limit already lost (1.0 = the limit)."""
        return self.loss / self.limit if self.limit > 0 else 0.0

    @property
    def level(self) -> TradingState:
        """What the loss alone calls for, to the cent: at the limit HALTED, at the warning share REDUCING."""
        if _cents(self.loss) >= _cents(self.limit):
            return TradingState.HALTED
        if _cents(self.loss) >= _cents(self.warning_pct * self.limit):
            return TradingState.REDUCING
        return TradingState.ACTIVE

    def as_dict(self) -> dict:
        return {"realized": round(self.realized, 2), "unrealized": round(self.unrealized, 2),
                "total": round(self.total, 2), "limit": round(self.limit, 2),
                "warning_at": round(self.warning_pct * self.limit, 2), "used_pct": round(100 * self.used, 1),
                "unpriced": list(self.unpriced)}

    def describe(self) -> str:
        return (f"today's P&L {_signed(self.total)} (realized {_signed(self.realized)}, unrealized "
                f"{_signed(self.unrealized)}) is {100 * self.used:.0f}% of the {_usd(self.limit)} daily loss limit")


def daily_pnl(book: Book, limit: float, warning_pct: float) -> DailyPnl:
    """Today's P&L from a book snapshot; a holding with a figure that is not a number is left out and named."""
    realized = book.realized_pnl if _finite(book.realized_pnl) else 0.0
    unrealized, unpriced = 0.0, []
    for h in book.holdings:
        value = h.unrealized if all(_finite(x) for x in (h.qty, h.price, h.cost)) else math.nan
        if _finite(value):
            unrealized += value
        else:
            unpriced.append(h.symbol)
    return DailyPnl(realized, unrealized, limit, warning_pct, tuple(unpriced))


@dataclass(frozen=True)
class GuardVerdict:
    """What the risk monitor does now: the state to hold, whether to flatten, and what changed (``None``: nothing)."""

    state: TradingState
    flatten: bool
    change: str | None = None  # halt | flatten | reduce | lift
    reason: str | None = None


def monitor_verdict(current: GuardState, today: date, pnl: DailyPnl) -> GuardVerdict:
    """The monitor only escalates: it never lowers HALTED, never lifts REDUCING within its market day,
    and at the limit turns a halt that kept its positions into an emergency stop."""
    stored = current.state
    now_state = current.effective(today)
    level = pnl.level
    if now_state.state is TradingState.HALTED:
        if level is TradingState.HALTED and not now_state.flatten:
            return GuardVerdict(TradingState.HALTED, True, "flatten", "daily_loss_limit")
        return GuardVerdict(TradingState.HALTED, now_state.flatten)
    if level is TradingState.HALTED:
        return GuardVerdict(TradingState.HALTED, True, "halt", "daily_loss_limit")
    if now_state.state is TradingState.REDUCING:
        return GuardVerdict(TradingState.REDUCING, False)
    if level is TradingState.REDUCING:
        return GuardVerdict(TradingState.REDUCING, False, "reduce", "daily_loss_warning")
    if stored is TradingState.REDUCING:  # yesterday's REDUCING, lifted by the new market day
        return GuardVerdict(TradingState.ACTIVE, False, "lift", "new_market_day")
    return GuardVerdict(TradingState.ACTIVE, False)


def max_hold_seconds(strategy: str | None, minutes_by_strategy: dict[str, float], default_hours: float) -> float:
    """A position's max hold: its strategy's minutes when configured (the entry reason names the strategy),
    else the default hours."""
    minutes = minutes_by_strategy.get(strategy) if strategy else None
    if minutes is None and strategy:
        wanted = strategy.strip().casefold()
        minutes = next((m for name, m in minutes_by_strategy.items() if name.strip().casefold() == wanted), None)
    return float(minutes) * 60.0 if minutes is not None else default_hours * 3600.0


def max_hold_problems(minutes_by_strategy) -> list[str]:
    """Why a ``max_hold_minutes_by_strategy`` mapping is unusable (empty: it is fine)."""
    if not isinstance(minutes_by_strategy, dict):
        return [f"must be a mapping of strategy: minutes, got {repr(minutes_by_strategy)[:60]}"]
    problems, seen = [], {}
    for name, minutes in minutes_by_strategy.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(f"strategy {name!r} must be a name (the entry reason, e.g. momentum)")
            continue
        key = name.strip().casefold()
        if key in seen:
            problems.append(f"strategy {name!r} is listed twice (also as {seen[key]!r})")
        seen[key] = name
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) \
                or minutes <= 0:
            problems.append(f"the max hold of {name} must be a number of minutes above 0, got {minutes!r}")
    return problems


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _text(x) -> str | None:
    return None if x is None else str(x)


def _date_or_none(x) -> date | None:
    try:
        return date.fromisoformat(str(x)) if x else None
    except ValueError:
        return None


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
