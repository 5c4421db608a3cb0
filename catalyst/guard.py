"""The account-level guard: the day's loss against the limit, the emergency stop, halt and resume.

The trading state lives in PostgreSQL (the ``halted`` row of ``trading_state``), so it survives
worker and beat restarts; every change is written under the entry gate (the lock every entry's
admission takes), so no entry is admitted after a halt commits. The rules are pure
(:func:`catalyst.core.risk.monitor_verdict`); this module reads the book, writes the state and acts:

- at ``daily_loss_warning_pct`` of ``max_daily_loss_usd`` the state becomes REDUCING for the rest
  of the market day (no new entries, exits continue); it lifts on its own on the next market day;
- at the limit, an **emergency stop**: HALTED is persisted first (with its alert, in the same
  transaction: an outbox), then every open position is moved to ``closing`` with ``emergency_stop``
  (exactly one caller wins each) and handed to the normal exit path, then every entry still in
  flight is cancelled at the broker (or retired if its send was never claimed; one claimed for
  sending is left to the next check, never called cancelled; a part that filled first becomes a
  position and is closed too). One entry failing in any way never stops the rest. Every later
  check while HALTED closes whatever is still open (a late fill), never a position twice;
- only an operator lifts HALTED (``catalyst resume --confirm``); the monitor never lowers a state.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, func, or_, select

from catalyst import orders
from catalyst.brokers.base import FINAL_ORDER_STATUSES, BrokerError
from catalyst.core import risk
from catalyst.core.exits import quote_problem
from catalyst.core.risk import TradingState
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position, PositionMonitorStatus
from catalyst.db.models import TradingState as StateRow
from catalyst.entries import STATE_KEY, book_snapshot, lock_entry_gate, open_from_fill, retire_unsent_entry
from catalyst.notify import Recorded, record_in, release
from catalyst.positions import request_exit
from catalyst.records import record_decision
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.guard")
MONITOR = "risk_monitor"
EMERGENCY_STOP = "emergency_stop"
CANCEL_WAIT_SECONDS = 2.0  # how long a cancel is followed before the next check looks again

Dispatch = Callable[[int], None]  # hands a ``closing`` position to the exit path (a task, or in-process)


def operator() -> str:
    """Who is at the keyboard: ``user@host``, recorded with an operator's halt or resume."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container): still say where it came from
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class StopReport:
    """What an emergency stop (or a check while HALTED) did, for the operator and the log."""

    closing: list[int] = field(default_factory=list)  # positions this run moved to closing (emergency_stop)
    already_closing: list[int] = field(default_factory=list)  # left to the exit already under way
    cancelled: list[str] = field(default_factory=list)  # entry orders cancelled at the broker or retired unsent
    filled_first: list[str] = field(default_factory=list)  # entries that bought shares before the cancel landed
    unresolved: list[str] = field(default_factory=list)  # entries not settled yet: in flight, or the broker
    # could not say (the next check looks again); never counted as cancelled
    close_failed: list[int] = field(default_factory=list)  # positions whose move to their exit failed (next check)

    def as_dict(self) -> dict:
        return {"closing": self.closing, "already_closing": self.already_closing, "cancelled": self.cancelled,
                "filled_first": self.filled_first, "unresolved": self.unresolved, "close_failed": self.close_failed}


@dataclass(frozen=True)
class CheckResult:
    state: TradingState
    change: str | None
    pnl: risk.DailyPnl | None
    stop: StopReport | None = None

    def as_dict(self) -> dict:
        return {"state": self.state.value, "change": self.change, "pnl": self.pnl.as_dict() if self.pnl else None,
                "stop": self.stop.as_dict() if self.stop else None}


# -- reading ----------------------------------------------------------------------------------------
def stored_state(s) -> tuple[risk.GuardState, dict]:
    row = s.get(StateRow, STATE_KEY)
    value = dict(row.value) if row is not None and isinstance(row.value, dict) else {}
    return risk.GuardState.parse(value), value


def todays_pnl(s, rt: Runtime, now: datetime, marks: dict[str, float] | None = None) -> risk.DailyPnl:
    """The market day's realized + unrealized P&L against the limit: positions at ``marks`` where given,
    else at the monitor's last price."""
    book = book_snapshot(s, rt, now).marked(marks or {})
    return risk.daily_pnl(book, rt.settings.max_daily_loss_usd, rt.settings.daily_loss_warning_pct)


def fresh_marks(rt: Runtime, now: datetime) -> dict[str, float]:
    """Current quotes of the symbols held that are newer than their last check.

    The guard judges the market as it is now: in a flash crash it must not wait up to a check
    interval for the positions' own checks to mark them down. A quote that cannot be trusted
    (missing, stale, not a price) leaves the monitor's mark in place.
    """
    with session_scope() as s:
        held = s.execute(select(Position.symbol, func.max(PositionMonitorStatus.last_check_at))
                         .outerjoin(PositionMonitorStatus, PositionMonitorStatus.position_id == Position.id)
                         .where(Position.status != "closed").group_by(Position.symbol)).all()
    marks: dict[str, float] = {}
    max_age = timedelta(seconds=rt.settings.max_quote_age)
    for symbol, checked_at in held:
        try:
            quote = rt.market_data.quote(symbol, now)
        except Exception as exc:  # noqa: BLE001 - no quote: the last check's mark stands
            log.warning("risk_quote_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
            continue
        seen = rt.clock.now()  # a slow source: the quote is judged against the time it arrived, not the first one
        if quote_problem(quote, seen, max_age) is None and (checked_at is None or quote.timestamp > checked_at):
            marks[symbol] = float(quote.price)
    return marks


def status_view(rt: Runtime) -> dict:
    """The state as it stands today (with who, why and when) and today's P&L, for ``catalyst status``."""
    now = rt.clock.now()
    today = risk.market_day(now, rt.calendar.tz)
    with session_scope() as s:
        stored, value = stored_state(s)
        pnl = todays_pnl(s, rt, now)
    state = stored.effective(today)
    lifted = state.state is not stored.state
    return {"state": state.state.value, "reason": None if lifted else stored.reason, "by": None if lifted else stored.by,
            "at": None if lifted else stored.at, "market_day": today.isoformat(),
            "closing_positions": state.state is TradingState.HALTED and state.flatten,
            "resumed_by": value.get("resumed_by"), "resumed_at": value.get("resumed_at"),
            "daily_pnl": pnl.as_dict()}


# -- the monitor ------------------------------------------------------------------------------------
def check_risk(rt: Runtime, *, dispatch: Dispatch, worker: str | None = None) -> CheckResult:
    """One risk check: judge the day's P&L under the entry gate, write a state change, then act on it."""
    now = rt.clock.now()
    today = risk.market_day(now, rt.calendar.tz)
    alert = None
    marks = fresh_marks(rt, now)  # quotes are read before the gate is taken: no entry waits on the network
    with session_scope() as s:
        lock_entry_gate(s, now)
        current, value = stored_state(s)
        try:
            pnl = todays_pnl(s, rt, now, marks)
            verdict = risk.monitor_verdict(current, today, pnl)
        except (TypeError, ValueError, ArithmeticError) as exc:  # bad data never takes the check down
            log.error("risk_check_bad_data", error=f"{type(exc).__name__}: {exc}")
            pnl, verdict = None, risk.GuardVerdict(current.effective(today).state, current.flatten)
        if verdict.change:
            _write(s, verdict.state, reason=_monitor_reason(verdict, pnl), by=MONITOR, at=now, today=today,
                   flatten=verdict.flatten, pnl=pnl, previous=value)
            record_decision(s, kind="risk", action=verdict.change, reason=verdict.reason, decided_at=now,
                            worker=worker, details={"state": verdict.state.value, "from": current.state.value,
                                                    "daily_pnl": pnl.as_dict() if pnl else None,
                                                    "by": MONITOR})
            alert = _announce(s, verdict, pnl, today, now)
    log.info("risk_checked", state=verdict.state.value, change=verdict.change,
             **({f"pnl_{k}": v for k, v in pnl.as_dict().items()} if pnl else {"pnl": None}))
    release(alert)
    stop = stop_trading(rt, dispatch, flatten=verdict.flatten) if verdict.state is TradingState.HALTED else None
    if stop and (stop.closing or stop.cancelled or stop.filled_first or stop.close_failed):
        log.warning("emergency_stop_actions", **stop.as_dict())
    return CheckResult(verdict.state, verdict.change, pnl, stop)


def _monitor_reason(verdict: risk.GuardVerdict, pnl: risk.DailyPnl | None) -> str:
    figures = pnl.describe() if pnl else "today's P&L unknown"
    return {"halt": f"daily loss limit reached: {figures}",
            "flatten": f"daily loss limit reached while halted: {figures}",
            "reduce": f"daily loss warning: {figures}",
            "lift": "a new market day: the daily loss warning has lifted"}[verdict.change]


def _announce(s, verdict: risk.GuardVerdict, pnl: risk.DailyPnl | None, today, now: datetime) -> Recorded | None:
    """The alert for a state change, recorded in the transaction that writes it (one per write: its key
    names the write's time, so a second stop on the same day after a resume is announced too)."""
    context = {"state": verdict.state.value, "market_day": today.isoformat(),
               **({"daily_pnl": pnl.as_dict()} if pnl else {})}
    figures = pnl.describe() if pnl else "today's P&L unknown"
    if verdict.change in ("halt", "flatten"):
        return record_in(s, EMERGENCY_STOP, "critical", "Emergency stop: daily loss limit reached",
                         f"{figures}. Trading is HALTED, open entry orders are cancelled and every position is being "
                         "closed (emergency_stop). Nothing enters until `catalyst resume --confirm`.",
                         context=context, dedupe_key=_key(EMERGENCY_STOP, today, now), occurred_at=now)
    if verdict.change == "reduce":
        return record_in(s, "daily_loss_warning", "warning", "Daily loss warning: reducing risk",
                         f"{figures}. No new entries for the rest of the market day; exits continue.",
                         context=context, dedupe_key=_key("daily_loss_warning", today, now), occurred_at=now)
    return None


def _key(event: str, today, at: datetime) -> str:
    """One alert per state write: the event, its market day and the write's time (``value.at``)."""
    return f"{event}:{today.isoformat()}:{at.isoformat()}"


# -- halt and resume (the operator) -----------------------------------------------------------------
def halt(rt: Runtime, *, reason: str, by: str, close_positions: bool, dispatch: Dispatch) -> StopReport:
    """An operator's stop: HALTED with who and why; entry orders cancelled; positions closed unless kept."""
    now = rt.clock.now()
    today = risk.market_day(now, rt.calendar.tz)
    with session_scope() as s:
        current, value, pnl = _gate_and_state(s, rt, now)
        flatten = close_positions or (current.state is TradingState.HALTED and current.flatten)
        _write(s, TradingState.HALTED, reason=reason, by=by, at=now, today=today, flatten=flatten, pnl=pnl,
               previous=value)
        record_decision(s, kind="risk", action="halt", reason="operator_halt", decided_at=now, worker=by[:128],
                        details={"state": "HALTED", "from": current.state.value, "by": by, "why": reason,
                                 "close_positions": flatten, "daily_pnl": pnl.as_dict() if pnl else None})
        context = {"by": by, "reason": reason, "market_day": today.isoformat()}
        if flatten:
            alert = record_in(s, EMERGENCY_STOP, "critical", "Emergency stop by an operator",
                              f"{by} halted trading: {reason}. Open entry orders are cancelled and every position "
                              "is being closed (emergency_stop). Nothing enters until `catalyst resume --confirm`.",
                              context=context, dedupe_key=_key(EMERGENCY_STOP, today, now), occurred_at=now)
        else:
            alert = record_in(s, "trading_halted", "warning", "Trading halted by an operator (positions kept)",
                              f"{by} halted new entries: {reason}. Open positions stay monitored.",
                              context=context, dedupe_key=_key("trading_halted", today, now), occurred_at=now)
    log.warning("trading_halted", by=by, reason=reason, close_positions=flatten)
    release(alert)
    return stop_trading(rt, dispatch, flatten=flatten)


def resume(rt: Runtime, *, by: str) -> tuple[risk.GuardState, risk.DailyPnl | None]:
    """An operator lifts HALTED or REDUCING; returns the state it was in (ACTIVE: nothing was changed)."""
    now = rt.clock.now()
    today = risk.market_day(now, rt.calendar.tz)
    with session_scope() as s:
        current, value, pnl = _gate_and_state(s, rt, now)
        before = current.effective(today)
        if before.state is TradingState.ACTIVE:
            return before, pnl
        _write(s, TradingState.ACTIVE, reason=None, by=by, at=now, today=today, flatten=False, pnl=pnl,
               previous=value, resumed=True)
        record_decision(s, kind="risk", action="resume", reason="operator_resume", decided_at=now, worker=by[:128],
                        details={"state": "ACTIVE", "from": before.state.value, "by": by,
                                 "halted_by": before.by, "halted_for": before.reason,
                                 "daily_pnl": pnl.as_dict() if pnl else None})
        alert = record_in(s, "trading_resumed", "warning", "Trading resumed by an operator",
                          f"{by} resumed trading (it was {before.state.value}: {before.reason}).",
                          context={"by": by, "previous": before.state.value, "market_day": today.isoformat()},
                          dedupe_key=f"trading_resumed:{now.isoformat()}", occurred_at=now)
    log.warning("trading_resumed", by=by, previous=before.state.value, halted_by=before.by)
    release(alert)
    return before, pnl


def _gate_and_state(s, rt: Runtime, now: datetime):
    """Take the entry gate, then read the stored state and today's P&L: what an operator's change starts from."""
    lock_entry_gate(s, now)
    current, value = stored_state(s)
    return current, value, _pnl_or_none(s, rt, now)


def _pnl_or_none(s, rt: Runtime, now: datetime) -> risk.DailyPnl | None:
    try:
        return todays_pnl(s, rt, now)
    except (TypeError, ValueError, ArithmeticError) as exc:  # the figures are context: never block a halt
        log.error("risk_figures_unknown", error=f"{type(exc).__name__}: {exc}")
        return None


def _write(s, state: TradingState, *, reason: str | None, by: str, at: datetime, today, flatten: bool,
           pnl: risk.DailyPnl | None, previous: dict, resumed: bool = False) -> None:
    """Replace the state row (the caller holds the entry gate); the state it replaces is kept beside it."""
    earlier = {k: v for k, v in previous.items() if k != "previous"}
    value = {"halted": state is TradingState.HALTED, "state": state.value, "reason": reason, "by": by,
             "at": at.isoformat(), "market_day": today.isoformat(), "flatten": flatten,
             "daily_pnl": pnl.as_dict() if pnl else None, "previous": earlier or None}
    if resumed:
        value.update(resumed_by=by, resumed_at=at.isoformat())
    row = s.get(StateRow, STATE_KEY)
    if row is None:
        s.add(StateRow(key=STATE_KEY, value=value, updated_at=at))
    else:
        row.value, row.updated_at = value, at


# -- the emergency stop's actions -------------------------------------------------------------------
def stop_trading(rt: Runtime, dispatch: Dispatch, *, flatten: bool) -> StopReport:
    """Send every open position to its exit (``flatten``), then cancel every entry in flight, then close
    what those entries bought before their cancel landed.

    The exits go first: an entry's cancel waits on the broker (up to ``CANCEL_WAIT_SECONDS``) and one
    entry can fail in any way; neither delays nor prevents a single close. Safe to run again and
    concurrently: a retirement, a cancel and ``open → closing`` are each conditional, so a second run
    finds nothing left to do (a position that appeared from a late fill is closed by the run that finds it).
    """
    report = StopReport()
    if flatten:
        _close_positions(rt, dispatch, report)
    _cancel_entries(rt, report)
    if flatten and report.filled_first:
        _close_positions(rt, dispatch, report)
    return report


def _cancel_entries(rt: Runtime, report: StopReport) -> None:
    with session_scope() as s:
        entries = s.execute(select(Order.client_order_id, Order.broker_order_id, Order.status).where(
            Order.purpose == "entry", Order.position_id.is_(None),
            or_(Order.status.not_in(FINAL_ORDER_STATUSES), and_(Order.filled_qty > 0)))
            .order_by(Order.id)).all()
    for client_order_id, broker_order_id, status in entries:
        try:
            _cancel_entry(rt, client_order_id, broker_order_id, report)
        except (BrokerError, OSError) as exc:
            log.warning("entry_cancel_failed", client_order_id=client_order_id, status=status, error=str(exc))
            report.unresolved.append(client_order_id)
        except Exception as exc:  # noqa: BLE001 - one entry (an unparseable answer, a bug) never stops the rest
            log.error("entry_cancel_failed", client_order_id=client_order_id, status=status,
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            report.unresolved.append(client_order_id)


def _cancel_entry(rt: Runtime, client_order_id: str, broker_order_id: str | None, report: StopReport) -> None:
    broker, now = rt.broker, rt.clock.now()
    found = broker.get_order_by_id(broker_order_id) if broker_order_id else broker.get_order(client_order_id)
    if found is None:
        # Retired only if its send was never claimed: HALTED is committed, so no claim can follow. A claimed
        # one may be on its way to the broker: the next check looks for it again (its task never sends it
        # under HALTED, and retires it once its claim is older than any send).
        if retire_unsent_entry(client_order_id, now, "emergency_stop: trading halted before it was sent",
                               unclaimed_only=True):
            report.cancelled.append(client_order_id)
            log.warning("entry_retired", client_order_id=client_order_id, reason=EMERGENCY_STOP)
        else:
            report.unresolved.append(client_order_id)
            log.warning("entry_in_flight_at_stop", client_order_id=client_order_id, reason=EMERGENCY_STOP)
        return
    if not found.is_final:
        found = orders.follow(broker, broker.cancel_order(found.broker_order_id) or found, CANCEL_WAIT_SECONDS)
    orders.record(found, now)
    if not found.is_final:
        report.unresolved.append(client_order_id)
        return
    if found.filled_qty > 0:  # it bought shares before the cancel landed: a position, closed next
        position = open_from_fill(rt, client_order_id, found, reason="reconciled")
        report.filled_first.append(client_order_id)
        log.warning("entry_filled_before_cancel", client_order_id=client_order_id, position_id=position.id,
                    filled=found.filled_qty)
    else:
        report.cancelled.append(client_order_id)
        log.warning("entry_cancelled", client_order_id=client_order_id, reason=EMERGENCY_STOP)


def _close_positions(rt: Runtime, dispatch: Dispatch, report: StopReport) -> None:
    seen = set(report.closing) | set(report.already_closing) | set(report.close_failed)
    with session_scope() as s:
        held = s.execute(select(Position.id, Position.status).where(Position.status.in_(("open", "closing")))
                         .order_by(Position.id)).all()
    for position_id, status in held:
        if position_id in seen:
            continue
        try:
            if status == "open" and request_exit(rt, position_id, EMERGENCY_STOP):
                report.closing.append(position_id)
                dispatch(position_id)
            else:
                report.already_closing.append(position_id)
        except Exception as exc:  # noqa: BLE001 - one position never stops the others closing
            log.error("emergency_close_failed", position_id=position_id, error=f"{type(exc).__name__}: {exc}",
                      exc_info=True)
            report.close_failed.append(position_id)  # moved to closing or not, its exit was not handed on
