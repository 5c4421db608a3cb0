"""Entries: validate, admit under the entry gate, submit once, open the position from what filled.

- **Admission** (:func:`admit_entry`) happens in one transaction under a lock shared by every
  process: the pre-trade risk checks (:mod:`catalyst.core.risk`: trading state, symbol, position
  limit, position value, sector exposure, daily-loss projection, reward:risk) judge the book as it
  is at the moment the intent row is written, counting every entry still in flight (pending,
  unknown, working, or filled but not yet a position), so neither a halt nor a concurrent entry
  can slip past a limit. The scanner's entries and an operator's are checked alike.
- **The send is claimed under the same lock** (:func:`claim_send`): the intent moves
  ``pending_submit → submitting`` only while trading is ACTIVE, so no send is claimed once HALTED
  commits; the emergency stop retires only intents never claimed, and treats a claimed one as at the
  broker or about to be (cancelled there, or looked for again by the next check).
- **Once an order may exist at the broker nothing gives up on it**: a retry resumes the
  recorded intent (no re-validation that a moved quote or a data outage could fail), every
  broker or transport error becomes :class:`OrderPending` (the task retries), and what is
  still unresolved when retries run out is found and mended by ``catalyst.reconcile``.
- **At most one position per entry order**: ``positions.entry_order_id`` is unique, and the
  order row is locked while its position is created, so redelivered tasks adopt one position.
- **No shares without a position**: what is checked before the send (the reason fits its column,
  the cycle exists, the client order id is not another path's) cannot fail after it; whatever
  still fails after a fill leaves the entry :class:`OrderPending`, so the task retries and adopts
  the filled order, never a position silently missing.
"""

from __future__ import annotations

import math
from datetime import timedelta

import structlog

from sqlalchemy import Float, String, and_, cast, func, literal, not_, null, select, union_all, update
from sqlalchemy.exc import IntegrityError, OperationalError

from catalyst import client_ids, orders, task_args
from catalyst.brokers.base import BrokerError, BrokerOrderReport, OrderRequest
from catalyst.db.engine import dialect_insert, session_scope
from catalyst.db.models import Order, Position, Security, TradingCycle, TradingState
from catalyst.core import risk, sizing
from catalyst.core.domain import BadInput, require_price
from catalyst.core.exits import quote_problem
from catalyst.notify import notify
from catalyst.orders import OrderPending
from catalyst.positions import RECENT_VOLUME_BARS, recent_volume
from catalyst.records import record_activity, record_decision, security_id
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.entries")
ENTRY_GATE = "entry_gate"
# An entry order in one of these states with nothing filled is over: the broker holds nothing for it.
DEAD_ENTRY_STATUSES = ("canceled", "rejected", "expired", "done_for_day", "replaced")
# Not known to be at the broker: admitted and never claimed (``pending_submit``), claimed for sending
# under the gate (``submitting``), or sent with an outcome nobody heard (``unknown``).
SENDABLE_STATUSES = ("pending_submit", "submitting", "unknown")
CLAIMED_STATUSES = ("submitting", "unknown")  # a send was claimed: it may be at the broker
# A claimed send not at the broker after this long died before it was sent. It must outlast the longest
# way from the claim to the POST: up to 2 min waiting for a rate-limit token, then 429 back-offs.
SEND_GRACE = timedelta(minutes=10)


class EntryRefused(BadInput):
    """The entry was refused at submission (a risk check, or a retired intent): nothing was sent.

    ``reason`` is the first refusal's code; ``refusals`` lists every rule the entry broke.
    """

    def __init__(self, reason: str, message: str, refusals: tuple[risk.Refusal, ...] = ()):
        super().__init__(message)
        self.reason = reason
        self.refusals = refusals or (risk.Refusal(reason, message),)


def is_halted(s, today=None) -> bool:
    return trading_state(s, today)[0] is not risk.TradingState.ACTIVE


STATE_KEY = "halted"  # the trading_state row that holds the trading state (ACTIVE, REDUCING, HALTED)


def guard_state(s, today=None) -> risk.GuardState:
    """The stored trading state, as it stands on market day ``today`` (REDUCING lifts on the next one)."""
    row = s.get(TradingState, STATE_KEY)
    return risk.GuardState.parse(row.value if row is not None else None).effective(today)


def trading_state(s, today=None) -> tuple[risk.TradingState, str | None]:
    """The trading state and why, from the ``halted`` row of ``trading_state`` (see :mod:`catalyst.guard`).

    ``{"halted": true}`` is HALTED; otherwise ``"state": "REDUCING"`` names it, for its ``market_day``
    only (without ``today`` it is taken as still in force); anything else is ACTIVE.
    """
    state = guard_state(s, today)
    return state.state, state.reason if state.state is not risk.TradingState.ACTIVE else None


SECTOR_LENGTH = 64  # securities.sector: a longer name must not fail the write that records a filled entry


def sector_of(rt: Runtime, symbol: str) -> str | None:
    """The configured sector of ``symbol`` (``sectors`` setting, symbol keys in any case)."""
    for name, sector in rt.settings.sectors.items():
        if name.strip().upper() == symbol and str(sector).strip():
            return str(sector).strip()[:SECTOR_LENGTH]
    return None


def book_snapshot(s, rt: Runtime, now, *, excluding_client_order_id: str | None = None) -> risk.Book:
    """The book the risk checks judge: holdings, entries in flight and today's realized P&L, in one read.

    One statement, so one snapshot: an entry turning into a position, or a position closing, between
    two reads could otherwise be counted twice or not at all. Positions are marked at their last
    price (the monitor's); an entry in flight at the price it was admitted at. Sectors come from the
    configured map, else from ``securities.sector``. "Today" is the market's day (exchange time zone).
    """
    start, end = risk.day_span(risk.market_day(now, rt.calendar.tz), rt.calendar.tz)
    held = (select(literal("held").label("kind"), Position.symbol, Position.qty,
                   func.coalesce(Position.last_price, Position.entry_price).label("price"),
                   Position.entry_price.label("cost"), Position.stop_loss_price.label("stop"),
                   Security.sector, cast(null(), Float).label("realized"))
            .outerjoin(Security, Security.id == Position.security_id).where(Position.status != "closed"))
    price = func.coalesce(Order.reference_price, Order.filled_avg_price, Order.take_profit_price, 0.0)
    in_flight = (select(literal("in_flight").label("kind"), Order.symbol, Order.qty, price.label("price"),
                        price.label("cost"), Order.stop_loss_price.label("stop"), Security.sector,
                        cast(null(), Float).label("realized"))
                 .outerjoin(Security, Security.symbol == Order.symbol)
                 .where(*_in_flight_entries(excluding_client_order_id)))
    closed = (select(literal("closed").label("kind"), Position.symbol, Position.qty,
                     Position.exit_price.label("price"), Position.entry_price.label("cost"),
                     Position.stop_loss_price.label("stop"), cast(null(), String).label("sector"),
                     Position.realized_pnl.label("realized"))
              .where(Position.status == "closed", Position.closed_at >= start, Position.closed_at < end))
    holdings, realized = [], 0.0
    for row in s.execute(union_all(held, in_flight, closed)):
        if row.kind == "closed":
            realized += float(row.realized or 0.0)
            continue
        holdings.append(risk.Holding(row.symbol, float(row.qty), float(row.price), float(row.cost),
                                     None if row.stop is None else float(row.stop),
                                     sector_of(rt, row.symbol) or row.sector, in_flight=row.kind == "in_flight"))
    state, why = trading_state(s, risk.market_day(now, rt.calendar.tz))
    return risk.Book(state, tuple(holdings), realized, why)


def _in_flight_entries(excluding_client_order_id: str | None) -> list:
    where = [Order.purpose == "entry", Order.position_id.is_(None),
             not_(and_(Order.status.in_(DEAD_ENTRY_STATUSES), Order.filled_qty <= 0))]
    if excluding_client_order_id is not None:
        where.append(Order.client_order_id != excluding_client_order_id)
    return where


def lock_entry_gate(s, now) -> None:
    """Serialize entry admissions across processes until this transaction ends.

    A touched ``trading_state`` row: a row lock on PostgreSQL, the database write lock on SQLite.
    """
    s.execute(dialect_insert(s, TradingState).values(key=ENTRY_GATE, value={}, updated_at=now)
              .on_conflict_do_nothing(index_elements=["key"]))
    s.execute(update(TradingState).where(TradingState.key == ENTRY_GATE).values(updated_at=now))


def entry_client_order_id(cycle_id: int, symbol: str) -> str:
    return client_ids.entry(cycle_id, symbol)


def _own_client_order_id(client_order_id) -> str:
    """An entry may not be sent under an id another path owns: that path would adopt the buy as its own."""
    owner = client_ids.owner(client_order_id) if isinstance(client_order_id, str) else None
    if not isinstance(client_order_id, str) or not client_order_id or len(client_order_id) > client_ids.MAX_LENGTH \
            or not client_order_id.isascii() or owner not in (None, "entry", "manual"):
        raise BadInput(f"client_order_id {task_args.shown(client_order_id)} cannot name an entry"
                       + (f": it belongs to the {owner} path" if owner else ""))
    return client_order_id


def validate_entry(rt: Runtime, symbol: str, qty: float, stop: float | None, target: float | None):
    """Refuse bad entries before anything is written; returns (symbol, qty, quote, stop, target)."""
    symbol = (symbol or "").strip().upper()
    try:
        qty = float(qty)
    except (TypeError, ValueError):
        raise BadInput(f"qty {qty!r} is not a number") from None
    if not math.isfinite(qty) or qty <= 0:
        raise BadInput(f"qty must be above zero, got {qty:g}")
    knows = getattr(rt.market_data, "knows", None)
    if not (knows(symbol) if knows else symbol in rt.market_data.symbols()):
        raise BadInput(f"unknown symbol {symbol!r}: market data {rt.market_data.name} does not list it")
    quote = rt.market_data.quote(symbol, rt.clock.now())
    now = rt.clock.now()  # after the quote arrived: a slow fetch must not make a fresh quote look "future"
    problem = quote_problem(quote, now, timedelta(seconds=rt.settings.max_quote_age))
    if problem:
        raise BadInput(f"cannot enter {symbol} at {now.isoformat()}: {problem.replace('_', ' ')}")
    stop, target = _price_or_none(stop, "stop"), _price_or_none(target, "target")
    if stop is not None and stop >= quote.price:
        raise BadInput(f"stop {stop:g} must be below the current price {quote.price:g} of {symbol}")
    if target is not None and target <= quote.price:
        raise BadInput(f"target {target:g} must be above the current price {quote.price:g} of {symbol}")
    return symbol, qty, quote, stop, target


def _price_or_none(value, name: str) -> float | None:
    if value is None:
        return None
    try:
        return require_price(value, f"{name} price")
    except BadInput:
        raise BadInput(f"{name} price must be a number above zero, got {value!r}") from None


def open_position(rt: Runtime, *, symbol: str, qty: float, client_order_id: str, stop: float | None = None,
                  target: float | None = None, cycle_id: int | None = None, reason: str = "manual",
                  worker: str | None = None) -> Position:
    """Buy ``qty`` of ``symbol`` and record the position; rerunning with the same order id adopts it.

    With a broker that supports legs the entry is a bracket: stop and target live at the broker.
    Raises :class:`EntryRefused` (nothing sent), :class:`BadInput` (refused by the broker, nothing
    held) or :class:`OrderPending` (the order may exist, or filled and is not recorded yet: retry,
    or reconciliation resolves it).
    """
    client_order_id = _own_client_order_id(client_order_id)
    reason = task_args.reason(reason)  # it lands in decisions.reason once the shares are bought: check it now
    intent = _recorded_intent(client_order_id)
    if intent is not None and intent.position_id is not None:
        with session_scope() as s:
            return s.get(Position, intent.position_id)
    if intent is None:
        symbol, qty, quote, stop, target = validate_entry(rt, symbol, qty, stop, target)
        stop = stop if stop is not None else round(quote.price * (1 - rt.settings.stop_loss_pct), 2)
        target = target if target is not None else round(quote.price * (1 + rt.settings.take_profit_pct), 2)
        if cycle_id is not None:  # the scanner's plan, sized at scan time: kept within the value cap at today's price
            qty = _within_value_cap(rt, symbol, qty, quote.price)
        admit_entry(rt, client_order_id=client_order_id, symbol=symbol, qty=qty, price=quote.price, stop=stop,
                    target=target, cycle_id=cycle_id, worker=worker)
        intent = _recorded_intent(client_order_id)
        claim_send(rt, intent, worker, fresh=True)
    else:
        claim_send(rt, intent, worker, fresh=False)
    legs = {"stop_loss_price": intent.stop_loss_price, "take_profit_price": intent.take_profit_price} \
        if rt.broker.supports_legs and intent.stop_loss_price is not None else {}
    try:
        report = orders.submit(rt, OrderRequest(client_order_id, intent.symbol, "buy", intent.qty, **legs),
                               accept_partial=True, wait=rt.settings.fill_wait_seconds)
    except OrderPending:
        raise
    except (BrokerError, OSError, OperationalError) as exc:  # the order may exist: never give up on it here
        log.warning("entry_unresolved", client_order_id=client_order_id, error=str(exc))
        raise OrderPending(f"entry {client_order_id}: {exc}; will resolve by client id") from exc
    if report.filled_qty <= 0 or report.filled_avg_price is None:
        now = rt.clock.now()
        with session_scope() as s:
            record_decision(s, kind="entry", action="skip", reason=f"order_{report.status}", symbol=intent.symbol,
                            cycle_id=intent.cycle_id, decided_at=now, worker=worker,
                            details={"broker_reason": report.reason})
        if report.status == "rejected":
            notify("entry_refused", "warning", f"Entry refused: {intent.symbol}",
                   f"The broker refused the buy of {intent.qty:g} {intent.symbol}: {report.reason or 'refused'}. "
                   "Nothing is held.",
                   context={"symbol": intent.symbol, "qty": intent.qty, "reason": report.reason,
                            "client_order_id": client_order_id, "cycle_id": intent.cycle_id},
                   dedupe_key=f"entry_refused:{client_order_id}", occurred_at=now)
        raise BadInput(f"entry order for {intent.symbol} was {report.status}: {report.reason}")
    try:
        position = open_from_fill(rt, client_order_id, report, reason=reason, worker=worker)
    except Exception as exc:  # noqa: BLE001 - the shares are bought: retry until our books record them
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("entry_unrecorded", client_order_id=client_order_id, symbol=intent.symbol,
                  filled=report.filled_qty, error=error)
        raise OrderPending(f"entry {client_order_id} filled {report.filled_qty:g} {intent.symbol} at the broker "
                           f"but its position is not recorded yet ({error}); retrying") from exc
    _protect_at_once(rt, position)
    return position


def _protect_at_once(rt: Runtime, position: Position) -> None:
    """A partly filled bracket loses its legs with the cancelled rest: a stop for what filled goes in now,
    not at the first check (the monitor and the watchdog keep trying if the broker cannot take it yet)."""
    if not rt.broker.supports_legs:
        return
    from catalyst.protection import ensure_protection

    try:
        ensure_protection(rt, position.id)
    except (BrokerError, OSError) as exc:
        log.warning("entry_protection_deferred", position_id=position.id, error=str(exc))


def _within_value_cap(rt: Runtime, symbol: str, qty: float, price: float) -> float:
    """A planned entry whose price rose since it was sized buys fewer shares, not none: the plan is
    cut to the maximum position value at the entry's price (an operator's quantity is never cut)."""
    cap = rt.settings.max_position_value_usd
    if qty * price <= cap:
        return qty
    fitted = sizing.whole(cap / price)
    if fitted >= 1:
        log.info("entry_trimmed", symbol=symbol, planned=qty, qty=fitted, price=price, cap=cap)
        return float(fitted)
    return qty  # not even one share fits: the risk check refuses it with the numbers


def admit_entry(rt: Runtime, *, client_order_id: str, symbol: str, qty: float, price: float,
                stop: float | None, target: float | None, cycle_id: int | None, worker: str | None) -> None:
    """Run the pre-trade risk checks and write the intent, in one transaction under the entry gate.

    ``price`` is the quote the entry was validated at: the intent keeps it, and the checks of later
    entries value this one at it while it is in flight. A refusal is recorded in ``decisions``
    with every rule broken, and raised as :class:`EntryRefused`; nothing is written to ``orders``.
    """
    now = rt.clock.now()
    with session_scope() as s:
        lock_entry_gate(s, now)
        if cycle_id is not None and s.get(TradingCycle, cycle_id) is None:
            # Bad input, not a trading decision: nothing is recorded (the lock row rolls back with it).
            raise EntryRefused("unknown_cycle", f"unknown trading cycle id {cycle_id}: no entry in {symbol} is sent")
        entry = risk.Entry(symbol, qty, price, stop, target, _sector(s, rt, symbol))
        refusals = _refusal(s, rt, entry, client_order_id, now)
        if not refusals:
            if s.scalar(select(Order.id).where(Order.client_order_id == client_order_id)) is None:
                s.add(Order(client_order_id=client_order_id, symbol=symbol, side="buy", purpose="entry", qty=qty,
                            cycle_id=cycle_id, stop_loss_price=stop, take_profit_price=target, reference_price=price,
                            status="pending_submit", created_at=now, updated_at=now))
            return
        _record_refusal(s, entry, refusals, client_order_id, cycle_id, now, worker)
    raise _refused(entry, refusals, client_order_id)


def _refusal(s, rt: Runtime, entry: risk.Entry, client_order_id: str, now) -> list[risk.Refusal]:
    """Every rule ``entry`` breaks against the book as it is now (its own intent left out of the book)."""
    book = book_snapshot(s, rt, now, excluding_client_order_id=client_order_id)
    return risk.check_entry(entry, book, risk.Limits.of(rt.settings))


def _sector(s, rt: Runtime, symbol: str) -> str | None:
    return sector_of(rt, symbol) or s.scalar(select(Security.sector).where(Security.symbol == symbol))


def _record_refusal(s, entry: risk.Entry, refusals: list[risk.Refusal], client_order_id: str,
                    cycle_id: int | None, now, worker: str | None) -> None:
    record_decision(s, kind="entry", action="skip", reason=refusals[0].reason, symbol=entry.symbol,
                    cycle_id=cycle_id, decided_at=now, worker=worker, details={
                        "client_order_id": client_order_id,
                        "refusals": [{"reason": r.reason, "message": r.message} for r in refusals],
                        "entry": {"qty": entry.qty, "price": entry.price, "stop": entry.stop,
                                  "target": entry.target, "sector": entry.sector}})


def _refused(entry: risk.Entry, refusals: list[risk.Refusal], client_order_id: str) -> EntryRefused:
    log.warning("entry_refused", symbol=entry.symbol, reason=refusals[0].reason,
                reasons=[r.reason for r in refusals], client_order_id=client_order_id)
    return EntryRefused(refusals[0].reason, "; ".join(r.message for r in refusals), tuple(refusals))


INTENT_TTL = timedelta(minutes=10)  # an entry not sent by then is a stale decision: it is never sent


def claim_send(rt: Runtime, intent: Order, worker: str | None, *, fresh: bool) -> None:
    """Claim the right to send ``intent``, under the entry gate, at the moment of sending.

    In one transaction under the lock admission and every state change take, the order row moves
    ``pending_submit`` (or a claim that never reached the broker) to ``submitting`` by a conditional
    update, and only while trading is ACTIVE: once HALTED commits no send is claimed again, and an
    emergency stop treats a claimed entry as at the broker or about to be (it cancels it there, or
    leaves it to the next check), never as retired. A fresh admission is checked again for the state
    only (the limits were judged a moment ago, with this intent in flight); a retry or redelivery asks
    the broker by client id first (there: it is adopted, never sent twice) and then meets every limit
    again, and an intent older than ``INTENT_TTL`` is never sent. Returns when the send may go ahead
    (or the order is already at the broker: the submit adopts it); raises :class:`EntryRefused`
    (retired: nothing sent) or :class:`OrderPending` (a claim too recent to be declared dead).
    """
    retired = intent.status in DEAD_ENTRY_STATUSES and (intent.filled_qty or 0) <= 0
    if retired and not fresh:
        raise EntryRefused("retired", f"entry {intent.client_order_id} is {intent.status} ({intent.error}): "
                                      "never sent again")
    if not retired and intent.status not in SENDABLE_STATUSES:
        return  # at the broker already (a concurrent delivery sent it): the submit adopts it by client id
    if not fresh and _at_broker(rt, intent):
        return  # a claimed send that arrived: adopted, never sent again
    now = rt.clock.now()
    price = intent.reference_price
    if not fresh and price is None and now - intent.created_at <= INTENT_TTL:
        price = _quoted_price(rt, intent)  # an intent from before entries kept their price (read before the lock)
    entry = risk.Entry(intent.symbol, intent.qty, price or 0.0, intent.stop_loss_price, intent.take_profit_price)
    with session_scope() as s:
        lock_entry_gate(s, now)
        row = s.execute(select(Order.status, Order.filled_qty, Order.submitted_at, Order.updated_at)
                        .where(Order.client_order_id == intent.client_order_id)).one()
        if row.status in DEAD_ENTRY_STATUSES and (row.filled_qty or 0) <= 0:
            refusals = [risk.Refusal("retired", f"entry {intent.client_order_id} was retired ({row.status}) "
                                                "before it was sent")]
        elif row.status not in SENDABLE_STATUSES:
            return  # a concurrent delivery sent it meanwhile (e.g. it filled): the submit adopts it
        elif fresh:
            state, why = trading_state(s, risk.market_day(now, rt.calendar.tz))
            refusal = risk.state_refusal(state, why, intent.symbol)
            refusals = [refusal] if refusal else []
        elif now - intent.created_at > INTENT_TTL:
            refusals = [risk.Refusal("expired", f"entry {intent.client_order_id} was not sent within "
                                                f"{int(INTENT_TTL.total_seconds() // 60)} min: a stale decision "
                                                "is never sent")]
        else:
            entry = risk.Entry(intent.symbol, intent.qty, price, intent.stop_loss_price, intent.take_profit_price,
                               _sector(s, rt, intent.symbol))
            refusals = _refusal(s, rt, entry, intent.client_order_id, now)
        if not refusals:
            claimed = s.execute(update(Order).where(Order.client_order_id == intent.client_order_id,
                                                    Order.status == row.status)
                                .values(status="submitting", submitted_at=now, updated_at=now)).rowcount == 1
            log.info("entry_send_claimed" if claimed else "entry_send_claimed_elsewhere",
                     client_order_id=intent.client_order_id, was=row.status)
            return  # lost the row to a report of its send: the submit adopts that order by client id
        if row.status in CLAIMED_STATUSES:
            claimed_at = row.submitted_at or row.updated_at
            if now - claimed_at <= SEND_GRACE:
                # A send may be under way (a redelivery racing its first delivery): never retired under it.
                raise OrderPending(f"entry {intent.client_order_id} was claimed for sending "
                                   f"{(now - claimed_at).total_seconds():.0f} s ago and is not at the broker yet: "
                                   f"{refusals[0].reason}, resolved again later")
        if refusals[0].reason != "retired":
            s.execute(update(Order).where(Order.client_order_id == intent.client_order_id,
                                          Order.status == row.status)
                      .values(status="canceled", error=f"{refusals[0].reason} before it was sent", updated_at=now))
        _record_refusal(s, entry, refusals, intent.client_order_id, intent.cycle_id, now, worker)
    raise _refused(entry, refusals, intent.client_order_id)


def _at_broker(rt: Runtime, intent: Order) -> bool:
    """Whether the broker has this client id (a retry's first question: what it has is adopted, not resent)."""
    try:
        return rt.broker.get_order(intent.client_order_id) is not None
    except (BrokerError, OSError) as exc:
        raise OrderPending(f"entry {intent.client_order_id}: broker unreachable ({exc})") from exc


def _quoted_price(rt: Runtime, intent: Order) -> float:
    """An intent written before entries kept their admission price: today's quote stands in."""
    try:
        quote = rt.market_data.quote(intent.symbol, rt.clock.now())
        return require_price(quote.price, f"{intent.symbol} price")
    except Exception as exc:  # noqa: BLE001 - no price, no check: the task retries (the TTL retires it in the end)
        raise OrderPending(f"entry {intent.client_order_id}: no price to check it against the limits ({exc})") from exc


def retire_unsent_entry(client_order_id: str, now, reason: str, *, unclaimed_only: bool = False) -> bool:
    """Retire an entry intent the broker never received, under the gate lock, with a status the entry
    path never sends (``canceled``). True when it was retired.

    ``unclaimed_only`` (the emergency stop): only an intent whose send was never claimed; a claimed one
    may be on its way to the broker. Reconciliation retires claimed ones too, long after any send.
    """
    statuses = ("pending_submit",) if unclaimed_only else SENDABLE_STATUSES
    with session_scope() as s:
        lock_entry_gate(s, now)
        return s.execute(update(Order).where(Order.client_order_id == client_order_id,
                                             Order.status.in_(statuses))
                         .values(status="canceled", error=reason, updated_at=now)).rowcount == 1


def _recorded_intent(client_order_id: str) -> Order | None:
    with session_scope() as s:
        return s.scalar(select(Order).where(Order.client_order_id == client_order_id))


def open_from_fill(rt: Runtime, client_order_id: str, report: BrokerOrderReport, *, reason: str = "manual",
                   worker: str | None = None) -> Position:
    """Open the position for a filled (or partly filled) entry order, exactly once.

    The order row is locked first, so a concurrent run waits and then adopts the same position;
    the unique ``entry_order_id`` backs that up whatever the interleaving.
    """
    now = rt.clock.now()
    entry_volume = _entry_volume(rt, report.symbol, now)
    try:
        with session_scope() as s:
            s.execute(update(Order).where(Order.client_order_id == client_order_id).values(updated_at=now))
            order = s.scalar(select(Order).where(Order.client_order_id == client_order_id))
            orders.apply_report(order, report, now)
            if order.position_id is not None:
                return s.get(Position, order.position_id)
            position = _new_position(s, rt, order, report, entry_volume, reason)
            for leg in report.legs:
                orders.record_leg(s, leg, position.id, order.cycle_id, now)
            record_decision(s, kind="entry", action="enter", reason=reason, symbol=order.symbol,
                            position_id=position.id, cycle_id=order.cycle_id, decided_at=now, worker=worker,
                            details={"qty": position.qty, "ordered": order.qty, "price": report.filled_avg_price,
                                     "legs": len(report.legs)})
            record_activity(s, "position_opened", now, position_id=position.id, symbol=order.symbol,
                            qty=position.qty, entry_price=position.entry_price, stop=position.stop_loss_price,
                            target=position.take_profit_price, client_order_id=client_order_id)
    except IntegrityError:
        # Adoption only if another run opened this order's position between our read and our insert;
        # any other integrity error is a failure to record shares we hold, and is raised.
        adopted = _position_of_entry(client_order_id)
        if adopted is None:
            raise
        log.info("position_adopted", position_id=adopted.id, client_order_id=client_order_id)
        return adopted
    log.info("position_opened", position_id=position.id, symbol=position.symbol, qty=position.qty,
             entry_price=position.entry_price, stop=position.stop_loss_price, target=position.take_profit_price,
             client_order_id=client_order_id, legs=len(report.legs))
    return position


def _position_of_entry(client_order_id: str) -> Position | None:
    with session_scope() as s:
        return s.scalar(select(Position).join(Order, Order.id == Position.entry_order_id)
                        .where(Order.client_order_id == client_order_id))


def _entry_volume(rt: Runtime, symbol: str, now) -> float | None:
    """Recent volume at entry (for volume-collapse); a data outage must not stop the position opening."""
    try:
        bars = rt.market_data.bars(symbol, now, RECENT_VOLUME_BARS)
        return recent_volume(bars) or getattr(rt.market_data.quote(symbol, now), "volume", None)
    except Exception as exc:  # noqa: BLE001 - the shares are bought: record the position whatever the data says
        log.warning("entry_volume_unknown", symbol=symbol, error=str(exc))
        return None


def _new_position(s, rt: Runtime, order: Order, report: BrokerOrderReport, entry_volume, reason) -> Position:
    price = float(report.filled_avg_price)
    now = rt.clock.now()
    position = Position(
        security_id=security_id(s, order.symbol, rt.calendar.code, sector_of(rt, order.symbol)), symbol=order.symbol,
        qty=report.filled_qty, status="open", entry_price=price, entry_volume=entry_volume, high_watermark=price,
        stop_loss_price=order.stop_loss_price, take_profit_price=order.take_profit_price,
        max_hold_seconds=risk.max_hold_seconds(reason, rt.settings.max_hold_minutes_by_strategy,
                                               rt.settings.max_hold_hours), entry_reason=reason, cycle_id=order.cycle_id,
        entry_order_id=order.id, opened_at=report.filled_at or now, last_price=price, updated_at=now,
    )
    s.add(position)
    s.flush()
    order.position_id = position.id
    return position
