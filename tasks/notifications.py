"""Alert delivery and the day's summary, on the ``maintenance`` queue (never in a trading path)."""

from __future__ import annotations

import structlog

from catalyst import task_args
from catalyst.celery import app
from catalyst.notify import enqueue_delivery
from catalyst.notify_delivery import deliver
from catalyst.runtime import get_runtime
from tasks.base import CatalystTask

log = structlog.get_logger("catalyst.tasks")

# A backstop only: each attempt is bounded by notify_timeout (at most 30 s per socket operation).
DELIVERY_TIME_LIMIT = 300


@app.task(name="catalyst.deliver_notification", base=CatalystTask, bind=True, ignore_result=True,
          time_limit=DELIVERY_TIME_LIMIT)
def deliver_notification(self, notification_id) -> str:
    """Deliver one recorded alert to the webhook and/or e-mail; a retry is queued with a pause."""
    notification_id = task_args.row_id(notification_id, "notification_id")
    outcome = deliver(notification_id, worker=self.request.hostname)
    if outcome.retry_in is not None:
        try:
            enqueue_delivery(notification_id, countdown=outcome.retry_in)
        except Exception as exc:  # noqa: BLE001 - the row is still pending: the minute sweep queues it
            log.warning("notification_enqueue_failed", notification_id=notification_id, error=type(exc).__name__)
    return outcome.status


@app.task(name="catalyst.daily_summary", base=CatalystTask, bind=True, ignore_result=True)
def daily_summary(self, slot: str | None = None) -> int | None:
    """The market day's trades, P&L, win rate, exits by reason and open positions, once per day."""
    from catalyst.alerts import send_daily_summary

    slot_at = task_args.slot(slot)
    rt = get_runtime()
    return send_daily_summary(rt, slot_at or rt.clock.now())
