"""CatalystScheduler: a Celery beat scheduler driven by the exchange calendar and the database.

- Only the holder of the ``beat`` lease sends anything; a standby beat polls and takes over
  within the lease time (20 s by default) if the active one dies.
- Slots are computed in market time (possibly simulated) and always fall inside a session:
  nothing is sent on weekends, holidays or after an early close, and a missed slot is
  skipped to the next in-session one rather than deferred to the open.
- The schedule is kept in memory and costs O(changes) per tick: the open positions' ids (one narrow
  query) add and remove monitor entries, and only ``schedule_entries`` rows another beat changed
  (``updated_at`` past a watermark, minus this beat's own writes) are read again. The whole table is
  read on taking the lease, after a failed tick, when a claim finds the table differs from memory, and
  every ``FULL_RELOAD_EVERY`` seconds as a backstop (a writer's clock skewed past ``WATERMARK_OVERLAP``).
- Every slot due in a tick is claimed with one conditional UPDATE fenced by the lease token, so even
  two beats that both think they lead cannot enqueue the same slot twice.
- The claimed slots go out through one producer connection, in send order (the watchdog, the guard,
  the checks), and the lease is renewed every ``RENEW_EVERY`` messages or quarter lease while sending:
  a beat that finds it lost the lease stops and hands the rest back.
- A claimed slot is sent or released, never lost: if the send fails the claim is handed back
  and the next tick (ours or a new leader's) sends it; one failed send never stops the tick.
- Outages are ridden out: no Redis or PostgreSQL error escapes :meth:`tick` (Celery's beat loop
  would exit on it and nothing would be checked again). Beat logs the outage, retries every
  ``OUTAGE_RETRY`` seconds, and resumes with the first tick after the servers return.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from celery import platforms
from celery.beat import Scheduler
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import String, bindparam, column, delete, func, insert, or_, select, update, values
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DisconnectionError, InterfaceError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

import beat_schedule
from catalyst import leases
from catalyst.db.engine import session_scope
from catalyst.db.models import ScheduleEntry
from catalyst.db.types import UTCDateTime
from catalyst.runtime import get_runtime
from workers.heartbeat import beat_heart
from workers.signals import check_startup
from workers.slot_message import publish_slot

ANCHORED_GRACE = timedelta(minutes=30)
log = structlog.get_logger("catalyst.beat")
LEASE = "beat"
MIN_SLEEP = 0.02
OUTAGE_RETRY = 0.5  # seconds between ticks while Redis or PostgreSQL is away: resume promptly on return
BROKER_DOWN_AFTER = 2  # consecutive failed sends in one tick: the broker is away, leave the rest due
OUTAGE_LOG_EVERY = 30.0  # seconds between "still away" lines during a long outage
SEND_BATCH = 500  # messages per Redis pipeline: one round trip, and what a failed flush hands back
RENEW_EVERY = 1000  # messages between lease renewals while sending one slot (and at least every lease / 4)
# Rows stamped up to this long before the last read are read again: covers a lease (20 s), a hung send (30 s socket
# timeout) and clock skew between beat hosts, so an old leader's release is seen by the new one. Cheap: this beat's
# own writes are skipped.
WATERMARK_OVERLAP = timedelta(seconds=120)
FULL_RELOAD_EVERY = 60.0  # seconds between whole-table reads, a backstop for the watermark
ENTRY_COLUMNS = ("name", "task", "queue", "args", "interval_seconds", "anchor", "offset_seconds", "next_run_at",
                 "last_slot_at", "last_sent_at", "updated_at")


def is_connection_error(exc: BaseException) -> bool:
    """Redis or PostgreSQL is away (refused, reset, timed out), as opposed to a bug or a bad row."""
    return isinstance(exc, (KombuOperationalError, SQLAlchemyOperationalError, InterfaceError, DisconnectionError,
                            ConnectionError, TimeoutError, OSError))


def _redis_away(exc: BaseException, producer) -> bool:
    """A failed pipeline flush (kombu's ``BatchPublishError``) carries the transport's own error (redis-py's
    ``ConnectionError``, no builtin one) as its cause: judge it by the transport's list of connection errors."""
    cause = exc.__cause__
    return is_connection_error(exc) or (
        cause is not None and (is_connection_error(cause) or isinstance(cause, producer.connection.connection_errors)))


class BrokerUnreachable(Exception):
    """Sends to Redis keep failing: the tick stops and the rest stays due (the cause is the send's error)."""


@dataclass(frozen=True)
class Claim:
    """A slot this beat claimed in ``schedule_entries``, with what the row said before the claim."""

    entry: str
    slot: datetime
    previous_slot: datetime | None
    previous_sent_at: datetime | None
    sent_at: datetime | None = None  # what this claim wrote to last_sent_at: a release matches only its own claim


@dataclass(slots=True)
class Entry:
    """What beat knows of one ``schedule_entries`` row: a plain copy, kept between ticks."""

    name: str
    task: str
    queue: str
    args: list
    interval_seconds: float
    anchor: str
    offset_seconds: float
    next_run_at: datetime | None
    last_slot_at: datetime | None
    last_sent_at: datetime | None
    updated_at: datetime | None


def _rows(session, alias: str, /, **columns: tuple) -> object:
    """Parallel lists as a table ``alias`` to join in one UPDATE (``column=(type, values)``).

    PostgreSQL unnests one array per column: a few parameters whatever the number of rows, one plan.
    Elsewhere (the embedded SQLite) a VALUES list in a CTE.
    """
    if session.get_bind().dialect.name == "postgresql":
        arrays = [bindparam(f"{alias}_{col}", list(vals), type_=ARRAY(type_)) for col, (type_, vals) in columns.items()]
        return func.unnest(*arrays).table_valued(
            *(column(col, type_) for col, (type_, _) in columns.items())).render_derived(name=alias)
    cols = [column(col, type_) for col, (type_, _) in columns.items()]
    return values(*cols, name=alias).data(list(zip(*(vals for _, vals in columns.values())))).cte(alias)


def _first_run(cal, w: beat_schedule.WantedEntry, now: datetime) -> datetime:
    """When a new entry first runs: its next slot, or an anchored time that has just passed."""
    if w.anchor == "session":
        return cal.next_slot(now, timedelta(seconds=w.interval_seconds), strict=False)
    offset = timedelta(seconds=w.offset_seconds)
    return (cal.latest_anchored(now, w.anchor, offset, ANCHORED_GRACE)
            or cal.next_anchored(now, w.anchor, offset, strict=False))


def _due_slot(cal, row: Entry | ScheduleEntry, now: datetime) -> tuple[datetime | None, datetime]:
    """(the slot to send now, or None if it was missed; the entry's following slot).

    Beat away for longer than a slot skips to the current slot instead of replaying history; a
    once-a-session time is still sent up to ``ANCHORED_GRACE`` late (a pre-market scan only
    before the open).
    """
    if row.anchor == "session":
        interval = timedelta(seconds=row.interval_seconds)
        slot = row.next_run_at
        if now - slot > interval:
            slot = cal.latest_slot(now, interval)
        return slot, cal.next_slot(max(now, slot) if slot else now, interval)
    offset = timedelta(seconds=row.offset_seconds)
    slot = cal.latest_anchored(now, row.anchor, offset, ANCHORED_GRACE)
    return slot, cal.next_anchored(max(now, slot) if slot else now, row.anchor, offset)


def _exit_on_sigquit() -> None:
    """SIGTERM, SIGINT and SIGQUIT end beat by raising ``SystemExit`` where it is; beat's loop turns that into
    a normal stop, whose ``close()`` releases the lease and says ``offline``.

    SIGQUIT: Celery's beat handles only SIGTERM and SIGINT; SIGQUIT's default action would kill it without
    ``close()``, leaving its row "active" to go stale. SIGTERM and SIGINT: Celery's own handler runs
    ``service.sync()`` (our ``close()``) inside the signal handler, so a signal landing between a lease
    UPDATE and its COMMIT had ``close()`` wait forever on the row lock its own interrupted transaction
    holds. ``setup_schedule`` runs after Celery installs that handler, so this one replaces it. Only from
    the main thread (an embedded ``worker -B`` beat runs in a thread, and the worker owns its signals)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _quit(signum, frame):
        raise SystemExit()

    platforms.signals.update(SIGTERM=_quit, SIGINT=_quit, SIGQUIT=_quit)


class CatalystScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.service = f"beat@{socket.gethostname()}:{os.getpid()}"
        self.token: int | None = None
        self._renewed_at = 0.0  # monotonic time the lease was last taken or renewed
        self._last_heartbeat = 0.0
        self._unreleased: dict[str, Claim] = {}  # claims whose release could not be written yet
        self._outage_since: float | None = None  # monotonic start of the current outage
        self._outage_kind: str | None = None  # "database" or "redis": what the current outage is of
        self._outage_logged = 0.0
        self._last_send_error: Exception | None = None
        self._handed_back = False  # this tick released claims it could not send
        self._entries: dict[str, Entry] | None = None  # the schedule in memory; None: read the whole table
        self._position_ids: set[int] = set()  # the open positions the monitor entries were made for
        self._read_at: datetime | None = None  # wall time of the last read of the table: the watermark
        self._reload_at = 0.0  # monotonic time of the next whole-table read
        self._own_stamps: set[datetime] = set()  # updated_at values this beat wrote since the watermark
        self.rt = None
        super().__init__(*args, **kwargs)

    # -- celery hooks ----------------------------------------------------------------------
    def setup_schedule(self) -> None:
        check_startup("beat")
        self.rt = get_runtime()
        beat_heart(self.service, kind="beat", status="starting", reset=True)
        _exit_on_sigquit()
        log.info("beat_started", holder=self.holder, clock=self.rt.settings.clock, market=self.rt.settings.market)

    @property
    def schedule(self) -> dict:
        with session_scope() as s:
            return {e.name: e for e in s.scalars(select(ScheduleEntry)).all()}

    def tick(self, *args, **kwargs) -> float:
        """One pass: renew the lease, then claim and send what is due. Never raises."""
        try:
            sleep, sent = self._tick()
        except BrokerUnreachable as exc:
            return self._in_outage(exc.__cause__ or exc, "redis")
        except Exception as exc:  # noqa: BLE001 - whatever it is, beat must not exit: log it and try again
            self._entries = None  # memory may no longer match the table: read it all on the next tick
            if not is_connection_error(exc):  # a bug or a bad row, not an outage: say so loudly, with a traceback
                self._heartbeat("failing")
            return self._in_outage(exc, "database" if is_connection_error(exc) else "error")
        if self._outage_kind != "redis" or sent:  # a Redis outage is over once something was sent
            self._outage_over()
        return sleep

    def _tick(self) -> tuple[float, bool]:
        settings = self.rt.settings
        self._retry_releases()  # even as standby: a slot we claimed but never sent belongs to the leader
        token = leases.acquire(LEASE, self.holder, settings.beat_lease_seconds)
        self._renewed_at = time.monotonic()
        if token != self.token:
            log.info("beat_active" if token else "beat_standby", holder=self.holder, fence=token)
            self.token = token
            self._entries = None  # another beat may have led meanwhile: read the whole table when leading
        self._heartbeat("active" if token else "standby")
        if token is None:
            return min(1.0, settings.beat_lease_seconds / 4), False
        now = self.rt.clock.now()
        entries = self._sync_entries(now)
        due = sorted((e for e in entries.values() if e.next_run_at is not None and e.next_run_at <= now),
                     key=lambda e: beat_schedule.send_order(e.name))  # the watchdog, the guard, the rest
        self._handed_back = False
        sent = self._send_due(due, now) if due else 0
        sleep = self._sleep_until_next(entries.values(), now)
        # A slot handed back is due at once: retry at the outage pace, not in a hot loop (Redis refusing, not away).
        return (max(sleep, OUTAGE_RETRY) if self._handed_back else sleep), sent > 0

    def _send_due(self, due: list[Entry], now: datetime) -> int:
        """Claim and send the tick's due slots; one summary line (what ``bench`` reads as beat seconds per slot)."""
        started = time.monotonic()
        claimed = self._claim(due, now)
        sent = self._send_claims(claimed) if claimed else 0
        log.info("schedule_tick_sent", due=len(due), claimed=len(claimed), sent=sent,
                 seconds=round(time.monotonic() - started, 3), fence=self.token)
        return sent

    def _in_outage(self, exc: BaseException, kind: str) -> float:
        """Log the outage once (and then every ``OUTAGE_LOG_EVERY`` s) and come back soon."""
        now = time.monotonic()
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        if self._outage_since is None or kind != self._outage_kind:
            self._outage_since = self._outage_since or now
            self._outage_logged = now
            if kind == "error":
                log.error("beat_tick_failed", holder=self.holder, error=error, exc_info=exc)
            else:
                log.error("beat_outage", holder=self.holder, server=kind, error=error)
        elif now - self._outage_logged >= OUTAGE_LOG_EVERY:
            self._outage_logged = now
            log.warning("beat_outage_continues", holder=self.holder, server=kind,
                        seconds=round(now - self._outage_since, 1), error=error)
        self._outage_kind = kind
        return OUTAGE_RETRY

    def _outage_over(self) -> None:
        if self._outage_since is not None:
            log.info("beat_recovered", holder=self.holder, server=self._outage_kind, fence=self.token,
                     outage_seconds=round(time.monotonic() - self._outage_since, 1))
            self._outage_since = self._outage_kind = None

    def close(self) -> None:
        self._retry_releases()  # hand back what an earlier tick could not, or the next leader skips it
        if self.token is not None:
            try:
                leases.release(LEASE, self.holder)
                log.info("beat_released", holder=self.holder)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL is away: the lease simply expires
                log.warning("beat_release_failed", holder=self.holder, error=f"{type(exc).__name__}: {exc}")
            self.token = None
        try:
            beat_heart(self.service, kind="beat", status="offline")  # a goodbye: never mistaken for a crash
        except Exception as exc:  # noqa: BLE001 - PostgreSQL is away: the row goes stale instead
            log.warning("goodbye_failed", service=self.service, error=type(exc).__name__)
        super().close()

    # -- the schedule in memory ------------------------------------------------------------
    def _sync_entries(self, now: datetime) -> dict[str, Entry]:
        """Bring the schedule in memory and ``schedule_entries`` up to date with what changed since the last tick."""
        with session_scope() as s:
            ids = beat_schedule.open_position_ids(s)
            if self._entries is None or time.monotonic() >= self._reload_at:
                self._reload(s)
                wanted = beat_schedule.wanted_entries(s, self.rt.settings, ids)
                self._apply(s, now, wanted, gone=set(self._entries) - set(wanted))
            else:
                self._read_changes(s)
                opened, closed = ids - self._position_ids, self._position_ids - ids
                wanted = {w.name: w for w in (beat_schedule.monitor_entry(i, self.rt.settings) for i in opened)}
                self._apply(s, now, wanted, gone={f"{beat_schedule.MONITOR_PREFIX}{i}" for i in closed})
            self._position_ids = ids
        return self._entries

    def _reload(self, s) -> None:
        """Read the whole table: on taking the lease, after a failed tick, and every ``FULL_RELOAD_EVERY`` s."""
        self._read_at = datetime.now(UTC)
        self._own_stamps.clear()
        self._entries = {e.name: e for e in self._select(s)}
        self._reload_at = time.monotonic() + FULL_RELOAD_EVERY

    def _read_changes(self, s) -> None:
        """Read again only the rows someone else wrote since the last read (this beat's own writes are in memory).

        The watermark overlaps the last read by ``WATERMARK_OVERLAP``: a write stamped just before that read
        may have committed just after it."""
        since, self._read_at = self._read_at - WATERMARK_OVERLAP, datetime.now(UTC)
        self._own_stamps = {stamp for stamp in self._own_stamps if stamp > since}
        table = ScheduleEntry.__table__
        for e in self._select(s, table.c.updated_at > since, table.c.updated_at.not_in(sorted(self._own_stamps))):
            self._entries[e.name] = e

    @staticmethod
    def _select(s, *where) -> list[Entry]:
        table = ScheduleEntry.__table__
        return [Entry(*row) for row in s.execute(select(*(table.c[c] for c in ENTRY_COLUMNS)).where(*where))]

    def _stamp(self) -> datetime:
        """An ``updated_at`` for one write of this beat, remembered so that reading changes skips it."""
        stamp = datetime.now(UTC)
        self._own_stamps.add(stamp)
        return stamp

    def _apply(self, s, now: datetime, wanted: dict[str, beat_schedule.WantedEntry], gone: set[str]) -> None:
        """Delete the ``gone`` entries, add the ``wanted`` ones that are missing, re-plan those whose timing changed."""
        entries, table = self._entries, ScheduleEntry.__table__
        gone = sorted(gone & entries.keys())
        if not gone and not wanted:
            return
        cal, stamp = self.rt.calendar, self._stamp()
        if gone:
            s.execute(delete(table).where(table.c.name.in_(gone)))
            for name in gone:
                del entries[name]
            log.info("schedule_entries_removed", entries=gone)
        added = []
        for name, w in wanted.items():
            e = entries.get(name)
            if e is None:
                e = entries[name] = Entry(name, w.task, w.queue, list(w.args), w.interval_seconds, w.anchor,
                                          w.offset_seconds, _first_run(cal, w, now), None, None, stamp)
                added.append(e)
            elif (e.interval_seconds, e.anchor, e.offset_seconds) != (w.interval_seconds, w.anchor, w.offset_seconds):
                e.interval_seconds, e.anchor, e.offset_seconds = w.interval_seconds, w.anchor, w.offset_seconds
                e.next_run_at, e.updated_at = _first_run(cal, w, now), stamp
                s.execute(update(table).where(table.c.name == name).values(
                    interval_seconds=e.interval_seconds, anchor=e.anchor, offset_seconds=e.offset_seconds,
                    next_run_at=e.next_run_at, updated_at=stamp))
        if added:
            s.execute(insert(table), [{c: getattr(e, c) for c in ENTRY_COLUMNS} | {"total_sent": 0} for e in added])
            for e in added:
                log.info("schedule_entry_added", entry=e.name, first_run_at=e.next_run_at.isoformat())

    # -- claiming and sending ---------------------------------------------------------------
    def _claim(self, due: list[Entry], now: datetime) -> list[tuple[Entry, Claim]]:
        """Claim every due slot with one fenced conditional UPDATE, and move missed ones on, in one transaction.

        Returns the claims this beat won, in ``due``'s order."""
        cal = self.rt.calendar
        plan = [(e, *_due_slot(cal, e, now)) for e in due]
        missed = [(e, following) for e, slot, following in plan if slot is None]
        todo = [(e, slot, following) for e, slot, following in plan if slot is not None]
        fence = leases.fence_clause(LEASE, self.holder, self.token)
        stamp, sent_at = self._stamp(), datetime.now(UTC)
        claims = [(e, Claim(e.name, slot, e.last_slot_at, e.last_sent_at, sent_at)) for e, slot, _ in todo]
        # Recorded as claims to hand back before the COMMIT: its reply may be lost, or a stop signal may land during
        # or just after it, and then close() must release them. Each release matches only this claim (its slot and
        # its sent_at), so releasing one that was never won changes nothing.
        self._unreleased.update((c.entry, c) for _, c in claims)
        with session_scope() as s:
            moved = self._move_missed(s, missed, fence, stamp) if missed else set()
            won = self._claim_slots(s, todo, fence, stamp, sent_at) if todo else set()
        for _, c in claims:
            if c.entry not in won and self._unreleased.get(c.entry) is c:
                del self._unreleased[c.entry]
        for e, slot, following in plan:
            e.next_run_at = following  # what the sleep plans with, claimed or not
            if e.name in won:
                e.last_slot_at, e.last_sent_at, e.updated_at = slot, sent_at, stamp
        if len(moved) < len(missed) or len(won) < len(todo):
            self._entries = None  # another beat wrote these rows, or the lease is gone: read the table next tick
        return [(e, c) for e, c in claims if c.entry in won]

    @staticmethod
    def _claim_slots(s, todo: list[tuple[Entry, datetime, datetime]], fence, stamp: datetime,
                     sent_at: datetime) -> set[str]:
        """The one statement that claims a tick's slots: only where the row has not had that slot yet."""
        table = ScheduleEntry.__table__
        due = _rows(s, "due", name=(String(), [e.name for e, _, _ in todo]),
                    slot=(UTCDateTime(), [slot for _, slot, _ in todo]),
                    following=(UTCDateTime(), [following for _, _, following in todo]))
        return set(s.scalars(
            update(table)
            .where(table.c.name == due.c.name,
                   or_(table.c.last_slot_at.is_(None), table.c.last_slot_at < due.c.slot), fence)
            .values(last_slot_at=due.c.slot, next_run_at=due.c.following, last_sent_at=sent_at,
                    total_sent=table.c.total_sent + 1, updated_at=stamp)
            .returning(table.c.name)))

    @staticmethod
    def _move_missed(s, missed: list[tuple[Entry, datetime]], fence, stamp: datetime) -> set[str]:
        """Entries whose slot was missed (beat away past an anchored time's grace) wait for their following one."""
        table = ScheduleEntry.__table__
        rows = _rows(s, "missed", name=(String(), [e.name for e, _ in missed]),
                     following=(UTCDateTime(), [following for _, following in missed]))
        return set(s.scalars(update(table).where(table.c.name == rows.c.name, fence)
                             .values(next_run_at=rows.c.following, updated_at=stamp).returning(table.c.name)))

    def _send_claims(self, claimed: list[tuple[Entry, Claim]]) -> int:
        """Publish the claimed slots and hand back whatever was not sent; returns how many were sent."""
        # Until its send returns, a claim is one to hand back: a stop signal's SystemExit (which no handler
        # below catches) leaves them here, and close() releases them so that the next beat sends the slots.
        self._unreleased.update((c.entry, c) for _, c in claimed)
        try:
            sent = self._publish(claimed)
        except Exception:
            self._release_unsent(claimed)
            raise
        self._release_unsent(claimed)
        return sent

    def _release_unsent(self, claimed: list[tuple[Entry, Claim]]) -> None:
        unsent = [c for _, c in claimed if self._unreleased.get(c.entry) is c]
        if unsent:
            self._handed_back = True
            self._release(unsent)

    def _publish(self, claimed: list[tuple[Entry, Claim]]) -> int:
        """Send the claims in order through one producer connection, ``SEND_BATCH`` messages per Redis
        round trip, renewing the lease between batches; returns how many were sent.

        Stops early when the lease is lost, and raises ``BrokerUnreachable`` after ``BROKER_DOWN_AFTER``
        connection errors in a row (one while Redis is known to be away): each send to a dead broker
        costs its publish retries. A failed send never stops the others."""
        give_up_after = 1 if self._outage_kind == "redis" else BROKER_DOWN_AFTER
        failed, total = 0, 0
        with self.app.producer_or_acquire() as producer:
            for start in range(0, len(claimed), SEND_BATCH):
                if not self._lease_kept(start):
                    break
                batch = claimed[start:start + SEND_BATCH]
                try:
                    sent, failed = self._send_batch(producer, batch, failed, give_up_after)
                except BrokerUnreachable:
                    raise
                except Exception as exc:  # noqa: BLE001 - the pipeline failed: Redis took all, some or none of it
                    # Handed back at the end of the tick: a duplicate is harmless, a lost slot is not.
                    log.warning("schedule_batch_send_failed", entries=len(batch), first=batch[0][0].name,
                                fence=self.token, error=f"{type(exc).__name__}: {exc} ({exc.__cause__!r})")
                    self._last_send_error = exc
                    if _redis_away(exc, producer):  # every message of the batch failed at once: Redis is away
                        raise BrokerUnreachable(batch[0][0].name) from (exc.__cause__ or exc)
                    failed = 0
                    continue
                for _, claim in sent:
                    self._unreleased.pop(claim.entry, None)
                self._log_sent(sent)
                total += len(sent)
        return total

    def _log_sent(self, sent: list[tuple[Entry, Claim]]) -> None:
        """One ``schedule_slots_sent`` line per task and slot of a batch, naming every entry sent (a line per
        message was a tenth of a 10,000-position slot's sending)."""
        groups: dict[tuple[str, datetime], list[str]] = {}
        for entry, claim in sent:
            groups.setdefault((entry.task, claim.slot), []).append(entry.name)
        for (task, slot), names in groups.items():
            log.info("schedule_slots_sent", task=task, slot=slot.isoformat(), count=len(names), entries=names,
                     fence=self.token)

    def _send_batch(self, producer, batch: list[tuple[Entry, Claim]], failed: int,
                    give_up_after: int) -> tuple[list[tuple[Entry, Claim]], int]:
        """Publish ``batch`` in one Redis pipeline: (the claims Redis took, the streak of connection errors).

        A message's own failure leaves it out; leaving with an exception (``BrokerUnreachable``, a stop
        signal) discards the whole pipeline unsent, so every claim in it is still one to hand back."""
        sent = []
        with producer.batch(max_size=SEND_BATCH * 16):  # room for every message: one flush, at the end
            for entry, claim in batch:
                try:
                    self._send(entry, claim.slot, producer)
                except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the slot must not be lost
                    log.warning("schedule_slot_send_failed", entry=entry.name, task=entry.task,
                                slot=claim.slot.isoformat(), fence=self.token, error=f"{type(exc).__name__}: {exc}")
                    self._last_send_error = exc
                    failed = failed + 1 if is_connection_error(exc) else 0  # only a connection error says Redis is away
                    if failed >= give_up_after:
                        raise BrokerUnreachable(entry.name) from exc
                    continue
                sent.append((entry, claim))
                failed = 0
        return sent, failed

    def _lease_kept(self, count: int) -> bool:
        """Renew the lease every ``RENEW_EVERY`` messages or quarter lease of one slot's sending; False once lost.

        ``count`` (messages handled so far) moves in steps of ``SEND_BATCH``."""
        ttl = self.rt.settings.beat_lease_seconds
        if count == 0 or (count % RENEW_EVERY and time.monotonic() - self._renewed_at < ttl / 4):
            return True
        token = leases.acquire(LEASE, self.holder, ttl)
        self._renewed_at = time.monotonic()
        if token == self.token:
            return True
        log.warning("beat_lease_lost_while_sending", holder=self.holder, fence=self.token, sent=count)
        return False

    def _send(self, entry: Entry, slot: datetime, producer) -> None:
        """Enqueue one slot of ``entry``.

        A send that raises although Redis took the message (the reply was lost) is released and
        sent again: that duplicate is harmless, a lost slot is not. ``monitor_position`` holds its
        position's lock (never two checks at once; exits are exactly-once by themselves) and
        ``scan`` returns the existing cycle for a slot it has already scanned (``slot_at`` is unique), and
        ``reconcile`` runs one at a time under its own lease.
        """
        expires = max(10.0, self.rt.clock.wall_seconds(self._market_lifetime(entry, slot)))
        slot_text = slot.isoformat()
        publish_slot(self.app, producer, task=entry.task, args=list(entry.args), kwargs={"slot": slot_text},
                     queue=entry.queue, expires=expires,
                     headers={"catalyst_slot": slot_text, "catalyst_entry": entry.name})

    def _market_lifetime(self, row: Entry | ScheduleEntry, slot: datetime) -> float:
        """Market seconds a slot's message stays worth running: two intervals on the session grid; a
        pre-market scan until the open (never a stale plan in the session); a summary for the grace."""
        if row.anchor == "session":
            return row.interval_seconds * 2
        if row.anchor == "open" and row.offset_seconds < 0:
            opens = slot - timedelta(seconds=row.offset_seconds)
            return (opens - self.rt.clock.now()).total_seconds()
        return ANCHORED_GRACE.total_seconds()

    def _release(self, claims: list[Claim]) -> None:
        """Hand unsent slots back (one statement) so that the next tick, ours or a new leader's, sends them.

        Conditional on each row still carrying its claim (``last_slot_at == slot``): only this beat
        ever claimed that slot and claims only move forward, so a release can never undo anyone
        else's claim. It is deliberately not fenced by the lease: a beat whose lease ran out while the
        send hung must still hand the slot back, or the new leader (which sees it claimed) skips it.
        If the release cannot be written either (PostgreSQL blipped too) it is retried every tick.
        """
        table, stamp = ScheduleEntry.__table__, self._stamp()
        try:
            with session_scope() as s:
                back = _rows(s, "back", name=(String(), [c.entry for c in claims]),
                             slot=(UTCDateTime(), [c.slot for c in claims]),
                             previous_slot=(UTCDateTime(), [c.previous_slot for c in claims]),
                             previous_sent_at=(UTCDateTime(), [c.previous_sent_at for c in claims]),
                             sent_at=(UTCDateTime(), [c.sent_at for c in claims]))
                released = set(s.scalars(
                    update(table).where(table.c.name == back.c.name, table.c.last_slot_at == back.c.slot,
                                        table.c.last_sent_at == back.c.sent_at)
                    .values(last_slot_at=back.c.previous_slot, last_sent_at=back.c.previous_sent_at,
                            next_run_at=back.c.slot, total_sent=table.c.total_sent - 1, updated_at=stamp)
                    .returning(table.c.name)))
        except Exception as exc:  # noqa: BLE001 - kept and retried next tick; must not stop this one
            self._unreleased.update((c.entry, c) for c in claims)
            log.error("schedule_slot_release_failed", entry=claims[0].entry, slot=claims[0].slot.isoformat(),
                      entries=len(claims), error=f"{type(exc).__name__}: {exc}")
            return
        for c in claims:
            if self._unreleased.get(c.entry) is c:
                del self._unreleased[c.entry]
            if c.entry in released:
                self._forget_claim(c, stamp)
            log.info("schedule_slot_released", entry=c.entry, slot=c.slot.isoformat(), released=c.entry in released)

    def _forget_claim(self, claim: Claim, stamp: datetime) -> None:
        """Memory follows a release: the slot is due again."""
        e = self._entries.get(claim.entry) if self._entries is not None else None
        if e is not None:
            e.last_slot_at, e.last_sent_at, e.next_run_at, e.updated_at = (
                claim.previous_slot, claim.previous_sent_at, claim.slot, stamp)

    def _retry_releases(self) -> None:
        """Write the releases an earlier tick could not (safe at any time: each is conditional)."""
        if self._unreleased:
            self._release(list(self._unreleased.values()))

    def _sleep_until_next(self, entries, now: datetime) -> float:
        """Sleep until the earliest next slot of the schedule in memory."""
        cap = self.max_interval or 1.0
        upcoming = min((e.next_run_at for e in entries if e.next_run_at is not None), default=None)
        if upcoming is None:
            return cap
        return max(MIN_SLEEP, min(cap, self.rt.clock.wall_seconds((upcoming - now).total_seconds())))

    def _heartbeat(self, status: str) -> None:
        interval = self.rt.settings.heartbeat_interval
        if time.monotonic() - self._last_heartbeat >= interval or status != getattr(self, "_hb_status", None):
            try:
                beat_heart(self.service, kind="beat", status=status, holder=self.holder)
            except Exception as exc:
                log.warning("heartbeat_failed", service=self.service, error=str(exc))
            self._last_heartbeat = time.monotonic()
            self._hb_status = status
