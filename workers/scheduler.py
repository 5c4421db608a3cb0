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
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from celery.beat import Scheduler
from sqlalchemy import delete, or_, select, update

import beat_schedule
from catalyst import leases
from catalyst.db.engine import session_scope
from catalyst.db.models import ScheduleEntry
from catalyst.runtime import get_runtime
from workers.heartbeat import beat_heart
from workers.signals import check_startup

log = structlog.get_logger("catalyst.beat")
LEASE = "beat"
MIN_SLEEP = 0.02


@dataclass(frozen=True)
class Claim:
    """A slot this beat claimed in ``schedule_entries``, with what the row said before the claim."""

    entry: str
    slot: datetime
    previous_slot: datetime | None
    previous_sent_at: datetime | None


class CatalystScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.service = f"beat@{socket.gethostname()}:{os.getpid()}"
        self.token: int | None = None
        self._last_heartbeat = 0.0
        self._unreleased: dict[str, Claim] = {}  # claims whose release could not be written yet
        self.rt = None
        super().__init__(*args, **kwargs)

    # -- celery hooks ----------------------------------------------------------------------
    def setup_schedule(self) -> None:
        check_startup("beat")
        self.rt = get_runtime()
        beat_heart(self.service, kind="beat", status="starting", reset=True)
        log.info("beat_started", holder=self.holder, clock=self.rt.settings.clock, market=self.rt.settings.market)

    @property
    def schedule(self) -> dict:
        with session_scope() as s:
            return {e.name: e for e in s.scalars(select(ScheduleEntry)).all()}

    def tick(self, *args, **kwargs) -> float:
        settings = self.rt.settings
        token = leases.acquire(LEASE, self.holder, settings.beat_lease_seconds)
        if token != self.token:
            log.info("beat_active" if token else "beat_standby", holder=self.holder, fence=token)
            self.token = token
        self._heartbeat("active" if token else "standby")
        self._retry_releases()  # even as standby: a slot we claimed but never sent belongs to the leader
        if token is None:
            return min(1.0, settings.beat_lease_seconds / 4)
        now = self.rt.clock.now()
        rows = self._sync_entries(now)
        for row in sorted(rows, key=lambda r: r.name != beat_schedule.RECONCILE_ENTRY):  # the watchdog goes first
            if row.next_run_at is not None and row.next_run_at <= now:
                try:
                    self._fire(row, now)
                except Exception as exc:  # noqa: BLE001 - an unwritten claim claimed nothing: next tick retries
                    log.warning("schedule_slot_claim_failed", entry=row.name, error=f"{type(exc).__name__}: {exc}")
        return self._sleep_until_next(rows, now)

    def close(self) -> None:
        if self.token is not None:
            leases.release(LEASE, self.holder)
            self.token = None
            log.info("beat_released", holder=self.holder)
        try:
            beat_heart(self.service, kind="beat", status="stopped")
        except Exception:
            pass
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
                    first = cal.next_slot(now, timedelta(seconds=w.interval_seconds), strict=False)
                    row = ScheduleEntry(name=name, task=w.task, queue=w.queue, args=list(w.args),
                                        interval_seconds=w.interval_seconds, next_run_at=first, total_sent=0,
                                        updated_at=datetime.now(UTC))
                    s.add(row)
                    log.info("schedule_entry_added", entry=name, first_run_at=first.isoformat())
                elif row.interval_seconds != w.interval_seconds:
                    row.interval_seconds = w.interval_seconds
                    row.next_run_at = cal.next_slot(now, timedelta(seconds=w.interval_seconds), strict=False)
            return [r for name, r in rows.items() if name in wanted] + [
                r for r in s.new if isinstance(r, ScheduleEntry)]

    def _fire(self, row: ScheduleEntry, now: datetime) -> None:
        cal = self.rt.calendar
        interval = timedelta(seconds=row.interval_seconds)
        slot = row.next_run_at
        if now - slot > interval:  # beat was away: skip to the current slot instead of replaying history
            slot = cal.latest_slot(now, interval)
        following = cal.next_slot(max(now, slot) if slot else now, interval)
        row.next_run_at = following  # what the sleep below plans with (the next tick re-reads the table)
        fence = leases.fence_clause(LEASE, self.holder, self.token)
        with session_scope() as s:
            if slot is None:
                s.execute(update(ScheduleEntry).where(ScheduleEntry.name == row.name).values(next_run_at=following))
                return
            claimed = s.execute(
                update(ScheduleEntry)
                .where(ScheduleEntry.name == row.name,
                       or_(ScheduleEntry.last_slot_at.is_(None), ScheduleEntry.last_slot_at < slot), fence)
                .values(last_slot_at=slot, next_run_at=following, last_sent_at=datetime.now(UTC),
                        total_sent=ScheduleEntry.total_sent + 1, updated_at=datetime.now(UTC))
            ).rowcount == 1
        if not claimed:
            return
        claim = Claim(row.name, slot, row.last_slot_at, row.last_sent_at)
        try:
            self._send(row, slot)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the slot must not be lost
            log.warning("schedule_slot_send_failed", entry=row.name, task=row.task, slot=slot.isoformat(),
                        fence=self.token, error=f"{type(exc).__name__}: {exc}")
            self._release(claim)
            return
        log.info("schedule_slot_sent", entry=row.name, task=row.task, slot=slot.isoformat(), fence=self.token)

    def _send(self, row: ScheduleEntry, slot: datetime) -> None:
        """Enqueue one slot of ``row``.

        A send that raises although Redis took the message (the reply was lost) is released and
        sent again: that duplicate is harmless, a lost slot is not. ``monitor_position`` holds a
        per-position lease (never two checks at once; exits are exactly-once by themselves) and
        ``scan`` returns the existing cycle for a slot it has already scanned (``slot_at`` is unique), and
        ``reconcile`` runs one at a time under its own lease.
        """
        expires = max(10.0, self.rt.clock.wall_seconds(row.interval_seconds) * 2)
        self.app.send_task(row.task, args=list(row.args), kwargs={"slot": slot.isoformat()}, queue=row.queue,
                           expires=expires, headers={"catalyst_slot": slot.isoformat(), "catalyst_entry": row.name})

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
