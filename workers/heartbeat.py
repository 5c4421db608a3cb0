"""Heartbeats: each worker and beat upserts its ``service_health`` row on a wall-clock timer."""

from __future__ import annotations

import os
import socket
import threading
from datetime import UTC, datetime

import structlog
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from catalyst.db.engine import session_scope
from catalyst.db.models import ServiceHealth
from catalyst.records import COUNTERS

log = structlog.get_logger("catalyst.heartbeat")


def beat_heart(service: str, *, kind: str, status: str, reset: bool = False, **details) -> None:
    """Upsert this service's row; ``reset`` starts its counters afresh (a new process)."""
    now = datetime.now(UTC)
    values = {"status": status, "last_heartbeat": now, "hostname": socket.gethostname(), "pid": os.getpid(),
              "kind": kind}
    if details:
        values["details"] = details
    if reset:
        values.update({name: 0 for name in COUNTERS}, started_at=now)
    with session_scope() as s:
        if s.execute(update(ServiceHealth).where(ServiceHealth.service_name == service).values(**values)).rowcount:
            return
    try:
        with session_scope() as s:
            values.setdefault("started_at", now)
            s.add(ServiceHealth(service_name=service, **values))
    except IntegrityError:
        beat_heart(service, kind=kind, status=status, **details)


class HeartbeatThread(threading.Thread):
    """Beats every ``interval`` seconds until stopped; a failed beat is logged, never fatal."""

    def __init__(self, service: str, kind: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{service}", daemon=True)
        self.service, self.kind, self.interval = service, kind, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                beat_heart(self.service, kind=self.kind, status="online")
            except Exception as exc:  # the database may be briefly away; the next beat retries
                log.warning("heartbeat_failed", service=self.service, error=str(exc))

    def stop(self) -> None:
        self._stop_event.set()
