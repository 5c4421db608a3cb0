"""Exit judgement for one long position: pure functions from facts to ordered reasons.

An exit check never returns a bare bool. It returns every signal that fired, strongest
first, each with the number that triggered it and the threshold it crossed, and a
decision derived from them. Nothing here is ever decided from a missing, NaN or stale
price: such a check holds and says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from catalyst.domain import Quote, Strength, require_aware

# Canonical exit reasons (DESIGN.md §2), in tie-break order for equal strengths.
EXIT_REASONS = (
    "emergency_stop",
    "manual",
    "stop_loss",
    "take_profit",
    "trailing_stop",
    "near_close",
    "max_hold_time",
    "rsi_overbought",
    "volume_collapse",
    "macd_bearish",
)
_ORDER = {name: i for i, name in enumerate(EXIT_REASONS)}


@dataclass(frozen=True)
class ExitSignal:
    """One reason to leave, with the evidence: ``value`` crossed ``threshold``."""

    name: str
    strength: Strength
    value: float
    threshold: float
    detail: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data["strength"] = self.strength.name
        return data


@dataclass(frozen=True)
class HeldPosition:
    """The facts about an open position that exit rules read."""

    symbol: str
    qty: float
    entry_price: float
    opened_at: datetime
    high_watermark: float
    max_hold: timedelta
    stop_loss_price: float | None = None
    take_profit_price: float | None = None

    def __post_init__(self) -> None:
        require_aware(self.opened_at, "opened_at")


@dataclass(frozen=True)
class ExitAssessment:
    """The outcome of one check: what to do, why, and the numbers behind it."""

    action: str  # "exit" | "hold"
    reason: str | None  # exit reason, or why we could not judge (no_price, stale_quote)
    signals: tuple[ExitSignal, ...] = field(default_factory=tuple)
    price: float | None = None
    pnl_pct: float | None = None
    high_watermark: float | None = None

    @property
    def exits(self) -> bool:
        return self.action == "exit"


def ordered(signals: list[ExitSignal]) -> tuple[ExitSignal, ...]:
    """Strongest first; equal strengths in canonical order, so the recorded reason is stable."""
    return tuple(sorted(signals, key=lambda s: (-int(s.strength), _ORDER.get(s.name, len(_ORDER)))))


def price_signals(pos: HeldPosition, price: float, now: datetime) -> list[ExitSignal]:
    """Fixed stop price, fixed target price and max hold time (Phase-2 rules)."""
    fired: list[ExitSignal] = []
    if pos.stop_loss_price is not None and price <= pos.stop_loss_price:
        fired.append(ExitSignal("stop_loss", Strength.STRONG, price, pos.stop_loss_price, "price at or below stop"))
    if pos.take_profit_price is not None and price >= pos.take_profit_price:
        fired.append(ExitSignal("take_profit", Strength.STRONG, price, pos.take_profit_price, "price at or above target"))
    held = (now - pos.opened_at).total_seconds()
    limit = pos.max_hold.total_seconds()
    if held >= limit:
        fired.append(ExitSignal("max_hold_time", Strength.STRONG, held / 3600.0, limit / 3600.0, "hours held"))
    return fired


def quote_problem(quote: Quote | None, now: datetime, max_age: timedelta) -> str | None:
    """Why a quote cannot be trusted for a decision, or ``None`` when it can."""
    if quote is None:
        return "no_price"
    price = quote.price
    if not isinstance(price, (int, float)) or math.isnan(price) or math.isinf(price) or price <= 0:
        return "bad_price"
    if now - quote.timestamp > max_age:
        return "stale_quote"
    if quote.timestamp - now > timedelta(seconds=1):
        return "future_quote"
    return None


def assess_exit(pos: HeldPosition, quote: Quote | None, now: datetime, max_quote_age: timedelta) -> ExitAssessment:
    """Judge one position at ``now``. STRONG exits now; anything weaker holds (advisor comes later)."""
    require_aware(now, "now")
    problem = quote_problem(quote, now, max_quote_age)
    if problem:
        return ExitAssessment("hold", problem, high_watermark=pos.high_watermark)
    price = float(quote.price)
    pnl_pct = (price / pos.entry_price - 1.0) * 100.0
    high = max(pos.high_watermark, price)
    signals = ordered(price_signals(pos, price, now))
    if signals and signals[0].strength == Strength.STRONG:
        return ExitAssessment("exit", signals[0].name, signals, price, pnl_pct, high)
    return ExitAssessment("hold", None, signals, price, pnl_pct, high)


def realized_pnl(entry_price: float, exit_price: float, qty: float) -> tuple[float, float]:
    """Realised P&L in money and percent for a long position."""
    return (exit_price - entry_price) * qty, (exit_price / entry_price - 1.0) * 100.0
