"""One monitor check of one position: price, indicators, signals, decision flow, record.

Decision flow (DESIGN.md §3): any STRONG signal exits now; otherwise any MODERATE signal asks
the advisor (which falls back to the configured rule when it cannot answer); WEAK signals are
recorded and the position is held. A check worth an audit row (the first, any signal, advice, an exit, a change
of action) writes a ``decisions`` row with all triggering signals and their numbers; every check refreshes
``position_monitor_status``. A symbol's indicators are computed once per slot and stored for every check of it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from catalyst import monitor_store
from catalyst.db.engine import get_engine, session_scope
from catalyst.db.models import IndicatorSnapshot, Position, PositionMonitorStatus
from catalyst.core.exits import ExitAssessment, HeldPosition, MarketFacts, assess_exit
from catalyst.core.indicators import compute as compute_indicators
from catalyst.brokers.base import BrokerError
from catalyst.leg_watch import filled_leg
from catalyst.positions import (RECENT_VOLUME_BARS, UnknownPosition, close_with_fills, recent_volume,
                                recorded_sell_fills, request_exit)
from catalyst.protection import ensure_protection, raise_stop
from catalyst.monitor_store import CheckDB
from catalyst.records import count, record_decision, wall_now
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.monitor")
INDICATOR_BARS = 200  # pandas-ta's RSI needs ~150 bars to settle (RSI_STABLE_BARS); MACD needs 34
# pandas-ta seeds RSI's Wilder average with the first change alone, so a short history can read 80
# where the settled value is 50: below this many bars RSI is "unknown" rather than trusted.
RSI_TRUSTED_BARS = 60


@dataclass(frozen=True)
class MonitorOutcome:
    position_id: int
    action: str  # hold | exit | exit_dry_run | redrive | exit_blocked | closed | skipped
    reason: str | None = None
    signals: tuple = field(default_factory=tuple)

    @property
    def needs_exit_task(self) -> bool:
        return self.action in ("exit", "redrive")


def held_view(p: Position) -> HeldPosition:
    return HeldPosition(symbol=p.symbol, qty=p.qty, entry_price=p.entry_price, opened_at=p.opened_at,
                        high_watermark=p.high_watermark, max_hold=timedelta(seconds=p.max_hold_seconds),
                        stop_loss_price=p.stop_loss_price, take_profit_price=p.take_profit_price,
                        entry_volume=p.entry_volume)


def cycle_slot(rt: Runtime, now: datetime) -> datetime:
    """The monitor cycle a check belongs to when no slot came with the task (manual checks)."""
    interval = timedelta(seconds=rt.settings.monitor_check_interval)
    return rt.calendar.latest_slot(now, interval) or now.replace(second=0, microsecond=0)


# -- indicators, once per symbol per cycle ------------------------------------------------------------
# This process's copy of the latest slots' snapshots, per database (an engine is one database in one process).
_recent: dict[tuple[object, str, datetime], IndicatorSnapshot] = {}
_recent_lock = threading.Lock()
RECENT_SLOTS = 2


def shared_indicators(rt: Runtime, symbol: str, slot: datetime, now: datetime, worker: str | None,
                      db: CheckDB | None = None) -> IndicatorSnapshot:
    """Indicators for ``symbol`` in cycle ``slot``: the first check computes and stores them, the rest read
    (each process reads a symbol's snapshot once per slot, then keeps it: snapshots never change).

    ``db``: where to read and store (a check's lock connection: one statement each, no transaction)."""
    key = (get_engine(), symbol, slot)
    if (found := _recent.get(key)) is not None:
        return found
    snapshot = _shared_snapshot(rt, symbol, slot, now, worker, db or CheckDB())
    if snapshot.id is not None:  # stored (not a stand-in for a row retention already deleted)
        _remember(key, snapshot)
    return snapshot


def _remember(key: tuple[object, str, datetime], snapshot: IndicatorSnapshot) -> None:
    """Keep the snapshot; forget those of other databases and of all but this one's latest ``RECENT_SLOTS``."""
    engine = key[0]
    with _recent_lock:
        _recent[key] = snapshot
        slots = sorted({k[2] for k in _recent if k[0] is engine}, reverse=True)
        stale = set(slots[RECENT_SLOTS:])
        for k in [k for k in _recent if k[0] is not engine or k[2] in stale]:
            del _recent[k]


def _shared_snapshot(rt: Runtime, symbol: str, slot: datetime, now: datetime, worker: str | None,
                     db: CheckDB) -> IndicatorSnapshot:
    """The slot's stored snapshot, or this one computed and stored. No lock around the computation: two processes
    that miss at the same moment both compute (a few ms), the first row stored wins and both use it."""
    if (found := monitor_store.find_snapshot(db, symbol, slot)) is not None:
        return found
    snapshot = _compute(rt, symbol, slot, now, worker)
    if not monitor_store.store_snapshot(db, snapshot):
        stored = monitor_store.find_snapshot(db, symbol, slot)
        if stored is None:  # stored and already deleted (retention of a long-gone slot): use what we computed
            return snapshot
        return stored
    log.info("indicators_computed", symbol=symbol, slot=slot.isoformat(), rsi=snapshot.rsi,
             macd_hist=snapshot.macd_hist, bars=snapshot.bars)
    return snapshot


def _compute(rt: Runtime, symbol: str, slot: datetime, now: datetime, worker: str | None) -> IndicatorSnapshot:
    bars = rt.market_data.bars(symbol, now, INDICATOR_BARS)
    ind = compute_indicators(bars, str(rt.calendar.tz))
    rsi = ind.rsi if ind.bars >= RSI_TRUSTED_BARS else None
    return IndicatorSnapshot(symbol=symbol, slot_at=slot, bars=ind.bars, rsi=rsi, macd=ind.macd,
                             macd_signal=ind.macd_signal, macd_hist=ind.macd_hist, vwap=ind.vwap, atr=ind.atr,
                             recent_volume=recent_volume(bars[-RECENT_VOLUME_BARS:]), computed_at=wall_now(),
                             worker=worker)


def indicator_dict(snap: IndicatorSnapshot) -> dict:
    return {"snapshot_id": snap.id, "bars": snap.bars, "rsi": snap.rsi, "macd": snap.macd,
            "macd_signal": snap.macd_signal, "macd_hist": snap.macd_hist, "vwap": snap.vwap, "atr": snap.atr,
            "recent_volume": snap.recent_volume}


# -- the check -----------------------------------------------------------------------------------------
def check_position(rt: Runtime, position_id: int, worker: str | None = None, slot: datetime | None = None,
                   db: CheckDB | None = None) -> MonitorOutcome:
    """One monitor check; an exit decision moves the position to ``closing`` (unless dry run).

    ``db``: where the check's own statements go (the lock's connection, from :func:`check_lock`).
    """
    db = db or CheckDB()
    now = rt.clock.now()
    position = monitor_store.load(db, position_id)
    if position is None:
        raise UnknownPosition(f"unknown position id {position_id}")
    if position.status == "closed":
        return MonitorOutcome(position_id, "closed", position.exit_reason)
    if position.status == "closing":
        if position.exit_blocked_until is not None and now < position.exit_blocked_until:
            return MonitorOutcome(position_id, "exit_blocked", position.exit_blocked_reason)
        return MonitorOutcome(position_id, "redrive", position.exit_reason)
    view = held_view(position)
    slot = slot or cycle_slot(rt, now)
    if rt.broker.supports_legs and (closed := _closed_by_leg(rt, position_id, view, slot, worker)) is not None:
        return closed
    quote = rt.market_data.quote(view.symbol, now)
    snap = shared_indicators(rt, view.symbol, slot, now, worker, db)
    now = rt.clock.now()  # judge at the time the facts arrived (a batched fetch may have taken a moment)
    facts = MarketFacts(rsi=snap.rsi, macd_hist=snap.macd_hist, recent_volume=snap.recent_volume,
                        minutes_to_close=rt.calendar.minutes_to_close(now))
    assessment = assess_exit(view, quote, now, timedelta(seconds=rt.settings.max_quote_age), rt.profile, facts)
    advice = None
    if assessment.action == "consult":
        advice = rt.advisor.advise(_advice_request(position_id, view, assessment, snap, slot, now,
                                                   position.entry_reason, rt))
    exits = assessment.exits or bool(advice and advice.exit)
    if not rt.settings.monitor_record_holds and _is_quiet(assessment, advice, exits, position.last_decision):
        # A new high is protective state (the trailing stop measures from it): its write waits for the WAL flush.
        where = db if assessment.high_watermark <= view.high_watermark else CheckDB()
        trails = not rt.settings.monitor_dry_run and rt.broker.supports_legs  # a broker call follows, under the lock
        if not monitor_store.record_quiet_hold(where, position_id=position_id, now=now, price=assessment.price,
                                               pnl_pct=assessment.pnl_pct, high_watermark=assessment.high_watermark,
                                               last=not trails):
            return MonitorOutcome(position_id, "skipped", "not_open")  # closed meanwhile: its closer owns it now
        count(worker, checks=1, positions_checked=1)
        log.info("position_checked", position_id=position_id, symbol=view.symbol, action="hold", flow="none",
                 price=assessment.price, pnl_pct=assessment.pnl_pct, recorded="status")
    else:
        _record_check(rt, position_id, view, quote, snap, slot, now, facts, assessment, advice, exits, worker)
    dry_run = rt.settings.monitor_dry_run
    if exits and dry_run:
        return MonitorOutcome(position_id, "exit_dry_run", assessment.reason, assessment.signals)
    if not exits and not dry_run and assessment.price is not None and rt.broker.supports_legs:
        _trail_broker_stop(rt, position_id, assessment)
    if exits and request_exit(rt, position_id, assessment.reason, [sig.as_dict() for sig in assessment.signals]):
        return MonitorOutcome(position_id, "exit", assessment.reason, assessment.signals)
    return MonitorOutcome(position_id, "hold", assessment.reason, assessment.signals)


def _is_quiet(a: ExitAssessment, advice, exits: bool, last_decision: str | None) -> bool:
    """A plain hold like the last one: a price, no signal, no advice, nothing to decide. It updates the status
    row's counters instead of adding a ``decisions`` row (at 10,000 positions, 14 M rows a day otherwise)."""
    return (not exits and advice is None and not a.signals and a.price is not None and a.reason is None
            and a.action == "hold" and last_decision == "hold")


def _record_check(rt: Runtime, position_id: int, view: HeldPosition, quote, snap, slot: datetime, now: datetime,
                  facts: MarketFacts, assessment: ExitAssessment, advice, exits: bool, worker: str | None) -> None:
    """A check worth an audit row: a signal, advice, an exit, a change of action or the first check."""
    dry_run = rt.settings.monitor_dry_run
    signals = [sig.as_dict() for sig in assessment.signals]
    flow = {"exit": "strong", "consult": "moderate_advisor"}.get(assessment.action,
                                                               "weak" if assessment.signals else "none")
    with session_scope() as s:
        # Locked until the commit, and the high only ever raised: a check that read the position before another
        # raised its high (a redelivery, a lock lost with its session) never writes its lower high back.
        position = s.get(Position, position_id, with_for_update=True)
        if assessment.price is not None:
            position.high_watermark = max(position.high_watermark or 0.0, assessment.high_watermark)
            position.last_price = assessment.price
            position.updated_at = now
        details = {"price": assessment.price, "pnl_pct": assessment.pnl_pct, "flow": flow,
                   "quote_at": quote.timestamp.isoformat() if quote else None, "slot": slot.isoformat(),
                   "indicators": indicator_dict(snap), "unknown": list(assessment.unknown),
                   "minutes_to_close": facts.minutes_to_close}
        if advice is not None:
            details["advisor"] = advice.as_dict()
            record_decision(s, kind="advisor", action="exit" if advice.exit else "hold", reason=advice.reason[:64],
                            symbol=view.symbol, position_id=position_id, signals=signals, dry_run=dry_run,
                            worker=worker, decided_at=now, details=advice.as_dict())
        action = "exit" if exits else "hold"
        record_decision(s, kind="monitor", action=action, reason=assessment.reason, symbol=view.symbol,
                        position_id=position_id, signals=signals, dry_run=dry_run, worker=worker, decided_at=now,
                        details=details)
        _upsert_monitor_status(s, position, now, action, assessment, signals)
    called = advice is not None and advice.fallback_cause not in ("no_key", "cycle_limit", "over_budget")
    count(worker, checks=1, positions_checked=1, advisor_calls=int(called))
    log.info("position_checked", position_id=position_id, symbol=view.symbol, action=action, flow=flow,
             reason=assessment.reason, price=assessment.price, pnl_pct=assessment.pnl_pct, dry_run=dry_run,
             advisor=advice.source if advice else None)


def _closed_by_leg(rt: Runtime, position_id: int, view: HeldPosition, slot: datetime,
                   worker: str | None) -> MonitorOutcome | None:
    """A bracket leg sold the position at the broker: close it with the legs' fills and reason."""
    leg = filled_leg(rt, position_id, slot)
    if leg is None:
        return None
    fills = recorded_sell_fills(position_id)
    if sum(f.filled_qty for f in fills) + 1e-9 < view.qty:
        return None  # part of it is still held: the exit path sells what is left
    reason = "stop_loss" if leg.leg_purpose == "stop" else "take_profit"
    closed = close_with_fills(rt, position_id, fills, reason=reason, worker=worker)
    return MonitorOutcome(position_id, "closed", closed.exit_reason)


def _trail_broker_stop(rt: Runtime, position_id: int, a: ExitAssessment) -> None:
    """Keep a live broker stop for the whole position (placing one if it has none), a trailing
    distance under the high-watermark (best effort)."""
    trail = a.high_watermark * (1 - rt.profile.trailing_stop_pct / 100)
    try:
        if ensure_protection(rt, position_id, a.price) is not None:
            return  # placed at the position's stop just now; the trail moves it from the next check
        if trail >= a.price:
            return  # the trail is already crossed: the signal flow decides, not a stop at the market
        raise_stop(rt, position_id, trail)
    except BrokerError as exc:
        log.warning("stop_raise_failed", position_id=position_id, error=str(exc))


def _advice_request(position_id, view: HeldPosition, a: ExitAssessment, snap, slot, now, entry_reason, rt):
    from catalyst.advisor import AdviceRequest

    return AdviceRequest(
        position_id=position_id, symbol=view.symbol, qty=view.qty, entry_price=view.entry_price, price=a.price,
        pnl_pct=round(a.pnl_pct, 4), high_watermark=a.high_watermark, opened_at=view.opened_at,
        held_minutes=round((now - view.opened_at).total_seconds() / 60, 1), entry_reason=entry_reason,
        signals=[sig.as_dict() for sig in a.signals],
        indicators={k: v for k, v in indicator_dict(snap).items() if k != "snapshot_id"}, slot_at=slot,
        market_day=now.astimezone(rt.calendar.tz).date().isoformat())


def _upsert_monitor_status(s, position: Position, now: datetime, action: str, a: ExitAssessment,
                           signals: list[dict]) -> None:
    row = s.get(PositionMonitorStatus, position.id)
    if row is None:
        row = PositionMonitorStatus(position_id=position.id, symbol=position.symbol, checks=0)
        s.add(row)
    row.last_check_at, row.updated_at = now, wall_now()
    row.price = a.price if a.price is not None else row.price
    row.pnl_pct = a.pnl_pct if a.pnl_pct is not None else row.pnl_pct
    row.high_watermark = position.high_watermark
    row.active_signals = signals
    row.last_decision = f"{action}:{a.reason}" if a.reason else action
    row.checks = (row.checks or 0) + 1
