"""Heartbeats (check_risk and reconcile arrive with later issues)."""

from __future__ import annotations

from catalyst.celery import app
from tasks.base import CatalystTask
from workers.heartbeat import beat_heart


@app.task(name="catalyst.heartbeat", base=CatalystTask, bind=True)
def heartbeat(self) -> str:
    """Record that this worker is alive and consuming the maintenance queue."""
    name = self.request.hostname or "worker"
    beat_heart(name, kind="worker", status="online")
    return name
