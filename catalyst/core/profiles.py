"""Market profiles: the exchange, its zone, and the exit-signal thresholds that suit its volatility.

Thresholds follow the US and HKEX position-monitor documents; any of them can be overridden
from configuration (``signals:`` in the YAML file, or ``CATALYST_SIGNALS`` as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from catalyst.core.domain import BadInput


@dataclass(frozen=True)
class MarketProfile:
    market: str
    calendar: str
    tz: str
    # P&L tiers in percent of entry price (negative = loss). ``None`` disables a tier.
    stop_loss_strong: float = -5.0
    stop_loss_moderate: float | None = -3.0
    stop_loss_weak: float | None = -2.0
    take_profit_strong: float = 10.0
    take_profit_moderate: float | None = 6.0
    rsi_strong: float = 85.0
    rsi_moderate: float = 75.0
    volume_collapse_strong: float = 0.25  # latest bar volume / entry volume
    volume_collapse_moderate: float = 0.40
    trailing_stop_pct: float = 3.0  # percent below the high-watermark
    macd_hist_below: float = -0.5
    near_close_minutes: float = 15.0
    power_hour_from_minutes: float = 60.0  # WEAK signal between 60 and 30 minutes before the close
    power_hour_until_minutes: float = 30.0

    def with_overrides(self, overrides: dict[str, float | None]) -> "MarketProfile":
        known = {f.name for f in fields(self)} - {"market", "calendar", "tz"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BadInput(f"unknown signal thresholds: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        clean = {}
        for key, value in overrides.items():
            if value is not None and not isinstance(value, (int, float)):
                raise BadInput(f"signal threshold {key} must be a number, got {value!r}")
            clean[key] = None if value is None else float(value)
        return replace(self, **clean)


PROFILES = {
    "US": MarketProfile("US", "XNYS", "America/New_York"),
    "HK": MarketProfile(
        "HK", "XHKG", "Asia/Hong_Kong", stop_loss_strong=-3.0, stop_loss_moderate=-2.0, stop_loss_weak=None,
        take_profit_strong=8.0, take_profit_moderate=5.0, trailing_stop_pct=2.0,
    ),
}


def profile_for(market: str, overrides: dict | None = None) -> MarketProfile:
    if market not in PROFILES:
        raise BadInput(f"unknown market {market!r}; expected one of {', '.join(PROFILES)}")
    return PROFILES[market].with_overrides(overrides or {})
