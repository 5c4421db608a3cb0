"""Maintenance: heartbeats, the reconciliation watchdog, the risk monitor and retention."""

from __future__ import annotations

import structlog

from catalyst import task_args
from catalyst.celery import app
from catalyst.guard import check_risk as run_check_risk
from catalyst.reconcile import ReconcileBusy, reconcile as run_reconcile
from catalyst.retention import prune as run_prune
from catalyst.runtime import get_runtime
from tasks.base import CatalystTask
from workers.heartbeat import beat_heart

log = structlog.get_logger("catalyst.tasks")


@app.task(name="catalyst.heartbeat", base=CatalystTask, bind=True)
def heartbeat(self) -> str:
    """Record that this worker is alive and consuming the maintenance queue."""
    name = self.request.hostname or "worker"
    beat_heart(name, kind="worker", status="online")
    return name


@app.task(name="catalyst.reconcile", base=CatalystTask, bind=True, ignore_result=True)
def reconcile(self, slot: str | None = None) -> dict:
    """Compare our books with the broker's, apply the safe mends and escalate the rest."""
    task_args.slot(slot)  # beat's slot is informational here, but a malformed one is still refused
    try:
        findings = run_reconcile(get_runtime(), fix=True, worker=self.request.hostname)
    except ReconcileBusy:
        return {"skipped": "another reconciliation is running"}
    return {"findings": len(findings), "escalated": sum(f.action == "escalated" for f in findings)}


def send_exit(position_id: int) -> None:
    """Hand a position the guard moved to ``closing`` to the exit queue (the normal exit path)."""
    from tasks.monitoring import exit_position

    exit_position.apply_async(args=[position_id])


@app.task(name="catalyst.check_risk", base=CatalystTask, bind=True, ignore_result=True)
def check_risk(self, slot: str | None = None) -> dict:
    """The day's P&L against the daily loss limit: REDUCING at the warning, the emergency stop at the limit."""
    task_args.slot(slot)
    # Stale services and alerts whose enqueue was lost are watched from the workers at all hours
    # (workers.heartbeat.AlertWatchThread), not from here: this task needs beat and runs only in session.
    return run_check_risk(get_runtime(), dispatch=send_exit, worker=self.request.hostname).as_dict()


@app.task(name="catalyst.prune", base=CatalystTask, bind=True, ignore_result=True)
def prune(self, slot: str | None = None) -> dict[str, int]:
    """Forget the audit trail older than ``retention_days``, in batches; never an open position's rows."""
    task_args.slot(slot)
    rt = get_runtime()
    return run_prune(rt.settings.retention_days, market_now=rt.clock.now())
