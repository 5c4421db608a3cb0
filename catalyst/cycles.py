"""Trading cycles: scan the universe into ``scan_results``, then evaluate them into entry verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, ScanResult, TradingCycle
from catalyst.entries import entry_client_order_id, exposure, is_halted
from catalyst.records import record_decision, security_id
from catalyst.runtime import Runtime
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
                s.add(ScanResult(cycle_id=cycle.id, security_id=security_id(s, c.symbol, rt.calendar.code), symbol=c.symbol,
                                 rank=c.rank, score=c.score, price=c.price, change_pct=c.change_pct, volume=c.volume,
                                 relative_volume=c.relative_volume, rsi=c.rsi, catalyst=c.catalyst, created_at=now))
            cycle_id = cycle.id
    except IntegrityError:  # another worker scanned this slot concurrently
        with session_scope() as s:
            return s.scalar(select(TradingCycle.id).where(TradingCycle.slot_at == slot_at))
    log.info("market_scanned", cycle_id=cycle_id, slot_at=slot_at.isoformat(), universe=len(snapshots),
             candidates=[c.symbol for c in candidates])
    return cycle_id


def evaluate_cycle(rt: Runtime, cycle_id: int, worker: str | None = None) -> list[PlannedEntry]:
    """Decide which candidates of a cycle to enter; re-evaluating a cycle repeats its first answer."""
    settings = rt.settings
    rules = EntryRules(max_positions=settings.max_positions, position_size_usd=settings.position_size_usd,
                       stop_loss_pct=settings.stop_loss_pct, take_profit_pct=settings.take_profit_pct,
                       max_entry_rsi=rt.profile.rsi_moderate)
    now = rt.clock.now()
    with session_scope() as s:
        cycle = s.get(TradingCycle, cycle_id)
        if cycle is None:
            raise BadInput(f"unknown trading cycle id {cycle_id}")
        previous = s.scalars(select(Decision).where(Decision.cycle_id == cycle_id, Decision.kind == "evaluate")).all()
        if previous:
            return [_planned(cycle_id, d.symbol, d.details) for d in previous if d.action == "enter"]
        results = s.scalars(select(ScanResult).where(ScanResult.cycle_id == cycle_id).order_by(ScanResult.rank)).all()
        held = exposure(s)  # entries still in flight count as held, for the symbol and for the limit
        candidates = [Candidate(r.symbol, r.rank, r.score, r.price, r.change_pct, r.volume, r.relative_volume,
                                r.catalyst, r.rsi) for r in results]
        verdicts = evaluate(candidates, set(held.symbols), held.count, is_halted(s), rules)
        planned = []
        for v in verdicts:
            details = {"qty": v.qty, "stop": v.stop_loss_price, "target": v.take_profit_price}
            record_decision(s, kind="evaluate", action=v.action, reason=v.reason, symbol=v.symbol, cycle_id=cycle_id,
                            decided_at=now, worker=worker, details=details)
            if v.action == "enter":
                planned.append(_planned(cycle_id, v.symbol, details))
        cycle.status = "evaluated"
    log.info("candidates_evaluated", cycle_id=cycle_id, entries=[p.symbol for p in planned],
             skipped={v.symbol: v.reason for v in verdicts if v.action == "skip"})
    return planned


def _planned(cycle_id: int, symbol: str, details: dict) -> PlannedEntry:
    return PlannedEntry(cycle_id, symbol, details["qty"], details["stop"], details["target"],
                        entry_client_order_id(cycle_id, symbol))
