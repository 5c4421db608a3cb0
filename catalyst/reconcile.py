"""The reconciliation watchdog: compare our books with the broker's, mend what is safe, escalate the rest.

One run, like lumibot's ``sync_broker()``, in three passes:

1. **orders** — every order we still think is live or unknown is compared with the broker's open
   orders (one call); unknown outcomes are resolved by client id, statuses synced;
2. **positions** — what we hold per symbol (bought minus sold, by the fills we recorded) against
   the broker's positions (one call): phantoms (ours, not the broker's) are closed with the
   broker's fill, orphans (the broker's, not ours) adopted so they are monitored, quantity
   mismatches escalated, unprotected positions given a stop again, stuck exits escalated;
3. **liveness** — stale scan cycles in session and positions without a monitor schedule.

Safety boundaries (seed 004): reconciliation never sells a broker position and never changes a
risk setting. Everything it cannot mend safely is escalated (an error in the log and
``agent_logs``), so a second run right after ``--fix`` reports only what was escalated.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update

from catalyst import leases, orders
from catalyst.brokers.base import FINAL_ORDER_STATUSES, BrokerError, BrokerOrderReport
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position, ScheduleEntry, TradingCycle
from catalyst.core.domain import CatalystError
from catalyst.records import record_activity, security_id
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.reconcile")
STUCK_AFTER = timedelta(minutes=5)
STALE_CYCLE_AFTER = timedelta(minutes=30)
SCAN_ENTRY = "scan-market"
QTY_EPSILON = 1e-6
SELL_PURPOSES = ("exit", "stop", "take_profit")
LIVE_STOP_STATUSES = ("new", "accepted", "held", "pending_new", "partially_filled", "pending_replace")
SEVERITIES = ("info", "warning", "critical")


@dataclass
class Finding:
    """One disagreement between our books and the broker (or a liveness gap), and what was done."""

    kind: str
    severity: str
    detail: str
    symbol: str | None = None
    position_id: int | None = None
    ours: dict = field(default_factory=dict)
    broker: dict = field(default_factory=dict)
    action: str = "reported"  # reported | fixed: ... | escalated

    def as_dict(self) -> dict:
        return asdict(self)


LEASE = "reconcile"
LEASE_SECONDS = 120.0


class ReconcileBusy(CatalystError):
    """Another reconciliation is running: two at once could adopt the same shares twice."""


def reconcile(rt: Runtime, *, fix: bool, worker: str | None = None, wait: float = 0.0) -> list[Finding]:
    """One run; with ``fix`` the safe mends are applied and the rest escalated. One run at a time:
    a caller waits up to ``wait`` seconds for a run in progress (the operator's), or gives way (the task)."""
    holder = f"{worker or 'reconcile'}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait
    while leases.acquire(LEASE, holder, LEASE_SECONDS) is None:
        if time.monotonic() >= deadline:
            raise ReconcileBusy("another reconciliation is running; try again in a moment")
        time.sleep(0.2)
    try:
        now = rt.clock.now()
        findings = _check_orders(rt, now, fix)
        findings += _check_positions(rt, now, fix)
        findings += _check_liveness(rt, now)
    finally:
        leases.release(LEASE, holder)
    for f in findings:
        if fix and f.action == "reported":
            f.action = "escalated"
    _record(findings, now, fix, worker)
    return findings


# -- 1. orders ---------------------------------------------------------------------------------------------------
def _check_orders(rt: Runtime, now: datetime, fix: bool) -> list[Finding]:
    with session_scope() as s:
        ours = s.scalars(select(Order).where(Order.status.not_in(FINAL_ORDER_STATUSES)).order_by(Order.id)).all()
    if not ours:
        return []
    at_broker = {}
    for report in rt.broker.list_open_orders():
        for r in (report, *report.legs):
            at_broker[r.broker_order_id] = r
    findings = []
    for order in ours:
        if order.status in ("unknown", "pending_submit", "submitting"):
            findings += _unknown_order(rt, order, now, fix)
            continue
        report = at_broker.get(order.broker_order_id)
        if report is None or report.status != order.status:
            findings += _status_mismatch(rt, order, now, fix)
        elif order.purpose in ("entry", "exit") and now - order.created_at > STUCK_AFTER:
            findings.append(Finding("stuck_order", "warning", f"{order.purpose} order {order.client_order_id} has "
                                    f"been {order.status} for {_minutes(now - order.created_at)} min",
                                    order.symbol, order.position_id, _order_view(order), _report_view(report)))
    return findings


def _unknown_order(rt: Runtime, order: Order, now: datetime, fix: bool) -> list[Finding]:
    """Ask the broker by client id: it either has the order (sync it) or, after a while, never will."""
    age = now - order.created_at
    if order.status in ("pending_submit", "submitting") and age <= STUCK_AFTER:
        return []  # being submitted right now
    finding = Finding("unknown_order", "warning", f"{order.purpose} order {order.client_order_id} is "
                      f"{order.status} after {_minutes(age)} min", order.symbol, order.position_id, _order_view(order))
    if not fix:
        return [finding]
    try:
        report = rt.broker.get_order(order.client_order_id)
    except BrokerError as exc:
        finding.detail += f"; the broker could not say ({exc})"
        return [finding]
    if report is not None:
        orders.record(report, now)
        finding.broker, finding.action = _report_view(report), f"fixed: resolved as {report.status}"
    elif order.purpose == "entry":
        from catalyst.entries import INTENT_TTL, retire_unsent_entry

        if age > 2 * INTENT_TTL and retire_unsent_entry(order.client_order_id, now, "never reached the broker"):
            finding.action = "fixed: never reached the broker, retired (canceled)"
    elif age > STUCK_AFTER:
        _set_status(order.id, "rejected", "never reached the broker (reconcile)", now)
        finding.action = "fixed: never reached the broker, marked rejected"
    return [finding]


def _status_mismatch(rt: Runtime, order: Order, now: datetime, fix: bool) -> list[Finding]:
    """Our order looks live but the broker says otherwise (or lists it no more): take the broker's word.

    The order is read by id first: it may have been placed or moved on after the listing was taken,
    and then there is nothing to report (and no stale snapshot is written over newer books).
    """
    try:  # read the order itself: the listing is a snapshot, and a worker may have moved on since
        report = (rt.broker.get_order_by_id(order.broker_order_id) if order.broker_order_id
                  else rt.broker.get_order(order.client_order_id))
    except BrokerError as exc:
        report, error = None, exc
    else:
        error = None
        if report is not None and report.status == order.status:
            return []
    finding = Finding("order_status_mismatch", "warning", f"{order.purpose} order {order.client_order_id} is "
                      f"{order.status} here, {report.status if report else 'not open'} at the broker", order.symbol,
                      order.position_id, _order_view(order), _report_view(report))
    if error is not None:
        finding.detail += f"; the broker could not say ({error})"
    if fix and report is not None:
        _apply(order.id, report, now)
        finding.action = f"fixed: synced to {report.status}"
    return [finding]


# -- 2. positions ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Holding:
    position_id: int
    symbol: str
    status: str
    qty: float  # bought minus every recorded sell fill
    bought: float
    stop_loss_price: float | None
    closing_at: datetime | None
    exit_blocked_until: datetime | None = None  # a refused sale waiting for its retry (shown by status)


def _check_positions(rt: Runtime, now: datetime, fix: bool) -> list[Finding]:
    findings = _adopt_filled_entries(rt, now) if fix else _unadopted_entries()
    busy, newest = _settling(now)  # read before the broker's listing: what may change under our feet
    broker = {p.symbol: p for p in rt.broker.list_positions()}
    ours = _holdings()
    busy |= {h.symbol for h in ours if h.position_id > newest}
    for symbol in sorted(set(broker) | {h.symbol for h in ours}):
        if symbol in busy:
            continue  # an entry or exit is in flight: compared on the next run, once it has settled
        held = [h for h in ours if h.symbol == symbol and h.qty > QTY_EPSILON]
        findings += [_sold_out(rt, h, fix) for h in ours if h.symbol == symbol and h.qty <= QTY_EPSILON]
        ours_qty = sum(h.qty for h in held)
        broker_qty = broker[symbol].qty if symbol in broker else 0.0
        view = {"qty": ours_qty, "positions": [h.position_id for h in held]}
        broker_view = {"qty": broker_qty, "avg_entry_price": broker[symbol].avg_entry_price if symbol in broker else None}
        if abs(ours_qty - broker_qty) <= QTY_EPSILON:
            continue
        if broker_qty <= QTY_EPSILON:
            findings += [_phantom(rt, h, now, fix, broker_view) for h in held]
        elif not held:
            findings.append(_orphan(rt, symbol, broker[symbol], now, fix, view, broker_view))
        else:
            findings.append(Finding("quantity_mismatch", "critical", f"we hold {ours_qty:g} {symbol}, the broker "
                                    f"{broker_qty:g}", symbol, held[0].position_id, view, broker_view))
    if rt.broker.supports_legs:
        findings += _unprotected(rt, _holdings(), now, fix)
    findings += [Finding("stuck_closing", "warning", f"position {h.position_id} has been closing for "
                         f"{_minutes(now - h.closing_at)} min", h.symbol, h.position_id, {"qty": h.qty})
                 for h in _holdings() if h.status == "closing" and h.closing_at and now - h.closing_at > STUCK_AFTER
                 and not (h.exit_blocked_until and now < h.exit_blocked_until)]
    return findings


SETTLE = timedelta(minutes=1)


def _settling(now: datetime) -> tuple[set[str], int]:
    """Symbols whose books may be mid-change (an entry or exit in flight, a position closed just now),
    and the newest position id: positions opened after this read are settling too."""
    with session_scope() as s:
        in_flight = set(s.scalars(select(Order.symbol).where(
            Order.purpose.in_(("entry", "exit")), Order.status.not_in(FINAL_ORDER_STATUSES))))
        unlinked = {o.symbol for o in _unlinked_entries()}
        closed = set(s.scalars(select(Position.symbol).where(Position.closed_at >= now - SETTLE)))
        newest = s.scalar(select(func.coalesce(func.max(Position.id), 0)))
    return in_flight | unlinked | closed, newest


def _holdings() -> list[Holding]:
    with session_scope() as s:
        positions = s.scalars(select(Position).where(Position.status != "closed").order_by(Position.id)).all()
        sold = dict(s.execute(select(Order.position_id, func.sum(Order.filled_qty)).where(
            Order.position_id.in_([p.id for p in positions]), Order.side == "sell").group_by(Order.position_id)).all())
    return [Holding(p.id, p.symbol, p.status, p.qty - (sold.get(p.id) or 0.0), p.qty,
                    p.stop_loss_price, p.closing_at, p.exit_blocked_until) for p in positions]


def _unlinked_entries() -> list[Order]:
    """Entry orders that bought shares and have finished, but opened no position."""
    with session_scope() as s:
        return s.scalars(select(Order).where(Order.purpose == "entry", Order.position_id.is_(None),
                                             Order.filled_qty > 0, Order.status.in_(FINAL_ORDER_STATUSES))).all()


def _unadopted_entries() -> list[Finding]:
    return [_unadopted(o) for o in _unlinked_entries()]


def _unadopted(o: Order) -> Finding:
    return Finding("orphan_position", "critical", f"entry {o.client_order_id} bought {o.filled_qty:g} {o.symbol} but "
                   "no position records it", o.symbol, None, _order_view(o))


def _adopt_filled_entries(rt: Runtime, now: datetime) -> list[Finding]:
    """Open the position an entry's retries never got to open (it is then monitored like any other)."""
    from catalyst.entries import open_from_fill

    findings = []
    for order in _unlinked_entries():
        finding = _unadopted(order)
        try:
            report = rt.broker.get_order(order.client_order_id) or orders.report_of(order)
        except BrokerError as exc:
            finding.detail += f"; the broker could not say ({exc})"
            findings.append(finding)
            continue
        position = open_from_fill(rt, order.client_order_id, report, reason="reconciled")
        finding.position_id, finding.action = position.id, f"fixed: opened position {position.id} from the entry's fill"
        findings.append(finding)
    return findings


def _phantom(rt: Runtime, h: Holding, now: datetime, fix: bool, broker_view: dict) -> Finding:
    """We hold it, the broker does not: re-read its sells at the broker and close it with their fills."""
    finding = Finding("phantom_position", "critical", f"position {h.position_id} holds {h.qty:g} {h.symbol}; the "
                      "broker holds none", h.symbol, h.position_id, {"qty": h.qty, "status": h.status}, broker_view)
    if fix:
        _reread_sells(rt, h.position_id, now)
        _close_if_sold(rt, h, finding)
    return finding


def _sold_out(rt: Runtime, h: Holding, fix: bool) -> Finding:
    """Our own records show every share sold, yet the position is still open or closing."""
    finding = Finding("phantom_position", "warning", f"position {h.position_id} is {h.status} but its recorded "
                      f"sells cover all {h.bought:g} {h.symbol}", h.symbol, h.position_id,
                      {"qty": 0.0, "status": h.status})
    if fix:
        _close_if_sold(rt, h, finding)
    return finding


def _close_if_sold(rt: Runtime, h: Holding, finding: Finding) -> None:
    from catalyst.positions import close_with_fills, recorded_sell_fills

    fills = recorded_sell_fills(h.position_id)
    if not fills or sum(r.filled_qty for r in fills) + QTY_EPSILON < h.bought:
        finding.detail += "; no sell fill at the broker accounts for it"
        return
    purpose = _purpose_of(fills[-1])
    close_with_fills(rt, h.position_id, fills, reason={"stop": "stop_loss", "take_profit": "take_profit"}.get(purpose))
    finding.action = f"fixed: closed with the broker's fill at {_vwap(fills):g}"


def _reread_sells(rt: Runtime, position_id: int, now: datetime) -> None:
    """Sync every sell order (legs and exits) of a position from the broker: one of them took it flat."""
    with session_scope() as s:
        sells = s.scalars(select(Order).where(Order.position_id == position_id, Order.side == "sell")).all()
    for order in sells:
        try:
            report = (rt.broker.get_order_by_id(order.broker_order_id) if order.broker_order_id
                      else rt.broker.get_order(order.client_order_id))
        except BrokerError:
            continue
        if report is not None:
            _apply(order.id, report, now)


def _orphan(rt: Runtime, symbol: str, report, now: datetime, fix: bool, view: dict, broker_view: dict) -> Finding:
    """The broker holds shares we do not know: adopt them as a position so the monitor watches them."""
    finding = Finding("orphan_position", "critical", f"the broker holds {report.qty:g} {symbol}; no position of "
                      "ours does", symbol, None, view, broker_view)
    if not fix or report.qty < 0:
        if report.qty < 0:
            finding.detail += " (short: never adopted, an operator must look)"
        return finding
    report = rt.broker.get_position(symbol)  # confirm at the broker, and in our books, right before adopting
    if report is None or report.qty <= QTY_EPSILON or any(h.symbol == symbol for h in _holdings()):
        finding.detail += "; it settled while we looked: compared again on the next run"
        return finding
    price, settings = float(report.avg_entry_price), rt.settings
    with session_scope() as s:
        position = Position(security_id=security_id(s, symbol, rt.calendar.code), symbol=symbol, qty=report.qty,
                            status="open", entry_price=price, entry_volume=None, high_watermark=price,
                            stop_loss_price=round(price * (1 - settings.stop_loss_pct), 2),
                            take_profit_price=round(price * (1 + settings.take_profit_pct), 2),
                            max_hold_seconds=settings.max_hold_hours * 3600.0, entry_reason="adopted",
                            opened_at=now, last_price=price, updated_at=now)
        s.add(position)
        s.flush()
        record_activity(s, "position_adopted", now, position_id=position.id, symbol=symbol, qty=report.qty,
                        entry_price=price)
        finding.position_id = position.id
    finding.action = f"fixed: adopted as position {finding.position_id} and monitored"
    return finding


def _unprotected(rt: Runtime, holdings: list[Holding], now: datetime, fix: bool) -> list[Finding]:
    """A held position with broker legs must have a live stop for its whole quantity."""
    with session_scope() as s:
        stops = dict(s.execute(select(Order.position_id, func.sum(Order.qty - Order.filled_qty)).where(
            Order.purpose == "stop", Order.status.in_(LIVE_STOP_STATUSES)).group_by(Order.position_id)).all())
    findings = []
    for h in holdings:
        covered = stops.get(h.position_id) or 0.0
        if h.status != "open" or h.qty <= QTY_EPSILON or covered + QTY_EPSILON >= h.qty:
            continue
        finding = Finding("unprotected_position", "critical", f"position {h.position_id} holds {h.qty:g} {h.symbol} "
                          f"with a live stop for {covered:g}", h.symbol, h.position_id,
                          {"qty": h.qty, "stop_covers": covered, "stop_loss_price": h.stop_loss_price})
        if fix:
            _protect(rt, h, finding)
        findings.append(finding)
    return findings


def _protect(rt: Runtime, h: Holding, finding: Finding) -> None:
    """Place a stop for what is held, never above the market (the exit signals decide there)."""
    from catalyst.protection import ensure_protection

    try:
        quote = rt.market_data.quote(h.symbol, rt.clock.now())
        report = ensure_protection(rt, h.position_id, quote.price if quote else None, qty=h.qty, require_legs=False)
    except BrokerError as exc:
        finding.detail += f"; placing a stop failed ({exc})"
        return
    if report is not None:
        finding.action = f"fixed: stop placed at {report.stop_price or h.stop_loss_price:g} for {report.qty:g}"


# -- 3. liveness -------------------------------------------------------------------------------------------------
def _check_liveness(rt: Runtime, now: datetime) -> list[Finding]:
    grace = timedelta(seconds=2 * rt.settings.monitor_check_interval)
    with session_scope() as s:
        scheduled = {e.name: e for e in s.scalars(select(ScheduleEntry))}
        positions = s.scalars(select(Position).where(Position.status != "closed")).all()
        scan = scheduled.get(SCAN_ENTRY)
        scanned = scan is not None and scan.last_slot_at is not None and s.scalar(
            select(TradingCycle.id).where(TradingCycle.slot_at >= scan.last_slot_at).limit(1)) is not None
    from beat_schedule import MONITOR_PREFIX

    findings = [Finding("missing_monitor", "warning", f"position {p.id} has no monitor schedule (is beat running?)",
                        p.symbol, p.id, {"status": p.status}) for p in positions
                if f"{MONITOR_PREFIX}{p.id}" not in scheduled and now - p.opened_at > grace]
    stale = _stale_scans(rt, now, scan, scanned)
    if stale:
        findings.append(Finding("stale_cycle", "warning", f"{stale} while the market is open", ours={
            "last_slot_at": scan.last_slot_at.isoformat() if scan and scan.last_slot_at else None,
            "next_run_at": scan.next_run_at.isoformat() if scan and scan.next_run_at else None}))
    return findings


def _stale_scans(rt: Runtime, now: datetime, scan: ScheduleEntry | None, scanned: bool) -> str | None:
    """Why scanning has stalled in session for over 30 minutes, if it has (activity was due and none came)."""
    session = rt.calendar.session_at(now)
    if session is None or now - session.open <= STALE_CYCLE_AFTER:
        return None
    if scan is None:
        return "beat has scheduled no scan today"
    if scan.next_run_at is not None and now - scan.next_run_at > STALE_CYCLE_AFTER:
        return f"the scan due at {scan.next_run_at.isoformat()} was never sent (is beat running?)"
    if scan.last_slot_at is not None and not scanned and now - scan.last_slot_at > STALE_CYCLE_AFTER:
        return f"the scan sent for {scan.last_slot_at.isoformat()} never ran (is a scan worker running?)"
    return None


# -- recording and small helpers ----------------------------------------------------------------------------------
def _record(findings: list[Finding], now: datetime, fix: bool, worker: str | None) -> None:
    with session_scope() as s:
        for f in findings:
            record_activity(s, "reconcile_finding", now, position_id=f.position_id, symbol=f.symbol, **{
                k: v for k, v in f.as_dict().items() if k not in ("position_id", "symbol")})
        record_activity(s, "reconcile_run", now, fix=fix, worker=worker, findings=len(findings),
                        escalated=sum(f.action == "escalated" for f in findings))
    for f in findings:
        event = {"escalated": "reconcile_escalated"}.get(f.action, "reconcile_fixed" if f.action.startswith("fixed")
                                                         else "reconcile_finding")
        level = log.error if f.action == "escalated" else log.warning
        level(event, kind=f.kind, severity=f.severity, symbol=f.symbol, position_id=f.position_id, detail=f.detail,
              action=f.action)
    log.info("reconciled", findings=len(findings), fix=fix)


def _apply(order_id: int, report: BrokerOrderReport, now: datetime) -> None:
    with session_scope() as s:
        row = s.get(Order, order_id)
        if row is not None:
            orders.apply_report(row, report, now)


def _set_status(order_id: int, status: str, error: str, now: datetime) -> None:
    with session_scope() as s:
        s.execute(update(Order).where(Order.id == order_id).values(status=status, error=error, updated_at=now))


def _purpose_of(report: BrokerOrderReport) -> str | None:
    with session_scope() as s:
        return s.scalar(select(Order.purpose).where(Order.client_order_id == report.client_order_id))


def _vwap(fills: list[BrokerOrderReport]) -> float:
    qty = sum(r.filled_qty for r in fills)
    return round(sum(r.filled_qty * r.filled_avg_price for r in fills) / qty, 6)


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def _order_view(o: Order) -> dict:
    return {"client_order_id": o.client_order_id, "purpose": o.purpose, "status": o.status, "qty": o.qty,
            "filled_qty": o.filled_qty}


def _report_view(r: BrokerOrderReport | None) -> dict:
    return {} if r is None else {"status": r.status, "qty": r.qty, "filled_qty": r.filled_qty,
                                 "filled_avg_price": r.filled_avg_price}
