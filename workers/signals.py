"""Worker and beat lifecycle hooks: refuse an unmigrated database, heartbeat (and an ``offline`` goodbye
however the worker is stopped), fork safety."""

from __future__ import annotations

import atexit
import re
import time

import structlog
from celery import signals
from sqlalchemy.exc import OperationalError

from catalyst.db.engine import NotMigrated, dispose_all, ensure_migrated
from catalyst.core.domain import CatalystError
from catalyst.logs import configure_logging
from catalyst.settings import get_settings
from catalyst.records import flush_counts
from workers.heartbeat import AlertWatchThread, Goodbye, HeartbeatThread, beat_heart

log = structlog.get_logger("catalyst.worker")
_heartbeat: HeartbeatThread | None = None
_alert_watch: AlertWatchThread | None = None
_goodbye: Goodbye | None = None


STARTUP_RETRY_MAX = 5.0  # seconds between start-up attempts while the database does not answer
# A server that answered and said no (bad password, not allowed, no such role or database) is not an outage.
# psycopg reports a refused connection without a SQLSTATE, so the server's FATAL message is read too; a server
# starting up or shutting down ("the database system is starting up") is an outage and is waited for.
REFUSED_SQLSTATES = frozenset({"28P01", "28000", "3D000"})
REFUSED_MESSAGE = re.compile(r'FATAL:\s+(database "[^"]*" does not exist|role "[^"]*" does not exist'
                             r'|password authentication failed|no pg_hba\.conf entry)')


def refused(exc: OperationalError) -> bool:
    return (getattr(exc.orig, "sqlstate", None) in REFUSED_SQLSTATES
            or REFUSED_MESSAGE.search(str(exc.orig or exc)) is not None)


def check_startup(service: str) -> None:
    """Exit the process with one clear line if configuration or schema is not usable.

    A database that does not answer is waited for (an outage of any length must not leave the
    host without a beat or a worker once it ends); one that answers but refuses us (credentials,
    no such database) or is not migrated, or a bad setting, ends the process at once.
    """
    delay = 0.5
    while True:
        try:
            settings = get_settings()
            configure_logging(settings.log_level, service)
            ensure_migrated(settings.sqlalchemy_url)
            from catalyst.runtime import get_runtime

            get_runtime()  # validates settings up front; with Alpaca, also cross-checks its calendar
            return
        except (NotMigrated, CatalystError) as exc:
            log.error("startup_refused", service=service, error=str(exc))
            raise SystemExit(f"catalyst {service}: {exc}") from None
        except OperationalError as exc:
            error = str(exc.orig or exc).splitlines()[0][:300]
            if refused(exc):  # the server answered no: waiting will not change the answer
                log.error("startup_refused", service=service, error=error)
                raise SystemExit(f"catalyst {service}: database refused the connection: {error}") from None
            log.error("database_unreachable", service=service, retry_in=delay, error=error)
            dispose_all()
            time.sleep(delay)
            delay = min(STARTUP_RETRY_MAX, delay * 2)


@signals.worker_init.connect
def _on_worker_init(sender=None, **_):
    check_startup("worker")


@signals.worker_init.connect
def _warm_indicators(sender=None, **_):
    from catalyst.core.indicators import warm_up

    warm_up()  # pandas-ta import and any numba compilation happen once, before the first check


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_):
    global _heartbeat, _alert_watch, _goodbye
    name = sender.hostname
    beat_heart(name, kind="worker", status="online", reset=True)
    _heartbeat = HeartbeatThread(name, "worker", get_settings().heartbeat_interval)
    _heartbeat.start()
    _alert_watch = AlertWatchThread(name, get_settings().heartbeat_interval)  # stale services, lost enqueues
    _alert_watch.start()
    _goodbye = Goodbye(_heartbeat, _alert_watch, url=get_settings().sqlalchemy_url)
    atexit.register(_goodbye, "exit")  # a cold shutdown sends no worker_shutdown, but it does leave via sys.exit
    log.info("worker_online", worker=name)


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(sender=None, how=None, **_):
    """Sent from the signal handler (warm or cold): only flag it; the next heartbeat writes ``stopping``."""
    if _heartbeat is not None:
        _heartbeat.status = "stopping"


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **_):
    """A warm shutdown (its tasks finished): say goodbye now rather than at the interpreter's exit."""
    _flush_counts_now("shutdown")  # checks run in this process (solo or thread pools)
    if _goodbye is not None:
        _goodbye("warm")


@signals.worker_process_shutdown.connect
def _on_child_exit(**_):
    """A pool child leaving (recycled past its memory or task limit, or a warm shutdown) writes its counts."""
    _flush_counts_now("child_exit")


def _flush_counts_now(when: str) -> None:
    try:
        flush_counts(force=True)
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is away: a few seconds of counts are lost, nothing else
        log.warning("counts_flush_failed", when=when, error=type(exc).__name__)


@signals.worker_process_init.connect
def _on_child_start(**_):
    from catalyst.runtime import reset_runtime

    dispose_all()  # never share a parent's database connections across a fork
    reset_runtime()  # nor its HTTP sessions: each child builds its own runtime on first use
