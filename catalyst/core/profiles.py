"""Market profiles: the exchange, its zone, and the exit-signal thresholds that suit its volatility.

Thresholds follow the US and HKEX position-monitor documents; any of them can be overridden
from configuration (``signals:`` in the YAML file, or ``CATALYST_SIGNALS`` as JSON). An
override is range-checked and the tiers of one signal must stay in order, because a wrong
threshold does not fail loudly: it changes which exits fire (``take_profit_strong: -1`` sells
every position on its first check). ``null`` switches any tier off.

A switched-off tier is stored as the infinity on its never-firing side (a stop at -inf %, an
RSI level of +inf, ...), so every comparison made against it, in exits.py, in the broker-side
trail and in the entry's RSI cap, is simply never true; :meth:`MarketProfile.thresholds`
shows it as ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from catalyst.core.domain import BadInput

INF = math.inf


@dataclass(frozen=True)
class Threshold:
    """What one threshold measures, the values that make sense for it, and its off value."""

    meaning: str  # completes "must be ...": the range and the unit, for the operator
    low: float
    high: float
    low_inclusive: bool
    high_inclusive: bool
    off: float  # the never-firing infinity that a switched-off tier holds

    def admits(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below


_LOSS = Threshold("a loss in percent of the entry price, from -0.5 down to above -100 (-3 means a 3 % loss, "
                  "not -0.03)", -100.0, -0.5, False, True, -INF)
_GAIN = Threshold("a gain in percent of the entry price, from 0.5 to 1000 (8 means 8 %, not 0.08)",
                  0.5, 1000.0, True, True, INF)
_RSI = Threshold("an overbought RSI(14) level, above 50 and at most 100", 50.0, 100.0, False, True, INF)
_VOLUME = Threshold("a ratio of recent to entry volume, above 0 and below 1", 0.0, 1.0, False, False, -INF)
_MINUTES = Threshold("minutes before the session's close, above 0 and at most 120", 0.0, 120.0, False, True, -INF)

# Every threshold a profile has. A tier "fires" when a reading reaches it; see exits.py.
THRESHOLDS: dict[str, Threshold] = {
    "stop_loss_strong": _LOSS,  # P&L % at or below
    "stop_loss_moderate": _LOSS,
    "stop_loss_weak": _LOSS,
    "take_profit_strong": _GAIN,  # P&L % at or above
    "take_profit_moderate": _GAIN,
    "rsi_strong": _RSI,  # RSI at or above
    "rsi_moderate": _RSI,
    "volume_collapse_strong": _VOLUME,  # recent / entry volume at or below
    "volume_collapse_moderate": _VOLUME,
    "trailing_stop_pct": Threshold("a distance in percent below the high-watermark, from 0.5 to below 100 "
                                   "(3 means 3 %, not 0.03)", 0.5, 100.0, True, False, INF),  # drop at or above
    "macd_hist_below": Threshold("a MACD(12,26,9) histogram level of 0 or below (a bearish reading)",
                                 -INF, 0.0, False, True, -INF),  # histogram below
    "near_close_minutes": _MINUTES,  # minutes to the close at or below
    "power_hour_from_minutes": _MINUTES,  # power hour: until < minutes to close <= from
    # Not a tier of its own: null lets the power-hour window run to the close (near_close still comes first).
    "power_hour_until_minutes": Threshold("minutes before the session's close, from 0 to below 120",
                                          0.0, 120.0, True, False, -INF),
}

# Tiers of one signal, strongest first, and which way "stronger" lies: a stronger tier fires only
# beyond a weaker one, otherwise the weaker one could never fire (or fire on a better reading).
LADDERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("stop_loss_strong", "stop_loss_moderate", "stop_loss_weak"), "below"),  # a deeper loss
    (("take_profit_strong", "take_profit_moderate"), "above"),
    (("rsi_strong", "rsi_moderate"), "above"),
    (("volume_collapse_strong", "volume_collapse_moderate"), "below"),  # less volume
    (("near_close_minutes", "power_hour_from_minutes"), "below"),  # nearer the close
    (("power_hour_until_minutes", "power_hour_from_minutes"), "below"),  # the window's two ends
)

# Names from the seeds' configuration that Catalyst reads differently, with what to write instead.
NOT_SUPPORTED = {
    "rsi_overbought": "Catalyst has two overbought tiers: rsi_strong (STRONG exit) and rsi_moderate (ask the advisor)",
    "rsi_oversold": "Catalyst manages long positions only; an oversold RSI is no exit signal",
}


@dataclass(frozen=True)
class MarketProfile:
    market: str
    calendar: str
    tz: str
    # P&L tiers in percent of entry price (negative = loss). ``None`` (stored as ±inf) disables a tier.
    stop_loss_strong: float = -5.0
    stop_loss_moderate: float = -3.0
    stop_loss_weak: float = -2.0
    take_profit_strong: float = 10.0
    take_profit_moderate: float = 6.0
    rsi_strong: float = 85.0
    rsi_moderate: float = 75.0
    volume_collapse_strong: float = 0.25  # latest bar volume / entry volume
    volume_collapse_moderate: float = 0.40
    trailing_stop_pct: float = 3.0  # percent below the high-watermark
    macd_hist_below: float = -0.5
    near_close_minutes: float = 15.0
    power_hour_from_minutes: float = 60.0  # WEAK signal between 60 and 30 minutes before the close
    power_hour_until_minutes: float = 30.0

    def __post_init__(self) -> None:
        for name, spec in THRESHOLDS.items():  # None means off: store the never-firing value
            if getattr(self, name) is None:
                object.__setattr__(self, name, spec.off)

    def thresholds(self) -> dict[str, float | None]:
        """Every threshold as configured: ``None`` where a tier is switched off."""
        return {name: None if getattr(self, name) == spec.off else getattr(self, name)
                for name, spec in THRESHOLDS.items()}

    @property
    def overbought_rsi(self) -> float:
        """The lowest RSI any active tier calls overbought (+inf when both are off): an entry's RSI cap."""
        return min(self.rsi_strong, self.rsi_moderate)

    def with_overrides(self, overrides: dict[str, object]) -> "MarketProfile":
        """This profile with ``overrides`` applied, or ``BadInput`` naming every bad threshold."""
        problems: list[str] = []
        clean: dict[str, float | None] = {}
        for key, value in overrides.items():
            problem = _check_value(str(key), value)
            if problem:
                problems.append(problem)
            else:
                clean[key] = _normalise(key, value)
        if not problems:
            problems = _order_problems({**self.thresholds(), **clean})
        if problems:
            raise BadInput("; ".join(problems))
        return replace(self, **clean)


def _shown(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(name: str, value: object) -> str | None:
    """Why ``name: value`` is refused, or ``None`` when it is fine."""
    if name in NOT_SUPPORTED:
        return f"signal threshold {name} is not supported: {NOT_SUPPORTED[name]}"
    spec = THRESHOLDS.get(name)
    if spec is None:
        return f"unknown signal threshold {name!r} (known: {', '.join(THRESHOLDS)})"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"signal threshold {name} must be a number or null, got {_shown(value)}"
    if math.isnan(value):
        return f"signal threshold {name} must be a number or null, got nan"
    if value == spec.off:
        return None  # "never", spelt as an infinity: the same as null
    if not spec.admits(value):
        return f"signal threshold {name} = {_shown(value)} is out of range: it must be {spec.meaning} " \
               "(null switches it off)"
    return None


def _normalise(name: str, value: object) -> float | None:
    return None if value is None or value == THRESHOLDS[name].off else float(value)


def _order_problems(values: dict[str, float | None]) -> list[str]:
    """Tiers that are switched on must lie strictly beyond the weaker ones of their signal."""
    problems = []
    for ladder, side in LADDERS:
        active = [(name, values[name]) for name in ladder if values[name] is not None]
        for (strong, s), (weak, w) in zip(active, active[1:]):
            if not (s < w if side == "below" else s > w):
                where = "below" if side == "below" else "above"
                problems.append(f"signal thresholds out of order: {strong} ({_shown(s)}) must lie {where} "
                                f"{weak} ({_shown(w)})")
    return problems


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


def _self_check() -> None:
    """The built-in profiles obey the rules they enforce (a wrong default would fail every start)."""
    for profile in PROFILES.values():
        if {f.name for f in fields(profile)} - {"market", "calendar", "tz"} != set(THRESHOLDS):
            raise RuntimeError("MarketProfile and THRESHOLDS disagree about which thresholds exist")
        profile.with_overrides(profile.thresholds())


_self_check()
