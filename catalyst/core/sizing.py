"""Position sizing: how many whole shares a planned entry buys, and where its stop and target go.

Three modes (``sizing`` setting):

- ``fixed``: ``position_size_usd`` worth of shares;
- ``equity_pct``: ``equity_pct`` of the broker's equity;
- ``atr_risk``: ``risk_per_trade_usd`` lost if the stop is hit, qty = risk ÷ (entry − stop).

Stop and target come from ``stop_loss_pct``/``take_profit_pct``, or from multiples of the ATR
when ``atr_stop_multiple``/``atr_target_multiple`` are set. Shares are whole (rounded down), and
never worth more than the maximum position value, so a plan never asks for what the risk check
refuses. A plan that buys no whole share, or that needs a number nobody knows (equity, ATR),
is a :class:`~catalyst.core.risk.Refusal`, never an order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from catalyst.core.risk import Refusal

MODES = ("fixed", "equity_pct", "atr_risk")


@dataclass(frozen=True)
class SizingRules:
    mode: str = "fixed"
    position_size_usd: float = 1000.0
    equity_pct: float = 0.02
    risk_per_trade_usd: float = 100.0
    stop_loss_pct: float = 0.05
    take_profit_pct: float = 0.15
    atr_stop_multiple: float | None = None
    atr_target_multiple: float | None = None
    max_position_value_usd: float | None = None  # a cap on what the mode buys

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sizing mode {self.mode!r} is not one of {', '.join(MODES)}")

    @classmethod
    def of(cls, settings) -> "SizingRules":
        """The rules named by a settings object (anything with these attributes)."""
        return cls(mode=settings.sizing, position_size_usd=settings.position_size_usd,
                   equity_pct=settings.equity_pct, risk_per_trade_usd=settings.risk_per_trade_usd,
                   stop_loss_pct=settings.stop_loss_pct, take_profit_pct=settings.take_profit_pct,
                   atr_stop_multiple=settings.atr_stop_multiple, atr_target_multiple=settings.atr_target_multiple,
                   max_position_value_usd=settings.max_position_value_usd)

    @property
    def needs_atr(self) -> bool:
        return self.atr_stop_multiple is not None or self.atr_target_multiple is not None

    @property
    def needs_equity(self) -> bool:
        return self.mode == "equity_pct"


@dataclass(frozen=True)
class Plan:
    """Whole shares, stop and target of one planned entry, and the numbers they came from."""

    qty: int
    stop: float
    target: float
    mode: str
    budget_usd: float  # what the mode allots: dollars to spend (fixed, equity_pct) or to risk (atr_risk)
    capped: bool = False  # cut to the maximum position value
    atr: float | None = None
    equity: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def protective_prices(price: float, rules: SizingRules, atr: float | None = None) -> tuple[float, float] | Refusal:
    """Stop below and target above ``price``, in cents: ATR multiples where set, percentages otherwise."""
    if not _finite_positive(price):
        return Refusal("bad_price", f"price {price!r} is not a number above zero")
    if rules.needs_atr and not _finite_positive(atr):
        return Refusal("atr_unknown", f"no usable ATR ({atr!r}) for an ATR stop or target at {price:g}")
    stop = price - rules.atr_stop_multiple * atr if rules.atr_stop_multiple is not None \
        else price * (1 - rules.stop_loss_pct)
    target = price + rules.atr_target_multiple * atr if rules.atr_target_multiple is not None \
        else price * (1 + rules.take_profit_pct)
    stop, target = round(stop, 2), round(target, 2)
    if stop <= 0:
        return Refusal("stop_below_zero", f"a stop {rules.atr_stop_multiple:g} ATR ({atr:g}) below {price:g} "
                                          "is at or below zero")
    if stop >= price:
        return Refusal("stop_too_close", f"stop {stop:g} rounds to the price {price:g} or above: "
                                         "it would fire at once")
    if target <= price:
        return Refusal("target_too_close", f"target {target:g} rounds to the price {price:g} or below")
    return stop, target


def plan(symbol: str, price: float, rules: SizingRules, *, equity: float | None = None,
         atr: float | None = None) -> Plan | Refusal:
    """Size one entry at ``price``; whole shares, rounded down, within the maximum position value."""
    prices = protective_prices(price, rules, atr)
    if isinstance(prices, Refusal):
        return Refusal(prices.reason, f"{symbol}: {prices.message}")
    stop, target = prices
    if rules.mode == "fixed":
        budget = rules.position_size_usd
        qty = whole(budget / price)
    elif rules.mode == "equity_pct":
        if not _finite_positive(equity):
            return Refusal("equity_unknown", f"{symbol}: broker equity unknown ({equity!r}): "
                                             "percent-of-equity sizing cannot size the entry")
        budget = equity * rules.equity_pct
        qty = whole(budget / price)
    else:
        budget = rules.risk_per_trade_usd
        qty = whole(budget / (price - stop))
    capped = False
    cap = rules.max_position_value_usd
    if cap is not None and qty * price > cap:
        qty, capped = whole(cap / price), True
    if qty < 1:
        allotted = f"${budget:,.2f} to risk at {price - stop:.2f} a share" if rules.mode == "atr_risk" \
            else f"${budget:,.2f}"
        capped_at = f", capped at ${cap:,.2f}" if capped else ""
        return Refusal("zero_shares", f"{symbol}: {rules.mode} sizing buys no whole share at {price:g} "
                                      f"(it allots {allotted}{capped_at}): no order")
    return Plan(qty, stop, target, rules.mode, round(budget, 2), capped, atr, equity)


def whole(shares: float) -> int:
    """Whole shares, rounded down; a quotient a rounding error short of an integer counts as that integer."""
    if not math.isfinite(shares) or shares <= 0:
        return 0
    return int(math.floor(round(shares, 9)))


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
