"""Heartbeats: each worker and beat upserts its ``service_health`` row on a wall-clock timer; and the
alert watch, which looks at those rows from a worker (never from beat) at all hours."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime

import structlog
from sqlalchemy import and_, update
from sqlalchemy.exc import IntegrityError

from catalyst import leases
from catalyst.db.engine import session_scope
from catalyst.db.models import ServiceHealth
from catalyst.records import COUNTERS, flush_counts

log = structlog.get_logger("catalyst.heartbeat")


def beat_heart(service: str, *, kind: str, status: str, reset: bool = False, url: str | None = None,
               **details) -> None:
    """Upsert this service's row; ``reset`` starts its counters afresh (a new process); ``url``: which
    database (default: the configured one).

    Anything but ``offline`` leaves a row alone that this same process (hostname and pid) already said
    ``offline`` about: a periodic heartbeat that was in flight during the goodbye lands after it and must not
    bring the row back to life (it would go stale and page someone). The condition is in the UPDATE itself,
    so it holds however the two writes interleave. A new process of the same name has another pid."""
    now = datetime.now(UTC)
    hostname, pid = socket.gethostname(), os.getpid()
    values = {"status": status, "last_heartbeat": now, "hostname": hostname, "pid": pid, "kind": kind}
    if details:
        values["details"] = details
    if reset:
        values.update({name: 0 for name in COUNTERS}, started_at=now)
    if _update_row(service, values, url):
        return
    try:
        with session_scope(url) as s:
            values.setdefault("started_at", now)
            s.add(ServiceHealth(service_name=service, **values))
    except IntegrityError:  # the row exists after all (created meanwhile, or our own goodbye): update it if allowed
        _update_row(service, values, url)


def _update_row(service: str, values: dict, url: str | None) -> bool:
    """The conditional UPDATE of :func:`beat_heart`; False when no row was changed."""
    where = [ServiceHealth.service_name == service]
    if values["status"] != "offline":
        where.append(~and_(ServiceHealth.status == "offline", ServiceHealth.hostname == values["hostname"],
                           ServiceHealth.pid == values["pid"]))
    with session_scope(url) as s:
        return bool(s.execute(update(ServiceHealth).where(*where).values(**values)).rowcount)


class HeartbeatThread(threading.Thread):
    """Beats every ``interval`` seconds until stopped; a failed beat is logged, never fatal.

    ``status`` is what the next beat reports: a worker draining its tasks in a warm shutdown says
    ``stopping`` (set from a signal handler, so only an attribute changes there; the beat does the I/O).
    """

    def __init__(self, service: str, kind: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{service}", daemon=True)
        self.service, self.kind, self.interval = service, kind, interval
        self.status = "online"
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                beat_heart(self.service, kind=self.kind, status=self.status)
            except Exception as exc:  # the database may be briefly away; the next beat retries
                log.warning("heartbeat_failed", service=self.service, error=str(exc))
            try:
                flush_counts()  # checks counted by this process (solo or thread pools; pool children flush their own)
            except Exception as exc:  # noqa: BLE001 - kept for the next flush
                log.warning("counts_flush_failed", when="heartbeat", error=type(exc).__name__)

    def stop(self, wait: float = 0.0) -> None:
        """Stop beating; with ``wait``, also let a beat in flight finish (so it cannot land after a goodbye)."""
        self._stop_event.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(wait)


GOODBYE_WAIT = 5.0  # seconds an exit waits for its goodbye (a hung database must not hold up the exit)


class Goodbye:
    """Says ``offline`` for one process, exactly once, however it ends.

    A warm shutdown sends Celery's ``worker_shutdown``; a cold one (SIGQUIT, or SIGTERM remapped to it
    by ``REMAP_SIGTERM=SIGQUIT`` on a PaaS) does not, but the process still leaves through
    ``sys.exit``, so an ``atexit`` hook says it then. Only the process that started the heartbeat says
    it: a forked pool child inherits this object and the atexit hook, never the right to speak for the
    worker (billiard children leave through ``os._exit`` anyway). A SIGKILL says nothing: the row goes
    stale after three intervals, which is what the watch is for.
    """

    def __init__(self, heartbeat: HeartbeatThread, *others, url: str | None = None) -> None:
        self.heartbeat, self.others = heartbeat, others
        self.url = url  # the database the heartbeat went to, whatever the process's settings say by its exit
        self.pid = os.getpid()
        self._said = False  # set only once ``offline`` was written: a failed goodbye is tried again at exit
        self._lock = threading.Lock()
        self._saying: threading.Thread | None = None

    def __call__(self, how: str = "shutdown") -> bool:
        """Say ``offline`` (then stop the other threads), waiting at most ``GOODBYE_WAIT`` seconds; True if
        this call said it.

        The writes run in a daemon thread: a database that accepts connections and never answers (a hung
        PostgreSQL, a dead proxy) must not hold up the process's exit. While an earlier goodbye is still
        hanging, a second one waits for it again rather than starting another. At interpreter shutdown (the
        ``atexit`` hook of a cold shutdown) Python starts no new thread, so that goodbye runs inline."""
        if os.getpid() != self.pid:
            return False
        with self._lock:
            if self._said:
                return False
            saying = self._saying
            if saying is None or not saying.is_alive():
                said = threading.Event()
                saying = threading.Thread(target=self._say, args=(how, said), name="goodbye", daemon=True)
                self._saying = saying
                try:
                    saying.start()
                except RuntimeError:  # an atexit hook (a cold shutdown): Python 3.12 starts no thread now
                    self._saying = None
                    _within(GOODBYE_WAIT, lambda: self._say(how, said))  # inline, bounded by a timer signal
                    return said.is_set()
            else:
                said = None
        saying.join(GOODBYE_WAIT)
        if saying.is_alive():
            log.warning("goodbye_timed_out", service=self.heartbeat.service, how=how, waited=GOODBYE_WAIT)
        return said is not None and said.is_set()

    def _say(self, how: str, said: threading.Event) -> None:
        """Offline first (what matters most), then hand over the other threads' leases."""
        self.heartbeat.stop()  # a beat still in flight cannot undo this: see beat_heart
        try:
            beat_heart(self.heartbeat.service, kind=self.heartbeat.kind, status="offline", url=self.url)
        except Exception as exc:  # noqa: BLE001 - the database is away: the row goes stale unless a later call says it
            log.warning("goodbye_failed", service=self.heartbeat.service, how=how, error=type(exc).__name__)
        else:
            self._said = True
            said.set()
            log.info("service_offline", service=self.heartbeat.service, kind=self.heartbeat.kind, how=how)
        for other in self.others:
            try:
                other.stop()
            except Exception:  # noqa: BLE001 - going away regardless
                pass


class _Overdue(BaseException):
    """Raised by the timer signal into a goodbye that outlived its wait (not an Exception: nothing swallows it)."""


def _within(seconds: float, fn) -> None:
    """Run ``fn`` on this thread for at most ``seconds``: a SIGALRM timer interrupts a hung database call
    (psycopg waits in Python, so the handler runs). Off the main thread no timer can be set: run as is."""
    if threading.current_thread() is not threading.main_thread():
        fn()
        return

    def overdue(_signum, _frame):
        raise _Overdue()

    previous = signal.signal(signal.SIGALRM, overdue)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        fn()
    except _Overdue:
        log.warning("goodbye_timed_out", waited=seconds, how="inline")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


ALERT_WATCH_LEASE = "alert-watch"
WATCH_LEASE_BEATS = 3  # a holder that stops renewing is replaced after this many intervals
SWEEP_EVERY = 60.0  # seconds between re-queues of pending alerts (the sweep's own age threshold is a minute)


class AlertWatchThread(threading.Thread):
    """Every ``interval`` seconds, in one worker process at a time (a lease): stale and recovered
    services are reported, and alerts whose enqueue was lost are queued again (once a minute).

    It runs in the worker, not on a beat schedule and not only in session, because the outage that
    matters most (beat, or the worker that runs ``check_risk``, gone) is exactly when no scheduled
    task would look. Its own thread: a slow database or broker here never delays a heartbeat, and
    every failure is logged and retried at the next interval.

    After it could not reach the database (an outage every heartbeat also met), and after its own
    start (``settle``: the services starting with it), it waits the stale threshold before judging
    others, so every service has had its chance to beat and neither reads as everyone going quiet.
    """

    def __init__(self, service: str, interval: float, *, settle: bool = True) -> None:
        super().__init__(name=f"alert-watch-{service}", daemon=True)
        self.service, self.interval = service, interval
        self.holder = f"{service}:{socket.gethostname()}:{os.getpid()}"
        self._stop_event = threading.Event()
        self._last_sweep: float | None = None
        # Monotonic time since when it could not see: its start, or the last round that could not reach the database.
        self._blind_since: float | None = time.monotonic() if settle else None

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.tick()

    def tick(self) -> bool:
        """One round; True when this process held the watch and looked. Never raises."""
        try:
            if leases.acquire(ALERT_WATCH_LEASE, self.holder, WATCH_LEASE_BEATS * self.interval) is None:
                return False  # another worker is watching
        except Exception as exc:  # noqa: BLE001 - the database may be briefly away; the next round retries
            self._blind_since = time.monotonic()
            log.warning("alert_watch_failed", step="lease", error=type(exc).__name__)
            return False
        from catalyst.alerts import check_services, stale_after
        from catalyst.notify import deliver_pending
        from catalyst.runtime import get_runtime

        settled = stale_after(self.interval).total_seconds()
        if self._blind_since is None or time.monotonic() - self._blind_since > settled:
            try:
                check_services(get_runtime())
            except Exception as exc:  # noqa: BLE001
                self._blind_since = time.monotonic()
                log.warning("alert_watch_failed", step="check_services", error=type(exc).__name__)
        if self._last_sweep is None or time.monotonic() - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = time.monotonic()
            try:
                deliver_pending()
            except Exception as exc:  # noqa: BLE001 - it never raises today; a future one must not stop the watch
                log.warning("alert_watch_failed", step="deliver_pending", error=type(exc).__name__)
        return True

    def stop(self) -> None:
        """Stop and hand the watch over at once (a clean shutdown need not wait for the lease to expire)."""
        self._stop_event.set()
        try:
            leases.release(ALERT_WATCH_LEASE, self.holder)
        except Exception:  # noqa: BLE001 - it expires on its own
            pass
