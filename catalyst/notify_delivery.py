"""Delivering one recorded alert to every configured channel, with bounded retries.

Run by ``catalyst.deliver_notification`` on the ``maintenance`` queue, never by a trading path.
Each channel keeps its own record in ``notifications.deliveries``
(``{"webhook": {"status", "attempts", "error", "at", "next_at", "target"}}``): a channel that
succeeded is never sent again when another one is retried. An attempt that fails with a
retryable problem (timeout, refused connection, 5xx, 429, SMTP 4xx) is retried after a growing
pause, at most ``notify_max_retries`` times; then the channel is ``failed`` and
``notification_failed`` is logged. The row is ``sent`` when every channel delivered, ``failed``
when one gave up, ``logged`` when no channel is configured.

Only one delivery runs at a time across all workers (a lease): a receiver that hangs holds at
most one worker process for one timeout, never the pool that exits run on.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import update

from catalyst import leases
from catalyst.core.domain import BadInput
from catalyst.db.engine import session_scope
from catalyst.db.models import Notification
from catalyst.notify_channels import EMAIL, SENDERS, WEBHOOK, Alert, DeliveryFailed, configured, target

log = structlog.get_logger("catalyst.notify")

SENDER_LEASE = "notification-sender"
BACKOFF_BASE = 2.0  # seconds before the first retry; doubled each time
BACKOFF_MAX = 60.0
BUSY_RETRY = 2.0  # another delivery holds the sender: look again this much later
SOCKET_OPERATIONS = {WEBHOOK: 2, EMAIL: 6}  # timeouts one attempt can spend (connect, read / SMTP steps)
SETTLED = ("sent", "failed")


@dataclass(frozen=True)
class Outcome:
    """``status``: sent | failed | logged | pending | busy | not_due | settled | superseded (another
    delivery recorded the row first); ``retry_in``: run again then."""

    status: str
    retry_in: float | None = None


def backoff(attempts: int) -> float:
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


def deliver(notification_id: int, *, settings=None, worker: str | None = None) -> Outcome:
    """One delivery round for the row's channels that are due; safe to run twice or concurrently.

    The row is read again once the sender lease is held, and saved before the lease is given back:
    a second delivery that read the row while the first was sending (the outbox's and the sweep's,
    or a busy-retry chain) then sees what the first recorded and sends nothing again.
    """
    if settings is None:
        from catalyst.settings import get_settings

        settings = get_settings()
    channels = configured(settings)
    seen = _read(notification_id)
    if seen is None:
        return Outcome("settled")
    if not channels:
        return Outcome("logged" if _save(notification_id, seen.deliveries, seen.attempts, seen.attempts, "logged")
                       else "superseded")
    if not _due(seen, channels):  # a cheap look first: nothing to send means no lease to wait for
        return _idle(seen, channels)
    holder = f"{worker or socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    ttl = sum(SOCKET_OPERATIONS[c] for c in channels) * settings.notify_timeout + 10
    if leases.acquire(SENDER_LEASE, holder, ttl) is None:
        return Outcome("busy", BUSY_RETRY)
    try:
        row = _read(notification_id)  # what another delivery recorded while this one waited
        if row is None:
            return Outcome("settled")
        due = _due(row, channels)
        if not due:
            return _idle(row, channels)
        deliveries = dict(row.deliveries)
        for channel in due:
            deliveries[channel] = _attempt(channel, settings, row.alert, deliveries.get(channel, {}))
        return _finish(row, deliveries, row.attempts + 1, channels)
    finally:
        try:
            leases.release(SENDER_LEASE, holder)
        except Exception:  # noqa: BLE001 - it expires on its own
            pass


@dataclass(frozen=True)
class _Row:
    """A pending row as one read saw it."""

    alert: Alert
    deliveries: dict
    attempts: int


def _read(notification_id: int) -> _Row | None:
    """The row if it is still ``pending``, else None (settled); an unknown id is bad input."""
    with session_scope() as s:
        row = s.get(Notification, notification_id)
        if row is None:
            raise BadInput(f"unknown notification id {notification_id}")
        if row.status != "pending":
            return None
        alert = Alert(row.id, row.event, row.severity, row.title, row.text, row.occurred_at, dict(row.context or {}))
        return _Row(alert, {k: dict(v) for k, v in (row.deliveries or {}).items()}, row.attempts)


def _open(row: _Row, channels: list[str]) -> list[str]:
    return [c for c in channels if row.deliveries.get(c, {}).get("status") not in SETTLED]


def _due(row: _Row, channels: list[str]) -> list[str]:
    now = _now()
    return [c for c in _open(row, channels) if _next_at(row.deliveries.get(c)) <= now]


def _idle(row: _Row, channels: list[str]) -> Outcome:
    """Nothing due: a channel waits for its retry (queued by the delivery that set it), or every channel
    settled and only the row's status is left to record."""
    if _open(row, channels):
        return Outcome("not_due")
    return _finish(row, row.deliveries, row.attempts, channels)


def _attempt(channel: str, settings, alert: Alert, record: dict) -> dict:
    """One try on one channel; the channel's new record."""
    record = {**record, "attempts": record.get("attempts", 0) + 1, "target": target(channel, settings)}
    record.pop("next_at", None)
    try:
        SENDERS[channel](settings, alert)
    except DeliveryFailed as exc:
        record.update(error=exc.error, at=_now().isoformat())
        if exc.retryable and record["attempts"] <= settings.notify_max_retries:
            pause = backoff(record["attempts"])
            record.update(status="retrying", next_at=(_now() + timedelta(seconds=pause)).isoformat())
            log.info("notification_retry", notification_id=alert.notification_id, notify_event=alert.event,
                     channel=channel, error=exc.error, attempts=record["attempts"], retry_in=pause)
        else:
            record["status"] = "failed"
            log.warning("notification_failed", notification_id=alert.notification_id, notify_event=alert.event,
                        channel=channel, error=exc.error, attempts=record["attempts"])
        return record
    except Exception as exc:  # noqa: BLE001 - a bug in a sender must not leave the row pending forever
        record.update(status="failed", error=f"internal error ({type(exc).__name__})", at=_now().isoformat())
        log.warning("notification_failed", notification_id=alert.notification_id, notify_event=alert.event,
                    channel=channel, error=record["error"], attempts=record["attempts"])
        return record
    record.update(status="sent", error=None, at=_now().isoformat())
    log.info("notification_sent", notification_id=alert.notification_id, notify_event=alert.event, channel=channel,
             attempts=record["attempts"])
    return record


def _finish(row: _Row, deliveries: dict, attempts: int, channels: list[str]) -> Outcome:
    states = [deliveries.get(c, {}).get("status") for c in channels]
    if all(state == "sent" for state in states):
        status = "sent"
    elif any(state not in SETTLED for state in states):
        status = "pending"
    else:
        status = "failed"
    if not _save(row.alert.notification_id, deliveries, row.attempts, attempts, status):
        return Outcome("superseded")
    if status != "pending":
        return Outcome(status)
    waits = [_next_at(deliveries.get(c)) for c in channels if deliveries.get(c, {}).get("status") not in SETTLED]
    return Outcome("pending", max((min(waits) - _now()).total_seconds(), 0.0))


def _save(notification_id: int, deliveries: dict, read_attempts: int, attempts: int, status: str) -> bool:
    """Record a round only if the row is as this delivery read it (still pending, same attempts count):
    whatever another delivery recorded meanwhile is never overwritten. False when it was."""
    now = _now()
    values = dict(deliveries=deliveries, attempts=attempts, status=status)
    if status == "sent":
        values["sent_at"] = now
    with session_scope() as s:
        won = s.execute(update(Notification).where(Notification.id == notification_id,
                                                   Notification.status == "pending",
                                                   Notification.attempts == read_attempts)
                        .values(**values)).rowcount == 1
    if not won:
        log.warning("notification_superseded", notification_id=notification_id, status=status)
    return won


def _next_at(record: dict | None) -> datetime:
    text = (record or {}).get("next_at")
    return datetime.fromisoformat(text) if text else datetime.min.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)  # retries are about a receiver's wall time, not the market's
