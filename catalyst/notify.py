"""Operator alerts: always to the log and ``agent_logs``; to a webhook and/or e-mail when configured.

:func:`notify` is called from the exit path, the risk monitor and the workers' alert watch, so it
never raises and never waits on a receiver or a queue:

1. the ``notifications`` row and its ``agent_logs`` row are written in one transaction (a
   ``dedupe_key`` seen before writes nothing and returns the first row's id);
2. the ``notification`` log line goes out (secret-looking keys and known secret values masked);
3. the row's id is handed to a per-process background thread that enqueues
   ``catalyst.deliver_notification`` on ``maintenance`` after the commit. A broker that is slow or
   down delays only that thread; whatever it could not enqueue stays ``pending`` and
   :func:`deliver_pending` (every minute, by the workers' alert watch in workers/heartbeat.py)
   queues it again.

Delivery itself (webhook, SMTP, retries) runs in the worker: see :mod:`catalyst.notify_delivery`.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

log = structlog.get_logger("catalyst.notify")

SEVERITIES = ("info", "warning", "critical")
DELIVER_TASK = "catalyst.deliver_notification"
PENDING_AFTER = timedelta(minutes=1)  # a pending row this old lost its enqueue (or its worker): queue it again
SWEEP_LIMIT = 100
KEY_LENGTH = 128
EXIT_FLUSH_SECONDS = 2.0  # a CLI process waits at most this long at exit for its enqueues
_SECRET_KEY = re.compile(r"(secret|api_key|apikey|password|passwd|token|authorization|webhook_url|cookie)", re.I)


def notify(event: str, severity: str, title: str, text: str, *, context: dict[str, Any] | None = None,
           dedupe_key: str | None = None, occurred_at: datetime | None = None) -> int | None:
    """Record an alert and queue its delivery; never raises and never waits on a receiver.

    ``severity`` is info | warning | critical. ``dedupe_key`` makes a fact alert once however
    often it is raised (``emergency_stop:2026-12-04``). Returns the notification's id, if recorded.
    """
    try:
        alert = _prepare(event, severity, title, text, context, dedupe_key, occurred_at)
    except Exception as exc:  # noqa: BLE001 - an alert must never break its caller
        log.warning("notification_not_recorded", notify_event=str(event)[:64], error=type(exc).__name__)
        return None
    try:
        notification_id, created, pending = _record(alert)
    except Exception as exc:  # noqa: BLE001 - the database may be away: the log line still tells the operator
        _log_line(alert, None, recorded=False, error=type(exc).__name__)
        return None
    if not created:
        log.debug("notification_duplicate", notify_event=alert["event"], notification_id=notification_id,
                  dedupe_key=alert["dedupe_key"])
        return notification_id
    _log_line(alert, notification_id, recorded=True)
    if pending:
        _outbox.put(notification_id)
    return notification_id


# -- preparing what is recorded ------------------------------------------------------------------
def _prepare(event, severity, title, text, context, dedupe_key, occurred_at) -> dict[str, Any]:
    secrets = _secret_values()
    when = occurred_at if isinstance(occurred_at, datetime) and occurred_at.tzinfo else _market_now()
    return {
        "event": str(event)[:64],
        "severity": severity if severity in SEVERITIES else "warning",
        "title": scrub(str(title), secrets)[:200],
        "text": scrub(str(text), secrets),
        "context": clean_context(context or {}, secrets),
        "dedupe_key": None if dedupe_key is None else bounded_key(str(dedupe_key)),
        "occurred_at": when,
    }


def bounded_key(key: str) -> str:
    """A dedupe key that fits its column: a long one keeps its head and gains a digest of the whole."""
    if len(key) <= KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[:KEY_LENGTH - 17]}#{digest}"


def clean_context(value: Any, secrets: list[str], depth: int = 0) -> Any:
    """JSON-safe, secret-free context: secret-looking keys masked, known secret values cut out."""
    if depth > 4:
        return str(value)[:200]
    if isinstance(value, dict):
        return {str(k): "***" if _SECRET_KEY.search(str(k)) else clean_context(v, secrets, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [clean_context(v, secrets, depth + 1) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return scrub(str(value), secrets)[:2000]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def _secret_values() -> list[str]:
    """Every configured secret, and the webhook's path (its token) on its own, longest first."""
    try:
        from urllib.parse import urlsplit

        from catalyst.settings import get_settings

        settings = get_settings()
    except Exception:  # noqa: BLE001 - bad configuration: nothing configured to leak
        return []
    values = [settings.webhook_url, settings.smtp_password, settings.alpaca_secret_key, settings.alpaca_api_key,
              settings.anthropic_api_key]
    if settings.webhook_url:
        path = urlsplit(settings.webhook_url).path
        values.append(path if len(path) > 8 else None)
    return sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True)


def _market_now() -> datetime:
    """This process's market clock if its runtime is built (simulated time in a replay), else wall time."""
    try:
        from catalyst import runtime

        if runtime._runtime is not None:
            return runtime._runtime.clock.now()
    except Exception:  # noqa: BLE001
        pass
    return datetime.now(UTC)


def _channels() -> list[str]:
    from catalyst.notify_channels import configured
    from catalyst.settings import get_settings

    return configured(get_settings())


# -- recording ------------------------------------------------------------------------------------
def _record(alert: dict[str, Any]) -> tuple[int, bool, bool]:
    """(id, newly created, delivery pending). One transaction: the notification and its agent_logs row."""
    from catalyst.db.engine import session_scope

    pending = bool(_channels())
    with session_scope() as s:
        notification_id, created = _insert(s, alert, pending)
    return notification_id, created, created and pending


def _insert(s, alert: dict[str, Any], pending: bool) -> tuple[int, bool]:
    """Write the notification and its agent_logs row in ``s``'s transaction; (id, newly created)."""
    from sqlalchemy import insert, select

    from catalyst.db.engine import dialect_insert
    from catalyst.db.models import AgentLog, Notification

    now = datetime.now(UTC)
    inserted = s.execute(
        dialect_insert(s, Notification).values(
            event=alert["event"], severity=alert["severity"], title=alert["title"], text=alert["text"],
            context=alert["context"], dedupe_key=alert["dedupe_key"], status="pending" if pending else "logged",
            deliveries={}, attempts=0, occurred_at=alert["occurred_at"], created_at=now)
        .on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Notification.id)
    ).scalar()
    if inserted is None:
        return s.scalar(select(Notification.id).where(Notification.dedupe_key == alert["dedupe_key"])), False
    s.execute(insert(AgentLog).values(timestamp=now, level=alert["severity"].upper(), event="notification",
                                      service=structlog.contextvars.get_contextvars().get("service"),
                                      context={**alert["context"], "notification_id": inserted,
                                               "notify_event": alert["event"], "title": alert["title"],
                                               "text": alert["text"][:1000]}))
    return inserted, True


# -- the outbox: an alert recorded in the caller's transaction -----------------------------------------
@dataclass(frozen=True)
class Recorded:
    """An alert written in a caller's transaction, announced by :func:`release` once that commits."""

    id: int
    alert: dict[str, Any]
    created: bool
    pending: bool


def record_in(session, event: str, severity: str, title: str, text: str, *, context: dict[str, Any] | None = None,
              dedupe_key: str | None = None, occurred_at: datetime | None = None) -> Recorded | None:
    """Record an alert inside the caller's transaction (an outbox): it commits with the state change it
    announces, or rolls back with it, so a process that dies right after the commit still leaves the alert
    ``pending`` for :func:`deliver_pending`. Call :func:`release` after the commit (log line, enqueue).

    Never raises for the alert's own sake: a failed insert is rolled back to a savepoint (the caller's
    writes stand) and logged; ``None`` is returned. Takes no lock beyond the row it inserts.
    """
    try:
        alert = _prepare(event, severity, title, text, context, dedupe_key, occurred_at)
        pending = bool(_channels())
    except Exception as exc:  # noqa: BLE001 - an alert must never break its caller
        log.warning("notification_not_recorded", notify_event=str(event)[:64], error=type(exc).__name__)
        return None
    session.flush()  # the caller's own pending writes: their errors are theirs, never swallowed here
    try:
        with session.begin_nested():
            notification_id, created = _insert(session, alert, pending)
    except Exception as exc:  # noqa: BLE001 - rolled back to the savepoint: the caller's transaction goes on
        _log_line(alert, None, recorded=False, error=type(exc).__name__)
        return None
    return Recorded(notification_id, alert, created, created and pending)


def release(recorded: Recorded | None) -> None:
    """After the caller's commit: the ``notification`` log line and the delivery's enqueue (never waits).

    If the process dies before this runs, the row is already committed: the sweep queues it."""
    if recorded is None:
        return
    try:
        if not recorded.created:
            log.debug("notification_duplicate", notify_event=recorded.alert["event"], notification_id=recorded.id,
                      dedupe_key=recorded.alert["dedupe_key"])
            return
        _log_line(recorded.alert, recorded.id, recorded=True)
        if recorded.pending:
            _outbox.put(recorded.id)
    except Exception as exc:  # noqa: BLE001 - the row is committed: the sweep delivers it
        log.warning("notification_release_failed", notification_id=recorded.id, error=type(exc).__name__)


def _log_line(alert: dict[str, Any], notification_id: int | None, *, recorded: bool, error: str | None = None):
    fields = {k: v for k, v in alert["context"].items() if k not in ("event", "level", "timestamp")}
    fields.update(notify_event=alert["event"], severity=alert["severity"], title=alert["title"], text=alert["text"],
                  notification_id=notification_id)
    if not recorded:
        fields.update(recorded=False, error=error)
        log.warning("notification", **fields)  # unrecorded: at least loud enough to be seen
    else:
        log.info("notification", **fields)


# -- enqueueing the delivery -------------------------------------------------------------------------
def enqueue_delivery(notification_id: int, countdown: float | None = None) -> None:
    """Put ``catalyst.deliver_notification`` on ``maintenance`` (no publish retries: the sweep is the retry)."""
    from catalyst.celery import app

    app.send_task(DELIVER_TASK, args=[notification_id], countdown=countdown, retry=False)


class _Outbox:
    """One background thread per process that enqueues deliveries, so the caller never waits on the broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[int] | None = None
        self._registered = False

    def put(self, notification_id: int) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: the parent's thread is not here
                # redis-py imports it lazily, and at import it registers a shutdown hook: refused if the
                # enqueue runs while a short-lived process (the CLI) is already exiting.
                import concurrent.futures.thread  # noqa: F401

                self._queue = queue.Queue()
                self._pid = os.getpid()
                threading.Thread(target=self._run, args=(self._queue,), name="notify-outbox", daemon=True).start()
                if not self._registered:
                    _at_exit(self.flush, EXIT_FLUSH_SECONDS)
                    self._registered = True
            self._queue.put(notification_id)

    def _run(self, q: queue.Queue[int]) -> None:
        while True:
            notification_id = q.get()
            try:
                enqueue_delivery(notification_id)
            except Exception as exc:  # noqa: BLE001 - the row stays pending; deliver_pending queues it again
                log.warning("notification_enqueue_failed", notification_id=notification_id, error=type(exc).__name__)
            finally:
                q.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for this process's enqueues (a short-lived CLI before it exits)."""
        q = self._queue if self._pid == os.getpid() else None
        deadline = time.monotonic() + timeout
        while q is not None and q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return q is None or not q.unfinished_tasks


def _at_exit(fn, *args) -> None:
    """Run ``fn`` as the main thread ends, while the interpreter still works normally (the hook
    concurrent.futures uses): under plain ``atexit`` the broker client may no longer start a thread."""
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(fn, *args)
            return
    except RuntimeError:  # already shutting down
        return
    atexit.register(fn, *args)


_outbox = _Outbox()


def flush(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    return _outbox.flush(timeout)


# -- the sweep ----------------------------------------------------------------------------------------
def deliver_pending(rt=None, *, older_than: timedelta = PENDING_AFTER) -> int:
    """Queue again every ``pending`` notification created more than ``older_than`` ago (its enqueue was
    lost: broker away, process gone). Never raises; returns how many were queued. Duplicates are
    harmless: a delivery run skips rows that are not due or already settled."""
    from sqlalchemy import select

    from catalyst.db.engine import session_scope
    from catalyst.db.models import Notification

    try:
        cutoff = datetime.now(UTC) - older_than
        with session_scope() as s:
            ids = list(s.scalars(select(Notification.id).where(Notification.status == "pending",
                                                               Notification.created_at <= cutoff)
                                 .order_by(Notification.id).limit(SWEEP_LIMIT)))
    except Exception as exc:  # noqa: BLE001 - called from the alert watch: never its problem
        log.warning("notification_sweep_failed", error=type(exc).__name__)
        return 0
    queued = 0
    for notification_id in ids:
        try:
            enqueue_delivery(notification_id)
            queued += 1
        except Exception as exc:  # noqa: BLE001
            log.warning("notification_enqueue_failed", notification_id=notification_id, error=type(exc).__name__)
            break  # the broker is away: the next sweep tries again
    if queued:
        log.info("notifications_requeued", count=queued)
    return queued
