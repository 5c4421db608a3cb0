"""CatalystScheduler: a Celery beat scheduler driven by the exchange calendar and the database.

- Only the holder of the ``beat`` lease sends anything; a standby beat polls and takes over
  within the lease time (20 s by default) if the active one dies.
- Slots are computed in market time (possibly simulated) and always fall inside a session:
  nothing is sent on weekends, holidays or after an early close, and a missed slot is
  skipped to the next in-session one rather than deferred to the open.
- Each slot is claimed with a conditional UPDATE fenced by the lease token, so even two
  beats that both think they lead cannot enqueue the same slot twice.
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
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

import beat_schedule
from catalyst import leases
from catalyst.db.engine import session_scope
from catalyst.db.models import ScheduleEntry
from catalyst.runtime import get_runtime
from workers.heartbeat import beat_heart
from workers.signals import check_startup

ANCHORED_GRACE = timedelta(minutes=30)
log = structlog.get_logger("catalyst.beat")
LEASE = "beat"
MIN_SLEEP = 0.02
OUTAGE_RETRY = 0.5  # seconds between ticks while Redis or PostgreSQL is away: resume promptly on return
BROKER_DOWN_AFTER = 2  # consecutive failed sends in one tick: the broker is away, leave the rest due
OUTAGE_LOG_EVERY = 30.0  # seconds between "still away" lines during a long outage


def is_connection_error(exc: BaseException) -> bool:
    """Redis or PostgreSQL is away (refused, reset, timed out), as opposed to a bug or a bad row."""
    return isinstance(exc, (KombuOperationalError, SQLAlchemyOperationalError, InterfaceError, DisconnectionError,
                            ConnectionError, TimeoutError, OSError))


class BrokerUnreachable(Exception):
    """Sends to Redis keep failing: the tick stops and the rest stays due (the cause is the send's error)."""


@dataclass(frozen=True)
class Claim:
    """A slot this beat claimed in ``schedule_entries``, with what the row said before the claim."""

    entry: str
    slot: datetime
    previous_slot: datetime | None
    previous_sent_at: datetime | None


def _first_run(cal, w: beat_schedule.WantedEntry, now: datetime) -> datetime:
    """When a new entry first runs: its next slot, or an anchored time that has just passed."""
    if w.anchor == "session":
        return cal.next_slot(now, timedelta(seconds=w.interval_seconds), strict=False)
    offset = timedelta(seconds=w.offset_seconds)
    return (cal.latest_anchored(now, w.anchor, offset, ANCHORED_GRACE)
            or cal.next_anchored(now, w.anchor, offset, strict=False))


def _due_slot(cal, row: ScheduleEntry, now: datetime) -> tuple[datetime | None, datetime]:
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
        self._last_heartbeat = 0.0
        self._unreleased: dict[str, Claim] = {}  # claims whose release could not be written yet
        self._outage_since: float | None = None  # monotonic start of the current outage
        self._outage_kind: str | None = None  # "database" or "redis": what the current outage is of
        self._outage_logged = 0.0
        self._last_send_error: Exception | None = None
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
        if token != self.token:
            log.info("beat_active" if token else "beat_standby", holder=self.holder, fence=token)
            self.token = token
        self._heartbeat("active" if token else "standby")
        if token is None:
            return min(1.0, settings.beat_lease_seconds / 4), False
        now = self.rt.clock.now()
        rows = self._sync_entries(now)
        # Each send to a dead broker costs its publish retries: stop after a few failures in a row
        # (after one, while Redis is known to be away) and leave the rest due for the next tick.
        give_up_after = 1 if self._outage_kind == "redis" else BROKER_DOWN_AFTER
        failed, sent_any = 0, False
        for row in sorted(rows, key=lambda r: beat_schedule.send_order(r.name)):  # the watchdog, the guard, the rest
            if row.next_run_at is None or row.next_run_at > now:
                continue
            try:
                sent = self._fire(row, now)
            except Exception as exc:  # noqa: BLE001 - the claim is released (if written) and sent next tick
                log.warning("schedule_slot_claim_failed", entry=row.name, error=f"{type(exc).__name__}: {exc}")
                continue
            if sent is False:
                failed += 1
                if failed >= give_up_after:
                    raise BrokerUnreachable(row.name) from self._last_send_error
            else:
                failed, sent_any = 0, sent_any or bool(sent)
        return self._sleep_until_next(rows, now), sent_any

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

    # -- schedule maintenance ---------------------------------------------------------------
    def _sync_entries(self, now: datetime) -> list[ScheduleEntry]:
        """Make ``schedule_entries`` match what the database says should run."""
        settings, cal = self.rt.settings, self.rt.calendar
        with session_scope() as s:
            wanted = beat_schedule.wanted_entries(s, settings)
            rows = {r.name: r for r in s.scalars(select(ScheduleEntry)).all()}
            gone = [name for name in rows if name not in wanted]
            if gone:
                s.execute(delete(ScheduleEntry).where(ScheduleEntry.name.in_(gone)))
                log.info("schedule_entries_removed", entries=gone)
            for name, w in wanted.items():
                row = rows.get(name)
                if row is None:
                    first = _first_run(cal, w, now)
                    row = ScheduleEntry(name=name, task=w.task, queue=w.queue, args=list(w.args),
                                        interval_seconds=w.interval_seconds, anchor=w.anchor,
                                        offset_seconds=w.offset_seconds, next_run_at=first, total_sent=0,
                                        updated_at=datetime.now(UTC))
                    s.add(row)
                    log.info("schedule_entry_added", entry=name, first_run_at=first.isoformat())
                elif (row.interval_seconds, row.anchor, row.offset_seconds) != (
                        w.interval_seconds, w.anchor, w.offset_seconds):
                    row.interval_seconds, row.anchor, row.offset_seconds = w.interval_seconds, w.anchor, w.offset_seconds
                    row.next_run_at = _first_run(cal, w, now)
            return [r for name, r in rows.items() if name in wanted] + [
                r for r in s.new if isinstance(r, ScheduleEntry)]

    def _fire(self, row: ScheduleEntry, now: datetime) -> bool | None:
        """Claim and send ``row``'s due slot: True when sent, False when the send failed (released), else None."""
        slot, following = _due_slot(self.rt.calendar, row, now)
        row.next_run_at = following  # what the sleep below plans with (the next tick re-reads the table)
        fence = leases.fence_clause(LEASE, self.holder, self.token)
        if slot is None:
            with session_scope() as s:
                s.execute(update(ScheduleEntry).where(ScheduleEntry.name == row.name).values(next_run_at=following))
            return None
        claim = Claim(row.name, slot, row.last_slot_at, row.last_sent_at)
        try:
            with session_scope() as s:
                claimed = s.execute(
                    update(ScheduleEntry)
                    .where(ScheduleEntry.name == row.name,
                           or_(ScheduleEntry.last_slot_at.is_(None), ScheduleEntry.last_slot_at < slot), fence)
                    .values(last_slot_at=slot, next_run_at=following, last_sent_at=datetime.now(UTC),
                            total_sent=ScheduleEntry.total_sent + 1, updated_at=datetime.now(UTC))
                ).rowcount == 1
        except Exception:
            # The COMMIT may have happened with its reply lost: a claimed slot nobody sends. Releasing it is
            # conditional on the claim being there, so queueing the release is right either way.
            self._unreleased[claim.entry] = claim
            raise
        if not claimed:
            return None
        # Until the send returns, the claim is one to hand back: a stop signal's SystemExit (which no handler
        # below catches) leaves it here, and close() releases it so that the next beat sends the slot.
        self._unreleased[claim.entry] = claim
        try:
            self._send(row, slot)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the slot must not be lost
            log.warning("schedule_slot_send_failed", entry=row.name, task=row.task, slot=slot.isoformat(),
                        fence=self.token, error=f"{type(exc).__name__}: {exc}")
            self._last_send_error = exc
            self._release(claim)
            return False if is_connection_error(exc) else None  # only a connection error says Redis is away
        self._unreleased.pop(claim.entry, None)
        log.info("schedule_slot_sent", entry=row.name, task=row.task, slot=slot.isoformat(), fence=self.token)
        return True

    def _send(self, row: ScheduleEntry, slot: datetime) -> None:
        """Enqueue one slot of ``row``.

        A send that raises although Redis took the message (the reply was lost) is released and
        sent again: that duplicate is harmless, a lost slot is not. ``monitor_position`` holds a
        per-position lease (never two checks at once; exits are exactly-once by themselves) and
        ``scan`` returns the existing cycle for a slot it has already scanned (``slot_at`` is unique), and
        ``reconcile`` runs one at a time under its own lease.
        """
        expires = max(10.0, self.rt.clock.wall_seconds(self._market_lifetime(row, slot)))
        self.app.send_task(row.task, args=list(row.args), kwargs={"slot": slot.isoformat()}, queue=row.queue,
                           expires=expires, headers={"catalyst_slot": slot.isoformat(), "catalyst_entry": row.name})

    def _market_lifetime(self, row: ScheduleEntry, slot: datetime) -> float:
        """Market seconds a slot's message stays worth running: two intervals on the session grid; a
        pre-market scan until the open (never a stale plan in the session); a summary for the grace."""
        if row.anchor == "session":
            return row.interval_seconds * 2
        if row.anchor == "open" and row.offset_seconds < 0:
            opens = slot - timedelta(seconds=row.offset_seconds)
            return (opens - self.rt.clock.now()).total_seconds()
        return ANCHORED_GRACE.total_seconds()

    def _release(self, claim: Claim) -> None:
        """Hand an unsent slot back so that the next tick, ours or a new leader's, sends it.

        Conditional on the row still carrying this claim (``last_slot_at == slot``): only this beat
        ever claimed that slot and claims only move forward, so the release can never undo anyone
        else's claim. It is deliberately not fenced by the lease: a beat whose lease ran out while the
        send hung must still hand the slot back, or the new leader (which sees it claimed) skips it.
        If the release cannot be written either (PostgreSQL blipped too) it is retried every tick.
        """
        try:
            with session_scope() as s:
                released = s.execute(
                    update(ScheduleEntry)
                    .where(ScheduleEntry.name == claim.entry, ScheduleEntry.last_slot_at == claim.slot)
                    .values(last_slot_at=claim.previous_slot, last_sent_at=claim.previous_sent_at,
                            next_run_at=claim.slot, total_sent=ScheduleEntry.total_sent - 1,
                            updated_at=datetime.now(UTC))
                ).rowcount == 1
        except Exception as exc:  # noqa: BLE001 - kept and retried next tick; must not stop this one
            self._unreleased[claim.entry] = claim
            log.error("schedule_slot_release_failed", entry=claim.entry, slot=claim.slot.isoformat(),
                      error=f"{type(exc).__name__}: {exc}")
            return
        self._unreleased.pop(claim.entry, None)
        log.info("schedule_slot_released", entry=claim.entry, slot=claim.slot.isoformat(), released=released)

    def _retry_releases(self) -> None:
        """Write the releases an earlier tick could not (safe at any time: each is conditional)."""
        for claim in list(self._unreleased.values()):
            self._release(claim)

    def _sleep_until_next(self, rows: list[ScheduleEntry], now: datetime) -> float:
        """Sleep until the earliest next slot of the entries this tick already loaded."""
        cap = self.max_interval or 1.0
        upcoming = [r.next_run_at for r in rows if r.next_run_at is not None]
        if not upcoming:
            return cap
        return max(MIN_SLEEP, min(cap, self.rt.clock.wall_seconds((min(upcoming) - now).total_seconds())))

    def _heartbeat(self, status: str) -> None:
        interval = self.rt.settings.heartbeat_interval
        if time.monotonic() - self._last_heartbeat >= interval or status != getattr(self, "_hb_status", None):
            try:
                beat_heart(self.service, kind="beat", status=status, holder=self.holder)
            except Exception as exc:
                log.warning("heartbeat_failed", service=self.service, error=str(exc))
            self._last_heartbeat = time.monotonic()
            self._hb_status = status
