"""One position's recurring check, and its exactly-once exit."""

from __future__ import annotations

import structlog

from catalyst import task_args
from catalyst.celery import app
from catalyst.brokers.base import BrokerError
from catalyst.monitor import check_position
from catalyst.monitor_lock import check_lock
from catalyst.orders import OrderPending
from catalyst.positions import execute_exit
from catalyst.records import flush_counts
from catalyst.runtime import get_runtime
from tasks.base import CatalystTask

log = structlog.get_logger("catalyst.tasks")


@app.task(name="catalyst.monitor_position", base=CatalystTask, bind=True, ignore_result=True)
def monitor_position(self, position_id: int, slot: str | None = None) -> str:
    """Check one position; never two checks of the same position at once."""
    position_id = task_args.row_id(position_id, "position_id")
    slot_at = task_args.slot(slot)
    rt = get_runtime()
    holder = self.request.id or f"local-{id(self)}"
    # SQLite's stand-in lease: long enough to cover one check, short enough that a crashed check blocks at most a
    # few slots. (PostgreSQL's advisory lock needs no TTL: it ends with the check or with the worker's session.)
    ttl = min(60.0, max(5.0, rt.clock.wall_seconds(rt.settings.monitor_check_interval)))
    with check_lock(position_id, holder=holder, ttl=ttl) as held:
        if not held:
            log.info("monitor_skipped", position_id=position_id, reason="check_in_progress")
            return "skipped"
        outcome = check_position(rt, position_id, worker=self.request.hostname, slot=slot_at, db=held)
    if outcome.needs_exit_task:
        exit_position.apply_async(args=[position_id])
    try:
        flush_counts()  # now and then: the checks this process counted, in one UPDATE
    except Exception as exc:  # noqa: BLE001 - kept for the next flush; the check itself succeeded
        log.warning("counts_flush_failed", when="task", error=type(exc).__name__)
    return outcome.action


@app.task(name="catalyst.exit_position", base=CatalystTask, bind=True, acks_late=True,
          reject_on_worker_lost=True, autoretry_for=(OrderPending, BrokerError, ConnectionError, TimeoutError),
          retry_backoff=2, retry_backoff_max=30, max_retries=10)
def exit_position(self, position_id: int) -> str:
    """Sell and close a position exactly once, however often this runs."""
    position = execute_exit(get_runtime(), task_args.row_id(position_id, "position_id"), worker=self.request.hostname)
    return position.status
