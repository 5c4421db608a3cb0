"""Scanner ranking and the entry rule: pure functions over market snapshots.

A scan is the candidate funnel (:mod:`catalyst.core.funnel`); its momentum part is :func:`score`
scaled to 0..1, and :func:`evaluate` screens the funnel's selection when a cycle is evaluated.

The ranking favours intraday momentum confirmed by volume; the entry rule is deliberately
simple (later issues deepen it) but already respects the halt flag, the position limit,
symbols already held, and sizes each order from a fixed dollar amount.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """What the scanner sees of one symbol at scan time."""

    symbol: str
    price: float
    session_open: float
    volume: float  # volume traded this session so far
    typical_volume: float  # the same span's volume on a typical day (or the session average)
    catalyst: str | None = None
    rsi: float | None = None

    @property
    def change_pct(self) -> float:
        return (self.price / self.session_open - 1.0) * 100.0

    @property
    def relative_volume(self) -> float:
        return self.volume / self.typical_volume if self.typical_volume > 0 else 0.0


@dataclass(frozen=True)
class Candidate:
    symbol: str
    rank: int
    score: float
    price: float
    change_pct: float
    volume: float
    relative_volume: float
    catalyst: str | None
    rsi: float | None = None


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def score(snapshot: Snapshot) -> float:
    """Momentum in percent, scaled up to 2x by relative volume (capped so one print can't dominate)."""
    boost = 1.0 + min(max(snapshot.relative_volume - 1.0, 0.0), 1.0)
    return snapshot.change_pct * boost


def rank(snapshots: list[Snapshot], top_n: int) -> list[Candidate]:
    """Best ``top_n`` snapshots by score; ties broken by symbol so ranking is deterministic."""
    usable = [s for s in snapshots if _finite_positive(s.price, s.session_open) and math.isfinite(s.volume)
              and math.isfinite(s.typical_volume) and s.volume >= 0]
    ordered = sorted(usable, key=lambda s: (-score(s), s.symbol))[:top_n]
    return [
        Candidate(s.symbol, i + 1, round(score(s), 4), s.price, round(s.change_pct, 4), s.volume,
                  round(s.relative_volume, 4), s.catalyst, s.rsi)
        for i, s in enumerate(ordered)
    ]


@dataclass(frozen=True)
class EntryRules:
    min_change_pct: float = 1.0
    max_positions: int = 5
    position_size_usd: float = 1000.0
    stop_loss_pct: float = 0.05
    take_profit_pct: float = 0.15
    max_entry_rsi: float = 75.0  # never buy what the monitor would call overbought on its first check


@dataclass(frozen=True)
class EntryVerdict:
    symbol: str
    action: str  # "enter" | "skip"
    reason: str
    qty: int = 0
    stop_loss_price: float | None = None
    take_profit_price: float | None = None


def size(price: float, dollars: float) -> int:
    """Whole shares worth at most ``dollars`` (zero when one share costs more)."""
    return int(dollars // price) if price > 0 else 0


def protective_prices(price: float, stop_loss_pct: float, take_profit_pct: float) -> tuple[float, float]:
    return round(price * (1 - stop_loss_pct), 2), round(price * (1 + take_profit_pct), 2)


def evaluate(candidates: list[Candidate], held: set[str], open_count: int, halted: bool,
             rules: EntryRules) -> list[EntryVerdict]:
    """One verdict per candidate, best first; entries stop once the position limit is reached."""
    verdicts: list[EntryVerdict] = []
    slots = max(rules.max_positions - open_count, 0)
    for c in sorted(candidates, key=lambda c: c.rank):
        if halted:
            verdicts.append(EntryVerdict(c.symbol, "skip", "trading_halted"))
        elif c.symbol in held:
            verdicts.append(EntryVerdict(c.symbol, "skip", "already_held"))
        elif c.change_pct < rules.min_change_pct:
            verdicts.append(EntryVerdict(c.symbol, "skip", "momentum_too_weak"))
        elif c.rsi is not None and c.rsi >= rules.max_entry_rsi:
            verdicts.append(EntryVerdict(c.symbol, "skip", "overbought"))
        elif slots <= 0:
            verdicts.append(EntryVerdict(c.symbol, "skip", "position_limit"))
        elif (qty := size(c.price, rules.position_size_usd)) < 1:
            verdicts.append(EntryVerdict(c.symbol, "skip", "price_above_position_size"))
        else:
            stop, target = protective_prices(c.price, rules.stop_loss_pct, rules.take_profit_pct)
            verdicts.append(EntryVerdict(c.symbol, "enter", "momentum", qty, stop, target))
            slots -= 1
    return verdicts
