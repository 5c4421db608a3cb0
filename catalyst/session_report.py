"""The session report's numbers: one market day's trades, P&L, exits, scan funnel and advisor use.

Everything is read once into plain dataclasses, so the HTML page, its charts and ``--json`` show
the same figures. "The day" is the market's day (midnight to midnight in the exchange's time zone),
the same day the daily-loss guard counts: realized P&L is what positions closed that day realized.
A trade is any position held at some moment of the day (opened before it and still held counts).

Prices come from the runtime's market-data source; when it cannot give bars for a symbol (an
outage, a replay file for another day, an unknown symbol) the prices the monitor recorded in
``decisions`` and the entry and exit prices of the positions stand in, so the report never fails
for want of a chart's data. After one failure that is not "unknown symbol" the source is not asked
again (an outage would otherwise cost one timeout per symbol).

A figure the records cannot give is left out and counted as unknown, never guessed: a past day's
open position with no price that day has no unrealized P&L (today's price would be wrong for it),
and a close with neither realized P&L nor exit price has no P&L and no place in the win rate.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from catalyst.core.domain import BadInput, UnknownSymbol
from catalyst.core.risk import day_span
from catalyst.db.engine import session_scope
from catalyst.db.models import AdvisorUsage, Decision, Position, TradingCycle
from catalyst.reports import FUNNEL_STAGES

log = structlog.get_logger(__name__)

# Advisor decisions whose request never went out (monitor: fallback_cause; entry review: fallback_why).
NOT_SENT = frozenset({"no_key", "cycle_limit", "over_budget", "disabled", "consult_cap"})
MAX_BAR_MINUTES = 24 * 60  # one calendar day of minute bars at most per symbol
SEARCH_BACK_DAYS = 20  # how far back the default date looks for a session
DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")  # date.fromisoformat also takes 20261204 and 2026-W49-5


# -- the date ------------------------------------------------------------------------------------------

def report_day(rt, text: str | None) -> date:
    """The market day to report: ``text`` (YYYY-MM-DD), else the latest session that has opened (before
    today's open that is the previous session, not today's empty one). A malformed date, a future one or
    one before the calendar's first session is refused in one line."""
    now = rt.clock.now()
    today = now.astimezone(rt.calendar.tz).date()
    if text is None:
        return _latest_opened(rt.calendar, now, today)
    text = text.strip()
    try:
        if not DATE_TEXT.fullmatch(text):
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"--date {text!r} is not a date: use YYYY-MM-DD, e.g. {today.isoformat()}") from None
    if day > today:
        raise BadInput(f"--date {day.isoformat()} is after the market's today ({today.isoformat()}, "
                       f"{rt.calendar.code}): nothing has happened yet")
    first = rt.calendar.sessions[0].day if rt.calendar.sessions else today
    if day < first:
        raise BadInput(f"--date {day.isoformat()} is before the first {rt.calendar.code} session Catalyst knows "
                       f"({first.isoformat()})")
    return day


def _latest_opened(calendar, now: datetime, today: date) -> date:
    """The latest day whose session opened at or before ``now`` (``today`` when none is found close by)."""
    for back in range(SEARCH_BACK_DAYS):
        day = today - timedelta(days=back)
        session = calendar.session_on(day)
        if session is not None and session.open <= now:
            return day
    return today


# -- the records ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trade:
    """One position as the day saw it; ``pnl`` is realized when it closed that day, else unrealized at ``mark``."""

    id: int
    symbol: str
    qty: float
    status: str  # closed | open | closing (as of the end of the day)
    entry_time: datetime
    entry_price: float
    exit_time: datetime | None
    exit_price: float | None
    reason: str | None  # the exit reason when closed
    strategy: str | None  # the entry reason
    stop: float | None
    target: float | None
    pnl: float | None
    pnl_pct: float | None
    realized: bool
    mark: float | None = None  # the price an open position is valued at

    @property
    def won(self) -> bool:
        return self.realized and (self.pnl or 0.0) > 0

    @property
    def known(self) -> bool:
        """Whether the P&L is known (a close without realized P&L or exit price, or a mark without a price: not)."""
        return self.pnl is not None

    def as_dict(self, tz) -> dict[str, Any]:
        out = asdict(self)
        for key in ("entry_time", "exit_time"):
            out[key] = _iso(out[key], tz)
        for key in ("pnl", "pnl_pct"):
            out[key] = None if out[key] is None else round(out[key], 2)
        return out


@dataclass(frozen=True)
class PriceSeries:
    """One symbol's prices over the session; ``source`` names the market-data source or ``recorded``."""

    symbol: str
    source: str
    points: tuple[tuple[datetime, float], ...]
    note: str | None = None  # why the market data could not be used


@dataclass(frozen=True)
class FunnelRow:
    slot_at: datetime
    kind: str
    counts: dict[str, int]
    entered: int


@dataclass(frozen=True)
class AdvisorCall:
    """One consult of the advisor (exit or entry review), sent to the model or answered by the fallback."""

    time: datetime
    symbol: str | None
    purpose: str  # exit | entry
    source: str  # advisor | fallback
    sent: bool  # a request went out (and is charged)
    cost_usd: float
    cause: str | None  # why the fallback answered


@dataclass
class SessionReport:
    day: date
    market: str
    calendar: str
    tz: Any
    session_open: datetime | None
    session_close: datetime | None
    generated_at: datetime
    trades: list[Trade] = field(default_factory=list)
    prices: dict[str, PriceSeries] = field(default_factory=dict)
    funnel: list[FunnelRow] = field(default_factory=list)
    advisor_calls: list[AdvisorCall] = field(default_factory=list)
    advisor_ledger: dict[str, float] | None = None  # advisor_usage's row for the day

    # -- figures (all derived from the lists above) --

    @property
    def closed(self) -> list[Trade]:
        return [t for t in self.trades if t.realized]

    @property
    def span(self) -> tuple[datetime, datetime]:
        """The session (or the whole day when there was none), widened to cover every trade's times."""
        start, end = day_span(self.day, self.tz)
        lo, hi = (self.session_open, self.session_close) if self.session_open else (start, end)
        times = [t for tr in self.trades for t in (tr.entry_time, tr.exit_time) if t and start <= t < end]
        return min([lo, *times]), max([hi, *times])

    @property
    def as_of(self) -> datetime:
        """Where the day's figures stop: the end of the session, or now while it is still going on (never
        later than now, even before the session has opened)."""
        return min(max(min(self.span[1], self.generated_at), self.span[0]), self.generated_at)

    def summary(self) -> dict[str, Any]:
        """The figures freqtrade's ``profit`` and ``daily`` give: counts, P&L, win rate, best and worst.
        Closes whose P&L is unknown count as closed but not in wins, losses, win rate or P&L."""
        closed = self.closed
        known = [t for t in closed if t.known]
        pnls = [t.pnl for t in known]
        wins, losses = sum(p > 0 for p in pnls), sum(p < 0 for p in pnls)
        gross_win, gross_loss = sum(p for p in pnls if p > 0), -sum(p for p in pnls if p < 0)
        cost = sum(t.entry_price * t.qty for t in known)
        held = [t for t in self.trades if not t.realized]
        unrealized = [t.pnl for t in held if t.known]
        holds = [(t.exit_time - t.entry_time).total_seconds() / 60 for t in closed if t.exit_time]
        best = max(known, key=lambda t: t.pnl, default=None)
        worst = min(known, key=lambda t: t.pnl, default=None)
        return {
            "trades": len(self.trades), "closed": len(closed), "open": len(held),
            "wins": wins, "losses": losses, "draws": len(known) - wins - losses,
            "win_rate": round(wins / len(known), 4) if known else None,
            "realized_pnl": round(sum(pnls), 2),
            "realized_unknown": len(closed) - len(known),
            "realized_pnl_pct": round(sum(pnls) / cost * 100, 2) if cost else None,
            "unrealized_pnl": round(sum(unrealized), 2),
            "unrealized_unknown": len(held) - len(unrealized),
            "total_pnl": round(sum(pnls) + sum(unrealized), 2),
            "gross_profit": round(gross_win, 2), "gross_loss": round(gross_loss, 2),
            "profit_factor": round(gross_win / gross_loss, 2) if gross_loss else None,
            "max_drawdown": round(_max_drawdown(self.pnl_curve()), 2),
            "avg_hold_minutes": round(sum(holds) / len(holds), 1) if holds else None,
            "best_trade": {"id": best.id, "symbol": best.symbol, "pnl": round(best.pnl, 2)} if best else None,
            "worst_trade": {"id": worst.id, "symbol": worst.symbol, "pnl": round(worst.pnl, 2)} if worst else None,
        }

    def exits_by_reason(self) -> dict[str, dict[str, float]]:
        """Closed trades per exit reason: how many, and what they realized."""
        out: dict[str, dict[str, float]] = {}
        for t in sorted(self.closed, key=lambda t: t.reason or ""):
            row = out.setdefault(t.reason or "unknown", {"count": 0, "pnl": 0.0})
            row["count"] += 1
            row["pnl"] = round(row["pnl"] + (t.pnl if t.known else 0.0), 2)  # an unknown P&L is counted, not summed
        return out

    def pnl_curve(self) -> list[tuple[datetime, float]]:
        """Cumulative realized P&L: 0 at the start of the session, one step at each close."""
        start, _ = self.span
        points, total = [(start, 0.0)], 0.0
        for t in sorted((t for t in self.closed if t.known), key=lambda t: (t.exit_time, t.id)):
            total += t.pnl
            points.append((t.exit_time, round(total, 2)))
        return points

    def advisor_summary(self) -> dict[str, Any]:
        calls = self.advisor_calls
        causes: dict[str, int] = {}
        for c in calls:
            if c.cause:
                causes[c.cause] = causes.get(c.cause, 0) + 1
        return {
            "consults": len(calls), "calls": sum(c.sent for c in calls),
            "exit_consults": sum(c.purpose == "exit" for c in calls),
            "entry_reviews": sum(c.purpose == "entry" for c in calls),
            "cost_usd": round(sum(c.cost_usd for c in calls), 6),
            "fallbacks": causes,
            "ledger": self.advisor_ledger,
        }

    def as_dict(self) -> dict[str, Any]:
        tz = self.tz
        return {
            "date": self.day.isoformat(), "market": self.market, "calendar": self.calendar, "timezone": str(tz),
            "session": ({"open": _iso(self.session_open, tz), "close": _iso(self.session_close, tz)}
                        if self.session_open else None),
            "generated_at": _iso(self.generated_at, tz), "as_of": _iso(self.as_of, tz),
            "summary": self.summary(),
            "trades": [t.as_dict(tz) for t in self.trades],
            "exits_by_reason": {k: int(v["count"]) for k, v in self.exits_by_reason().items()},
            "pnl_by_reason": {k: v["pnl"] for k, v in self.exits_by_reason().items()},
            "pnl_curve": [{"time": _iso(t, tz), "realized_pnl": v} for t, v in self.pnl_curve()],
            "advisor": self.advisor_summary(),
            "funnel": [{"slot_at": _iso(r.slot_at, tz), "kind": r.kind, **{s: r.counts.get(s) for s in FUNNEL_STAGES},
                        "entered": r.entered} for r in self.funnel],
            "prices": {sym: {"source": p.source, "points": len(p.points), **({"note": p.note} if p.note else {})}
                       for sym, p in self.prices.items()},
        }


def _iso(value: datetime | None, tz) -> str | None:
    return value.astimezone(tz).isoformat() if value is not None else None


def _max_drawdown(curve: list[tuple[datetime, float]]) -> float:
    peak, worst = 0.0, 0.0
    for _, value in curve:
        peak = max(peak, value)
        worst = max(worst, peak - value)
    return worst


# -- gathering -----------------------------------------------------------------------------------------

def gather(rt, day: date, *, prices: bool = True) -> SessionReport:
    """Read ``day``'s records (and, with ``prices``, each traded symbol's prices) into a report."""
    tz = rt.calendar.tz
    start, end = day_span(day, tz)
    session = rt.calendar.session_on(day)
    now = rt.clock.now()
    with session_scope() as s:
        held_that_day = (Position.opened_at < end) & (Position.closed_at.is_(None) | (Position.closed_at >= start))
        positions = s.scalars(select(Position).where(held_that_day).order_by(Position.opened_at, Position.id)).all()
        cycles = s.scalars(select(TradingCycle).where(TradingCycle.slot_at >= start, TradingCycle.slot_at < end)
                           .order_by(TradingCycle.slot_at)).all()
        entered = _entered_per_cycle(s, [c.id for c in cycles])
        funnel = [FunnelRow(c.slot_at, c.kind, {k: int(v) for k, v in (c.funnel or {}).items()
                                                 if isinstance(v, (int, float))}, entered.get(c.id, 0)) for c in cycles]
        advisor = [_advisor_call(d) for d in s.scalars(
            select(Decision).where(Decision.kind == "advisor", Decision.decided_at >= start, Decision.decided_at < end)
            .order_by(Decision.decided_at, Decision.id))]
        ledger = s.get(AdvisorUsage, day.isoformat())
        ledger = {"spent_usd": round(ledger.spent_usd, 6), "calls": ledger.calls} if ledger else None
        recorded = _recorded_prices(s, positions, start, end) if prices else {}
    report = SessionReport(day=day, market=rt.settings.market, calendar=rt.calendar.code, tz=tz,
                           session_open=session.open if session else None,
                           session_close=session.close if session else None, generated_at=now,
                           funnel=funnel, advisor_calls=advisor, advisor_ledger=ledger)
    today = end > now
    report.trades = [_trade(p, end, {}, today) for p in positions]  # the span the prices need covers them
    if prices:
        report.prices = _price_series(rt, positions, report, recorded, now, end)
        marks = _marks(report.prices, recorded, report.as_of)
        report.trades = [_trade(p, end, marks, today) for p in positions]
    return report


def _marks(series: dict[str, PriceSeries], recorded: dict[str, list], as_of: datetime) -> dict[str, float]:
    """Each symbol's last price at or before ``as_of``: from the chart's series, else from the recorded prices
    (the monitor's checks, entries and exits). A symbol with no price by then has no mark."""
    out = {}
    for symbol, s in series.items():
        for points in (s.points, recorded.get(symbol, ())):
            before = [v for t, v in points if t <= as_of]
            if before:
                out[symbol] = before[-1]
                break
    return out


def _entered_per_cycle(s, cycle_ids: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    if cycle_ids:
        for cid in s.scalars(select(Position.cycle_id).where(Position.cycle_id.in_(cycle_ids))):
            out[cid] = out.get(cid, 0) + 1
    return out


def _trade(p: Position, end: datetime, marks: dict[str, float], today: bool) -> Trade:
    """The position as of the end of the day: closed that day (realized), or still held then (marked).

    Today a held position is valued at the monitor's last price (what the daily-loss guard uses); a past
    day's at that day's last price (a bar or a recorded price), never at today's: without one it has no mark.
    """
    if p.status == "closed" and p.closed_at is not None and p.closed_at < end:
        pnl, pct = _realized(p)
        return Trade(p.id, p.symbol, p.qty, "closed", p.opened_at, p.entry_price, p.closed_at, p.exit_price,
                     p.exit_reason, p.entry_reason, p.stop_loss_price, p.take_profit_price, pnl, pct, True)
    held_now = p.status != "closed"
    recent = p.last_price if held_now and today else None
    mark = recent or marks.get(p.symbol)
    pnl = (mark - p.entry_price) * p.qty if mark is not None else None
    pct = (mark / p.entry_price - 1) * 100 if mark is not None and p.entry_price else None
    return Trade(p.id, p.symbol, p.qty, p.status if held_now else "open", p.opened_at, p.entry_price, None, None,
                 None, p.entry_reason, p.stop_loss_price, p.take_profit_price, pnl, pct, False, mark)


def _realized(p: Position) -> tuple[float | None, float | None]:
    """What a close realized: the recorded figure, else exit minus entry when the exit price is known, else None."""
    pnl, pct = p.realized_pnl, p.realized_pnl_pct
    if pnl is None and p.exit_price is not None:
        pnl = (p.exit_price - p.entry_price) * p.qty
    if pct is None and p.exit_price is not None and p.entry_price:
        pct = (p.exit_price / p.entry_price - 1) * 100
    return pnl, pct


def _advisor_call(d: Decision) -> AdvisorCall:
    info = d.details or {}
    purpose = "entry" if info.get("review") == "entry" else "exit"
    cause = info.get("fallback_why") if purpose == "entry" else info.get("fallback_cause")
    source = str(info.get("source") or ("fallback" if cause else "advisor"))
    cost = info.get("cost_usd")
    return AdvisorCall(d.decided_at, d.symbol, purpose, source, cause not in NOT_SENT,
                       float(cost) if isinstance(cost, (int, float)) else 0.0, cause)


def _recorded_prices(s, positions: list[Position], start: datetime, end: datetime) -> dict[str, list]:
    """Prices the records hold per symbol: entries, exits and every monitor check's price."""
    out: dict[str, list[tuple[datetime, float]]] = {}
    for p in positions:
        out.setdefault(p.symbol, []).append((p.opened_at, p.entry_price))
        if p.closed_at is not None and p.exit_price is not None:
            out[p.symbol].append((p.closed_at, p.exit_price))
    symbols = list(out)
    if symbols:
        rows = s.execute(select(Decision.symbol, Decision.decided_at, Decision.details).where(
            Decision.kind == "monitor", Decision.symbol.in_(symbols), Decision.decided_at >= start,
            Decision.decided_at < end))
        for symbol, at, details in rows:
            price = (details or {}).get("price")
            if isinstance(price, (int, float)) and price > 0:
                out[symbol].append((at, float(price)))
    return {sym: sorted((t, v) for t, v in pts if start <= t < end) for sym, pts in out.items()}


def _price_series(rt, positions, report: SessionReport, recorded: dict, now: datetime, day_end: datetime) -> dict:
    """Each traded symbol's prices: the source's bars, else the recorded prices. After a failure that is not
    "unknown symbol" the source is not asked again: the remaining symbols use the recorded prices."""
    lo, hi = report.span
    hi = min(hi, now, day_end)
    out, down = {}, None
    for symbol in dict.fromkeys(p.symbol for p in positions):
        if down is None:
            points, note, failure = _bars(rt, symbol, lo, hi)
            down = failure if failure is not None and not isinstance(failure, UnknownSymbol) else None
        else:
            points, note = [], f"{rt.market_data.name} bars unavailable ({type(down).__name__}, not asked again)"
        if len(points) >= 2:
            out[symbol] = PriceSeries(symbol, rt.market_data.name, tuple(points))
        else:
            out[symbol] = PriceSeries(symbol, "recorded", tuple(recorded.get(symbol, ())),
                                      note or f"{rt.market_data.name} has no bars for the session")
    return out


def _bars(rt, symbol: str, lo: datetime, hi: datetime):
    """(closes of the source's bars in ``[lo, hi]`` each stamped at its bar's end, why there are none, the
    source's exception if it raised); never raises."""
    if hi <= lo:
        return [], "the session has not started", None
    count = min(int((hi - lo).total_seconds() // 60) + 2, MAX_BAR_MINUTES)
    try:
        bars = rt.market_data.bars(symbol, hi, count)
    except Exception as exc:  # noqa: BLE001 - any source failure falls back to the recorded prices
        log.warning("report_bars_unavailable", symbol=symbol, source=rt.market_data.name, error=type(exc).__name__)
        return [], f"{rt.market_data.name} bars unavailable ({type(exc).__name__})", exc
    step = min((b.timestamp - a.timestamp for a, b in zip(bars, bars[1:]) if b.timestamp > a.timestamp),
               default=timedelta(minutes=1))
    return [(b.timestamp + step, b.close) for b in bars if lo <= b.timestamp + step <= hi], None, None
