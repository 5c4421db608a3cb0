"""Worker and beat lifecycle hooks: refuse an unmigrated database, heartbeat, fork safety."""

from __future__ import annotations

import time

import structlog
from celery import signals
from sqlalchemy.exc import OperationalError

from catalyst.db.engine import NotMigrated, dispose_all, ensure_migrated
from catalyst.core.domain import CatalystError
from catalyst.logs import configure_logging
from catalyst.settings import get_settings
from workers.heartbeat import HeartbeatThread, beat_heart

log = structlog.get_logger("catalyst.worker")
_heartbeat: HeartbeatThread | None = None


STARTUP_RETRY_MAX = 5.0  # seconds between start-up attempts while the database does not answer


def check_startup(service: str) -> None:
    """Exit the process with one clear line if configuration or schema is not usable.

    A database that does not answer is waited for (an outage of any length must not leave the
    host without a beat or a worker once it ends); a database that answers but is not migrated,
    or a bad setting, ends the process at once.
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
            log.error("database_unreachable", service=service, retry_in=delay,
                      error=str(exc.orig or exc).splitlines()[0][:300])
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
    global _heartbeat
    name = sender.hostname
    beat_heart(name, kind="worker", status="online", reset=True)
    _heartbeat = HeartbeatThread(name, "worker", get_settings().heartbeat_interval)
    _heartbeat.start()
    log.info("worker_online", worker=name)


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **_):
    if _heartbeat is not None:
        _heartbeat.stop()
        try:
            beat_heart(_heartbeat.service, kind="worker", status="offline")
        except Exception:
            pass


@signals.worker_process_init.connect
def _on_child_start(**_):
    from catalyst.runtime import reset_runtime

    dispose_all()  # never share a parent's database connections across a fork
    reset_runtime()  # nor its HTTP sessions: each child builds its own runtime on first use
