"""The candidate funnel: universe → filters → technicals → patterns → news → risk → top N. Pure.

The shell (:mod:`catalyst.cycles`) measures each universe symbol into an :class:`Observation`,
runs :func:`screen` (filters, technicals, patterns), fetches news for the survivors only, and
runs :func:`finish` (news, the cheap risk pre-screen, the top N). Every symbol comes out as one
:class:`FunnelRow` with the last stage it passed, why it went no further, and ``details``: the
numbers behind every verdict it got. :func:`components` and :func:`composite` recompute a row's
score from those numbers alone, and :func:`filter_rejection` / :func:`risk_rejection` its
verdicts, so every stored candidate is explainable.

Stage caps (``FunnelRules.of``) scale with the configured universe size: 35 %, 20 % and 10 % of
``scan_universe_size`` (never fewer than ``top_n``) pass filters, technicals and patterns, ranked by
the composite score so far. A 100-symbol universe therefore narrows at most 100 → 35 → 20 → 10 → 5
(news adds a boost and cuts nothing; the risk pre-screen removes only what evaluation would refuse).

Composite score = 100 × (0.35 momentum + 0.25 technical + 0.30 pattern + 0.10 news), each part 0..1:

- momentum: session, ``clamp(change% since the open × (1 + min(max(rel. volume − 1, 0), 1)) / 10)``
  (the scanner's momentum score, 10 % = full marks); pre-market, ``clamp(gap % / 10)``.
- technical: the mean of RSI (1 in 50..overbought, rising from 0 at 30 to 1 at 50, 0 when
  overbought), MACD histogram (> 0: 1, else 0) and VWAP position (above: 1, else 0); unknown = 0.5.
- pattern: the best pattern's score (:mod:`catalyst.core.patterns`).
- news: 1 with a headline no older than ``news_max_age_hours``, else 0.

Unknowns: a symbol without a previous close passes the gap filter in session (gap unknown, stored
as null) but not pre-market, where the gap is what ranks; relative volume falls back from "today's
volume vs the same minutes of up to 3 previous sessions" to "the last 15 minutes' pace vs today's
average" when no previous session is known (the basis is stored).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from catalyst.core import patterns
from catalyst.core.domain import Bar
from catalyst.core.indicators import compute as compute_indicators
from catalyst.core.news import NewsItem, verdict as news_verdict

UNIVERSE, FILTERS, TECHNICALS, PATTERNS, NEWS, RISK, SELECTED = (
    "universe", "filters", "technicals", "patterns", "news", "risk", "selected")
SESSION_STAGES = (UNIVERSE, FILTERS, TECHNICALS, PATTERNS, NEWS, RISK, SELECTED)
PREMARKET_STAGES = (UNIVERSE, FILTERS, NEWS, RISK, SELECTED)
SESSION, PREMARKET = "session", "premarket"

WEIGHTS = {"momentum": 0.35, "technical": 0.25, "pattern": 0.30, "news": 0.10}
FILTERS_SHARE, TECHNICALS_SHARE, PATTERNS_SHARE = 0.35, 0.20, 0.10
PACE_BARS = 15  # the fallback relative volume: the last 15 minutes' pace vs today's average
PREVIOUS_SESSIONS = 3  # relative volume: today vs the same minutes of up to this many sessions


@dataclass(frozen=True)
class FunnelRules:
    min_price: float = 5.0
    max_price: float = 1000.0
    min_dollar_volume: float = 1_000_000.0
    min_relative_volume: float = 1.0
    min_gap_pct: float = 0.0
    max_gap_pct: float = 25.0
    top_n: int = 5
    filters_cap: int = 35
    technicals_cap: int = 20
    patterns_cap: int = 10
    max_entry_rsi: float | None = 75.0  # the lowest active overbought tier; None: no RSI screen
    min_change_pct: float = 1.0  # evaluation's momentum screen (scanner.EntryRules), session cycles only
    news_max_age_minutes: float = 24 * 60.0
    rsi_trusted_bars: int = 60

    @classmethod
    def of(cls, settings: Any, max_entry_rsi: float | None, rsi_trusted_bars: int = 60,
           min_change_pct: float = 1.0) -> FunnelRules:
        filters, technicals, pats = stage_caps(settings.scan_universe_size, settings.scan_top_n)
        if max_entry_rsi is not None and not math.isfinite(max_entry_rsi):
            max_entry_rsi = None  # every overbought tier is switched off
        return cls(settings.scan_min_price, settings.scan_max_price, settings.scan_min_dollar_volume,
                   settings.scan_min_relative_volume, settings.scan_min_gap_pct, settings.scan_max_gap_pct,
                   settings.scan_top_n, filters, technicals, pats, max_entry_rsi, min_change_pct,
                   settings.news_max_age_hours * 60.0, rsi_trusted_bars)


def stage_caps(universe_size: int, top_n: int) -> tuple[int, int, int]:
    """How many pass filters, technicals and patterns: 35 / 20 / 10 % of the universe, at least top N."""
    return tuple(max(math.ceil(universe_size * share - 1e-9), top_n)
                 for share in (FILTERS_SHARE, TECHNICALS_SHARE, PATTERNS_SHARE))  # type: ignore[return-value]


@dataclass(frozen=True)
class Observation:
    """What the shell measured for one symbol: its price now and its recent minute bars."""

    symbol: str
    price: float | None  # latest price (pre-market: the latest pre-market price); None = no quote
    history: tuple[Bar, ...] = ()  # completed bars, ascending: previous sessions, then today's
    session_open_at: datetime | None = None  # None for a pre-market scan
    tradable: bool = True
    previous_close: float | None = None  # the source's own previous close; else the last bar before today's


@dataclass
class FunnelRow:
    symbol: str
    stage: str = UNIVERSE
    rejected_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    rank: int | None = None
    price: float = 0.0
    change_pct: float = 0.0
    volume: float = 0.0
    relative_volume: float = 0.0
    rsi: float | None = None
    catalyst: str | None = None
    strategy: str = patterns.NO_PATTERN
    today: tuple[Bar, ...] = field(default=(), repr=False)
    history: tuple[Bar, ...] = field(default=(), repr=False)


@dataclass
class Funnel:
    kind: str
    rows: list[FunnelRow]

    @property
    def stages(self) -> tuple[str, ...]:
        return PREMARKET_STAGES if self.kind == PREMARKET else SESSION_STAGES

    def counts(self) -> dict[str, int]:
        """Symbols that passed each stage, in funnel order."""
        order = {s: i for i, s in enumerate(SESSION_STAGES)}
        return {stage: sum(1 for r in self.rows if order[r.stage] >= order[stage]) for stage in self.stages}

    def selected(self) -> list[FunnelRow]:
        return sorted((r for r in self.rows if r.stage == SELECTED), key=lambda r: r.rank)

    def alive(self, stage: str) -> list[FunnelRow]:
        return [r for r in self.rows if r.stage == stage and r.rejected_reason is None]


# -- measuring ---------------------------------------------------------------------------------------

def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _r(x: float | None, digits: int = 4) -> float | None:
    return round(float(x), digits) if _finite(x) else None


def _split(history: Sequence[Bar], session_open_at: datetime | None) -> tuple[list[Bar], list[Bar]]:
    if session_open_at is None:
        return [], list(history)
    today = [b for b in history if b.timestamp >= session_open_at]
    return today, [b for b in history if b.timestamp < session_open_at]


def _sessions_by_day(bars: Iterable[Bar], tz: ZoneInfo) -> list[list[Bar]]:
    days: dict[Any, list[Bar]] = {}
    for b in bars:
        days.setdefault(b.timestamp.astimezone(tz).date(), []).append(b)
    return [days[d] for d in sorted(days)]


def relative_volume(today: list[Bar], previous: list[Bar], tz: ZoneInfo) -> tuple[float, str]:
    """Today's volume against the same number of minutes of recent sessions (or, lacking any, its own pace)."""
    volume = sum(b.volume for b in today)
    k = len(today)
    spans = [sum(b.volume for b in day[:k]) for day in _sessions_by_day(previous, tz)[-PREVIOUS_SESSIONS:]
             if len(day) >= k]
    spans = [v for v in spans if v > 0]
    if spans:
        return volume / (sum(spans) / len(spans)), "previous_sessions"
    recent = sum(b.volume for b in today[-PACE_BARS:])
    typical = volume / k * min(k, PACE_BARS) if k else 0.0
    return (recent / typical if typical > 0 else 0.0), "session_pace"


def measure(obs: Observation, tz: ZoneInfo) -> dict[str, Any]:
    """The numbers the filters judge (stored as ``details["filters"]``)."""
    today, previous = _split(obs.history, obs.session_open_at)
    prev_close = obs.previous_close if _finite(obs.previous_close) and obs.previous_close > 0 else (
        previous[-1].close if previous else None)
    # The price as observed, unrounded: 4.99996 must not pass a 5.00 minimum by rounding.
    m: dict[str, Any] = {"price": float(obs.price) if _finite(obs.price) else None, "previous_close": _r(prev_close),
                         "tradable": obs.tradable}
    if obs.session_open_at is None:  # pre-market: the gap is the latest price against the previous close
        m["gap_pct"] = _r((obs.price / prev_close - 1) * 100) if _finite(obs.price) and prev_close else None
        return m
    session_open = today[0].open if today else None
    rv, basis = relative_volume(today, previous, tz) if today else (None, None)
    m.update({
        "session_bars": len(today), "session_open": _r(session_open),
        "gap_pct": _r((session_open / prev_close - 1) * 100) if session_open and prev_close else None,
        "change_pct": _r((obs.price / session_open - 1) * 100) if session_open and _finite(obs.price) else None,
        "volume": _r(sum(b.volume for b in today), 2),
        "dollar_volume": _r(sum(b.close * b.volume for b in today), 2),
        "relative_volume": _r(rv), "relative_volume_basis": basis,
    })
    return m


# -- verdicts (each recomputable from the stored numbers) ---------------------------------------------

def filter_rejection(values: dict[str, Any], rules: FunnelRules, kind: str = SESSION) -> str | None:
    """Why ``values`` (a row's ``details["filters"]``) fail the filters, or ``None``; price first, always."""
    price = values.get("price")
    if not values.get("tradable", True) or not _finite(price) or price <= 0:
        return "not_tradable"
    if price < rules.min_price:
        return "price_below_minimum"
    if price > rules.max_price:
        return "price_above_maximum"
    gap = values.get("gap_pct")
    if kind == SESSION:
        if not values.get("session_bars"):
            return "no_session_bars"
        if not _finite(values.get("dollar_volume")) or values["dollar_volume"] < rules.min_dollar_volume:
            return "dollar_volume_too_low"
        if not _finite(values.get("relative_volume")) or values["relative_volume"] < rules.min_relative_volume:
            return "relative_volume_too_low"
        if not _finite(values.get("change_pct")):
            return "not_tradable"
    elif gap is None:
        return "gap_unknown"
    if gap is not None and gap < rules.min_gap_pct:
        return "gap_below_minimum"
    if gap is not None and gap > rules.max_gap_pct:
        return "gap_above_maximum"
    return None


def risk_rejection(values: dict[str, Any], rules: FunnelRules, kind: str = SESSION) -> str | None:
    """The cheap pre-screen (``details["risk"]``): what evaluation would refuse anyway."""
    if values.get("held"):
        return "already_held"
    if kind == SESSION:
        rsi = values.get("rsi")
        if rules.max_entry_rsi is not None and _finite(rsi) and rsi >= rules.max_entry_rsi:
            return "overbought"
        change = values.get("change_pct")
        if not _finite(change) or change < rules.min_change_pct:
            return "momentum_too_weak"
    return None


def _clamp01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def momentum_part(filters: dict[str, Any], kind: str) -> float:
    if kind == PREMARKET:
        gap = filters.get("gap_pct")
        return round(_clamp01(gap / 10.0), 4) if _finite(gap) else 0.0
    change, rv = filters.get("change_pct"), filters.get("relative_volume")
    if not _finite(change):
        return 0.0
    boost = 1.0 + min(max((rv if _finite(rv) else 0.0) - 1.0, 0.0), 1.0)
    return round(_clamp01(change * boost / 10.0), 4)


def technical_part(tech: dict[str, Any], rules: FunnelRules) -> float:
    rsi, hist, above = tech.get("rsi"), tech.get("macd_hist"), tech.get("above_vwap")
    cap = rules.max_entry_rsi if rules.max_entry_rsi is not None else 100.0
    if not _finite(rsi):
        rsi_part = 0.5
    elif rsi >= cap:
        rsi_part = 0.0
    else:
        rsi_part = _clamp01((rsi - 30.0) / 20.0)
    macd_part = 0.5 if not _finite(hist) else (1.0 if hist > 0 else 0.0)
    vwap_part = 0.5 if above is None else (1.0 if above else 0.0)
    return round((rsi_part + macd_part + vwap_part) / 3.0, 4)


def components(details: dict[str, Any], rules: FunnelRules, kind: str = SESSION) -> dict[str, float]:
    """The score's parts, from the stored numbers alone (a stage not reached contributes nothing)."""
    out = {"momentum": momentum_part(details.get(FILTERS, {}), kind)}
    if TECHNICALS in details:
        out["technical"] = technical_part(details[TECHNICALS], rules)
    if PATTERNS in details:
        out["pattern"] = max((p["score"] for p in details[PATTERNS].values()), default=0.0)
    if NEWS in details:
        out["news"] = 1.0 if details[NEWS].get("fresh") else 0.0
    return out


def composite(parts: dict[str, float]) -> float:
    return round(100.0 * sum(WEIGHTS[k] * v for k, v in parts.items()), 4)


# -- the stages --------------------------------------------------------------------------------------

def _rescore(row: FunnelRow, rules: FunnelRules, kind: str) -> None:
    parts = components(row.details, rules, kind)
    row.details["components"] = parts
    row.score = composite(parts)


def _cut(rows: list[FunnelRow], stage: str, cap: int | None, reason: str) -> list[FunnelRow]:
    """Best ``cap`` rows pass ``stage`` (score, then symbol); the rest stay behind with ``reason``."""
    ordered = sorted(rows, key=lambda r: (-r.score, r.symbol))
    for position, row in enumerate(ordered, 1):
        row.details.setdefault("positions", {})[stage] = position
        if cap is not None and position > cap:
            row.rejected_reason = reason
            row.details["cut"] = {"stage": stage, "cap": cap, "position": position, "score": row.score}
        else:
            row.stage = stage
    return [r for r in ordered if r.stage == stage]


def screen(observations: Sequence[Observation], rules: FunnelRules, tz: str, kind: str = SESSION) -> Funnel:
    """Universe → filters → technicals → patterns (pre-market: universe → filters)."""
    zone = ZoneInfo(tz)
    rows = []
    for obs in observations:
        row = FunnelRow(obs.symbol)
        values = measure(obs, zone)
        row.details[FILTERS] = values
        row.today, _ = _split(obs.history, obs.session_open_at)
        row.history = tuple(obs.history)
        row.price = values["price"] if _finite(values["price"]) else 0.0
        row.change_pct = (values.get("change_pct") if kind == SESSION else values.get("gap_pct")) or 0.0
        row.volume = values.get("volume") or 0.0
        row.relative_volume = values.get("relative_volume") or 0.0
        _rescore(row, rules, kind)
        row.rejected_reason = filter_rejection(values, rules, kind)
        rows.append(row)
    alive = _cut([r for r in rows if r.rejected_reason is None], FILTERS, rules.filters_cap, "below_filters_cut")
    if kind == PREMARKET:
        return Funnel(kind, rows)
    for row in alive:
        if _judged(row, TECHNICALS, lambda: technicals(row, rules, tz)):
            row.rsi = row.details[TECHNICALS]["rsi"]
            _rescore(row, rules, kind)
    alive = _cut([r for r in alive if r.rejected_reason is None], TECHNICALS, rules.technicals_cap,
                 "below_technicals_cut")
    for row in alive:
        found = []
        if _judged(row, PATTERNS, lambda: {p.name: p.as_dict() for p in found}, found=found):
            row.strategy = patterns.strategy(found)
            row.details["strategy"] = row.strategy
            _rescore(row, rules, kind)
    _cut([r for r in alive if r.rejected_reason is None], PATTERNS, rules.patterns_cap, "below_patterns_cut")
    return Funnel(kind, rows)


def _judged(row: FunnelRow, stage: str, measure_stage, found: list | None = None) -> bool:
    """Store ``stage``'s numbers for ``row``; bars that cannot be measured (a zero low, a NaN high, a
    duplicate timestamp) reject that one symbol as ``bad_data`` instead of failing the whole scan."""
    try:
        if found is not None:
            found.extend(patterns.detect(list(row.today)))
        row.details[stage] = measure_stage()
    except Exception as exc:  # noqa: BLE001 - one symbol's bad data is that symbol's problem
        row.details[stage] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        row.rejected_reason = "bad_data"
        return False
    return True


def technicals(row: FunnelRow, rules: FunnelRules, tz: str, bars: int = 200) -> dict[str, Any]:
    """RSI (only when enough bars to trust it, like the monitor), MACD, VWAP position and ATR."""
    ind = compute_indicators(list(row.history[-bars:]), tz)
    vwap = ind.vwap if row.today else None  # the VWAP of a previous session says nothing about today
    rsi = ind.rsi if ind.bars >= rules.rsi_trusted_bars else None
    return {"bars": ind.bars, "rsi": _r(rsi), "macd": _r(ind.macd), "macd_signal": _r(ind.macd_signal),
            "macd_hist": _r(ind.macd_hist), "vwap": _r(vwap), "atr": _r(ind.atr),
            "above_vwap": (row.price > vwap) if _finite(vwap) else None,
            "vwap_distance_pct": _r((row.price / vwap - 1) * 100) if _finite(vwap) and vwap > 0 else None}


def news_candidates(funnel: Funnel) -> list[str]:
    """The symbols whose news the next stage needs (only those still in the funnel)."""
    before = PATTERNS if funnel.kind == SESSION else FILTERS
    return sorted(r.symbol for r in funnel.alive(before))


def finish(funnel: Funnel, news: dict[str, list[NewsItem]] | None, held: Iterable[str], now: datetime,
           rules: FunnelRules) -> Funnel:
    """News (a boost; ``None`` when the news source failed), the risk pre-screen, then the top N."""
    kind = funnel.kind
    held = set(held)
    before = PATTERNS if kind == SESSION else FILTERS
    alive = funnel.alive(before)
    for row in alive:
        if news is None:
            row.details[NEWS] = {"headline": None, "age_minutes": None, "fresh": False, "unavailable": True}
        else:
            row.details[NEWS] = news_verdict(news.get(row.symbol, []), now, rules.news_max_age_minutes)
        row.catalyst = row.details[NEWS]["headline"] if row.details[NEWS]["fresh"] else None
        row.stage = NEWS
        _rescore(row, rules, kind)
    survivors = []
    for row in alive:
        values = {"held": row.symbol in held, "rsi": row.rsi, "change_pct": row.details[FILTERS].get("change_pct"),
                  "max_entry_rsi": rules.max_entry_rsi}
        if kind == SESSION:
            values["min_change_pct"] = rules.min_change_pct
        row.details[RISK] = values
        row.rejected_reason = risk_rejection(values, rules, kind)
        if row.rejected_reason is None:
            row.stage = RISK
            survivors.append(row)
    chosen = _cut(survivors, SELECTED, rules.top_n, "below_top_n")
    for rank, row in enumerate(chosen, 1):
        row.rank = rank
    return funnel
