"""Trading cycles: scan the universe into ``scan_results``, then evaluate them into planned entries.

Evaluation screens each candidate (trading state, symbol held, momentum, RSI, position limit),
sizes the survivors (:mod:`catalyst.core.sizing`: whole shares, stop and target) and runs the
same pre-trade risk checks admission will run (:mod:`catalyst.core.risk`), against the book plus
the entries already planned in this cycle. Every verdict lands in ``decisions``. Admission checks
again under the entry gate when each entry is sent: the plan is advice, the gate is the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, ScanResult, Security, TradingCycle
from catalyst.entries import book_snapshot, entry_client_order_id, sector_of
from catalyst.records import record_decision, security_id
from catalyst.runtime import Runtime
from catalyst.core import risk, sizing
from catalyst.core.domain import BadInput
from catalyst.core.indicators import compute as compute_indicators
from catalyst.monitor import INDICATOR_BARS, RSI_TRUSTED_BARS
from catalyst.core.scanner import Candidate, EntryRules, Snapshot, evaluate, rank

log = structlog.get_logger("catalyst.cycles")
RECENT_BARS = 15


@dataclass(frozen=True)
class PlannedEntry:
    cycle_id: int
    symbol: str
    qty: int
    stop_loss_price: float
    take_profit_price: float
    client_order_id: str


def snapshot(rt: Runtime, symbol: str, now: datetime) -> Snapshot | None:
    """Price, move since today's open and recent volume pace for one symbol (``None`` if unknown today)."""
    session = rt.calendar.session_at(now)
    quote = rt.market_data.quote(symbol, now)
    if session is None or quote is None:
        return None
    history = rt.market_data.bars(symbol, now, INDICATOR_BARS)
    today = [b for b in history if b.timestamp >= session.open]
    if not today:
        return None
    volume = sum(b.volume for b in today[-RECENT_BARS:])
    typical = sum(b.volume for b in today) / len(today) * min(len(today), RECENT_BARS)
    indicators = compute_indicators(history, str(rt.calendar.tz))
    rsi = indicators.rsi if indicators.bars >= RSI_TRUSTED_BARS else None
    headline = rt.market_data.catalyst(symbol) if hasattr(rt.market_data, "catalyst") else None
    return Snapshot(symbol, quote.price, today[0].open, volume, typical, headline, rsi)


def scan(rt: Runtime, slot_at: datetime) -> int:
    """Rank the universe once for ``slot_at``; a repeated scan of the same slot returns the same cycle."""
    with session_scope() as s:
        existing = s.scalar(select(TradingCycle.id).where(TradingCycle.slot_at == slot_at))
        if existing is not None:
            return existing
    now = rt.clock.now()
    md = rt.market_data
    universe = md.scan_universe() if hasattr(md, "scan_universe") else md.symbols()
    if hasattr(md, "prefetch"):
        md.prefetch(universe, now)  # one batched snapshot call per 100 symbols, not one per symbol
    snapshots = [snap for sym in universe if (snap := snapshot(rt, sym, now)) is not None]
    candidates = rank(snapshots, rt.settings.scan_top_n)
    try:
        with session_scope() as s:
            cycle = TradingCycle(slot_at=slot_at, market=rt.settings.market, status="scanned",
                                 candidates=len(candidates), started_at=now, finished_at=rt.clock.now())
            s.add(cycle)
            s.flush()
            for c in candidates:
                security = security_id(s, c.symbol, rt.calendar.code, sector_of(rt, c.symbol))
                s.add(ScanResult(cycle_id=cycle.id, security_id=security, symbol=c.symbol, rank=c.rank, score=c.score,
                                 price=c.price, change_pct=c.change_pct, volume=c.volume,
                                 relative_volume=c.relative_volume, rsi=c.rsi, catalyst=c.catalyst, created_at=now))
            cycle_id = cycle.id
    except IntegrityError:  # another worker scanned this slot concurrently
        with session_scope() as s:
            return s.scalar(select(TradingCycle.id).where(TradingCycle.slot_at == slot_at))
    log.info("market_scanned", cycle_id=cycle_id, slot_at=slot_at.isoformat(), universe=len(snapshots),
             candidates=[c.symbol for c in candidates])
    return cycle_id


@dataclass(frozen=True)
class _Verdict:
    symbol: str
    action: str  # enter | skip
    reason: str
    details: dict


def evaluate_cycle(rt: Runtime, cycle_id: int, worker: str | None = None) -> list[PlannedEntry]:
    """Decide which candidates of a cycle to enter, and how many shares; re-evaluating repeats the first answer."""
    now = rt.clock.now()
    with session_scope() as s:
        if s.get(TradingCycle, cycle_id) is None:
            raise BadInput(f"unknown trading cycle id {cycle_id}")
        answer = _previous_answer(s, cycle_id)
        if answer is not None:
            return answer
        rows = s.execute(select(ScanResult, Security.sector).outerjoin(Security, Security.id == ScanResult.security_id)
                         .where(ScanResult.cycle_id == cycle_id).order_by(ScanResult.rank)).all()
        candidates = [(Candidate(r.symbol, r.rank, r.score, r.price, r.change_pct, r.volume, r.relative_volume,
                                 r.catalyst, r.rsi), sector_of(rt, r.symbol) or sector) for r, sector in rows]
        book = book_snapshot(s, rt, now)  # entries still in flight count as held, for every limit
    verdicts = _judge(rt, candidates, book, now)  # equity and ATR are read here, outside any transaction
    with session_scope() as s:
        answer = _previous_answer(s, cycle_id)
        if answer is not None:  # a concurrent evaluation of this cycle answered first
            return answer
        for v in verdicts:
            record_decision(s, kind="evaluate", action=v.action, reason=v.reason, symbol=v.symbol, cycle_id=cycle_id,
                            decided_at=now, worker=worker, details=v.details)
        s.get(TradingCycle, cycle_id).status = "evaluated"
    planned = [_planned(cycle_id, v.symbol, v.details) for v in verdicts if v.action == "enter"]
    log.info("candidates_evaluated", cycle_id=cycle_id, entries={p.symbol: p.qty for p in planned},
             skipped={v.symbol: v.reason for v in verdicts if v.action == "skip"})
    return planned


def _previous_answer(s, cycle_id: int) -> list[PlannedEntry] | None:
    previous = s.scalars(select(Decision).where(Decision.cycle_id == cycle_id, Decision.kind == "evaluate")
                         .order_by(Decision.id)).all()
    if not previous:
        return None
    return [_planned(cycle_id, d.symbol, d.details) for d in previous if d.action == "enter"]


def _judge(rt: Runtime, candidates: list[tuple[Candidate, str | None]], book: risk.Book,
           now: datetime) -> list[_Verdict]:
    """One verdict per candidate, best rank first: screened, sized, then risk-checked against the book
    plus the entries planned before it."""
    settings = rt.settings
    screen = EntryRules(max_positions=settings.max_positions, position_size_usd=settings.position_size_usd,
                        stop_loss_pct=settings.stop_loss_pct, take_profit_pct=settings.take_profit_pct,
                        max_entry_rsi=rt.profile.overbought_rsi)
    rules, limits = sizing.SizingRules.of(settings), risk.Limits.of(settings)
    market = _SizingInputs(rt, now, rules)
    verdicts = []
    for c, sector in sorted(candidates, key=lambda item: item[0].rank):
        if not settings.auto_entries:
            verdicts.append(_Verdict(c.symbol, "skip", "auto_entries_off", {}))
            continue
        if book.state is not risk.TradingState.ACTIVE:
            verdicts.append(_Verdict(c.symbol, "skip", f"trading_{book.state.value.lower()}",
                                     {"state_reason": book.state_reason}))
            continue
        # The scanner's screen (symbol, momentum, RSI, slots); sizing is ours, so one share always "fits" it.
        (screened,) = evaluate([c], set(book.symbols), book.count, False, replace(screen, position_size_usd=c.price))
        if screened.action != "enter":
            verdicts.append(_Verdict(c.symbol, "skip", screened.reason, {}))
            continue
        plan = sizing.plan(c.symbol, c.price, rules, equity=market.equity(), atr=market.atr(c.symbol))
        if isinstance(plan, risk.Refusal):
            verdicts.append(_Verdict(c.symbol, "skip", plan.reason, {"message": plan.message}))
            continue
        entry = risk.Entry(c.symbol, plan.qty, c.price, plan.stop, plan.target, sector)
        details = {"qty": plan.qty, "stop": plan.stop, "target": plan.target, "price": c.price, "sector": sector,
                   "sizing": plan.as_dict()}
        refusals = risk.check_entry(entry, book, limits)
        if refusals:
            verdicts.append(_Verdict(c.symbol, "skip", refusals[0].reason, {
                **details, "refusals": [{"reason": r.reason, "message": r.message} for r in refusals]}))
            continue
        verdicts.append(_Verdict(c.symbol, "enter", "momentum", details))
        book = book.with_entry(entry)
    return verdicts


class _SizingInputs:
    """Broker equity and per-symbol ATR, read only when the sizing rules need them, at most once each.

    A failed read is ``None``: sizing then refuses that entry with the reason, it never guesses.
    """

    def __init__(self, rt: Runtime, now: datetime, rules: sizing.SizingRules):
        self.rt, self.now, self.rules = rt, now, rules
        self._equity: tuple[float | None] | None = None

    def equity(self) -> float | None:
        if not self.rules.needs_equity:
            return None
        if self._equity is None:
            try:
                self._equity = (float(self.rt.broker.equity()),)
            except Exception as exc:  # noqa: BLE001 - no equity, no percent-of-equity entries this cycle
                log.warning("equity_unknown", broker=getattr(self.rt.broker, "name", "?"), error=str(exc))
                self._equity = (None,)
        return self._equity[0]

    def atr(self, symbol: str) -> float | None:
        if not self.rules.needs_atr:
            return None
        try:
            bars = self.rt.market_data.bars(symbol, self.now, INDICATOR_BARS)
            return compute_indicators(bars, str(self.rt.calendar.tz)).atr
        except Exception as exc:  # noqa: BLE001 - no ATR, no ATR-based entry in this symbol
            log.warning("atr_unknown", symbol=symbol, error=str(exc))
            return None


def _planned(cycle_id: int, symbol: str, details: dict) -> PlannedEntry:
    return PlannedEntry(cycle_id, symbol, details["qty"], details["stop"], details["target"],
                        entry_client_order_id(cycle_id, symbol))
