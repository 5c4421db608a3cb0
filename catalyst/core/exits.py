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

from catalyst.core.domain import Quote, Strength, require_aware
from catalyst.core.profiles import PROFILES, MarketProfile

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
    "power_hour",  # WEAK only: recorded, never an exit reason by itself
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
    entry_volume: float | None = None

    def __post_init__(self) -> None:
        require_aware(self.opened_at, "opened_at")


@dataclass(frozen=True)
class MarketFacts:
    """What the market says beyond the price: indicators and time left in the session.

    ``None`` means unknown (too few bars, no session): the signal that needs it is recorded as
    unknown, never guessed.
    """

    rsi: float | None = None
    macd_hist: float | None = None
    recent_volume: float | None = None
    minutes_to_close: float | None = None


@dataclass(frozen=True)
class ExitAssessment:
    """The outcome of one check: what to do, why, and the numbers behind it.

    ``action`` is ``exit`` (a STRONG signal), ``consult`` (MODERATE: ask the advisor) or ``hold``.
    """

    action: str
    reason: str | None  # strongest signal's name, or why we could not judge (no_price, stale_quote)
    signals: tuple[ExitSignal, ...] = field(default_factory=tuple)
    price: float | None = None
    pnl_pct: float | None = None
    high_watermark: float | None = None
    unknown: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exits(self) -> bool:
        return self.action == "exit"

    @property
    def strongest(self) -> Strength | None:
        return self.signals[0].strength if self.signals else None


def ordered(signals: list[ExitSignal]) -> tuple[ExitSignal, ...]:
    """Strongest first; equal strengths in canonical order, so the recorded reason is stable."""
    return tuple(sorted(signals, key=lambda s: (-int(s.strength), _ORDER.get(s.name, len(_ORDER)))))


def _tier(value: float, tiers: list[tuple[float | None, Strength]], below: bool) -> tuple[Strength, float] | None:
    """The strongest tier that ``value`` reaches (``below``: at or under the threshold)."""
    for threshold, strength in tiers:
        if threshold is not None and (value <= threshold if below else value >= threshold):
            return strength, threshold
    return None


def pnl_signals(pnl_pct: float, profile: MarketProfile) -> list[ExitSignal]:
    fired = []
    hit = _tier(pnl_pct, [(profile.stop_loss_strong, Strength.STRONG), (profile.stop_loss_moderate, Strength.MODERATE),
                          (profile.stop_loss_weak, Strength.WEAK)], below=True)
    if hit:
        fired.append(ExitSignal("stop_loss", hit[0], round(pnl_pct, 4), hit[1], "P&L % at or below tier"))
    hit = _tier(pnl_pct, [(profile.take_profit_strong, Strength.STRONG),
                          (profile.take_profit_moderate, Strength.MODERATE)], below=False)
    if hit:
        fired.append(ExitSignal("take_profit", hit[0], round(pnl_pct, 4), hit[1], "P&L % at or above tier"))
    return fired


def price_signals(pos: HeldPosition, price: float, now: datetime) -> list[ExitSignal]:
    """Fixed stop price, fixed target price and max hold time (Phase-2 rules), all STRONG."""
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


def trailing_signal(price: float, high_watermark: float, profile: MarketProfile) -> list[ExitSignal]:
    drop = (high_watermark - price) / high_watermark * 100.0 if high_watermark > 0 else 0.0
    if drop >= profile.trailing_stop_pct:
        return [ExitSignal("trailing_stop", Strength.MODERATE, round(drop, 4), profile.trailing_stop_pct,
                           "% below the high-watermark")]
    return []


def indicator_signals(pos: HeldPosition, facts: MarketFacts, profile: MarketProfile) -> tuple[list[ExitSignal], list[str]]:
    """RSI, MACD and volume collapse; returns (fired, unknown) so missing data is visible."""
    fired, unknown = [], []
    if facts.rsi is None:
        unknown.append("rsi_overbought")
    else:
        hit = _tier(facts.rsi, [(profile.rsi_strong, Strength.STRONG), (profile.rsi_moderate, Strength.MODERATE)], False)
        if hit:
            fired.append(ExitSignal("rsi_overbought", hit[0], round(facts.rsi, 4), hit[1], "RSI(14)"))
    if facts.macd_hist is None:
        unknown.append("macd_bearish")
    elif facts.macd_hist < profile.macd_hist_below:
        fired.append(ExitSignal("macd_bearish", Strength.MODERATE, round(facts.macd_hist, 6), profile.macd_hist_below,
                                "MACD(12,26,9) histogram below threshold"))
    if facts.recent_volume is None or not pos.entry_volume:
        unknown.append("volume_collapse")
    else:
        ratio = facts.recent_volume / pos.entry_volume
        hit = _tier(ratio, [(profile.volume_collapse_strong, Strength.STRONG),
                            (profile.volume_collapse_moderate, Strength.MODERATE)], below=True)
        if hit:
            fired.append(ExitSignal("volume_collapse", hit[0], round(ratio, 4), hit[1], "recent volume / entry volume"))
    return fired, unknown


def session_signals(facts: MarketFacts, profile: MarketProfile) -> list[ExitSignal]:
    """Near close (STRONG) in the last minutes of the actual session; power hour (WEAK) before it."""
    m = facts.minutes_to_close
    if m is None:
        return []
    if m <= profile.near_close_minutes:
        return [ExitSignal("near_close", Strength.STRONG, round(m, 2), profile.near_close_minutes, "minutes to close")]
    if profile.power_hour_until_minutes < m <= profile.power_hour_from_minutes:
        return [ExitSignal("power_hour", Strength.WEAK, round(m, 2), profile.power_hour_from_minutes, "minutes to close")]
    return []


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


def assess_exit(pos: HeldPosition, quote: Quote | None, now: datetime, max_quote_age: timedelta,
                profile: MarketProfile = PROFILES["US"], facts: MarketFacts | None = None) -> ExitAssessment:
    """Judge one position at ``now``: STRONG → exit, MODERATE → consult, WEAK or nothing → hold."""
    require_aware(now, "now")
    problem = quote_problem(quote, now, max_quote_age)
    if problem:
        return ExitAssessment("hold", problem, high_watermark=pos.high_watermark)
    facts = facts or MarketFacts()
    price = float(quote.price)
    pnl_pct = (price / pos.entry_price - 1.0) * 100.0
    high = max(pos.high_watermark, price)
    fired = pnl_signals(pnl_pct, profile) + price_signals(pos, price, now) + trailing_signal(price, high, profile)
    more, unknown = indicator_signals(pos, facts, profile)
    signals = ordered(fired + more + session_signals(facts, profile))
    strongest = signals[0].strength if signals else None
    action = {Strength.STRONG: "exit", Strength.MODERATE: "consult"}.get(strongest, "hold")
    reason = signals[0].name if signals else None
    return ExitAssessment(action, reason, signals, price, pnl_pct, high, tuple(unknown))


def realized_pnl(entry_price: float, exit_price: float, qty: float) -> tuple[float, float]:
    """Realised P&L in money and percent for a long position."""
    return (exit_price - entry_price) * qty, (exit_price / entry_price - 1.0) * 100.0
