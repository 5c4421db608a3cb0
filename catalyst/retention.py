"""Retention: forget the audit trail older than ``retention_days`` (seed 002: ``agent_logs`` 30 days).

Deletes in small batches, one short transaction each (a batch's rows are the only ones locked, and
never for long), until a batch comes back short. What is never deleted, however old:

- rows of a position that is not ``closed`` (decisions, activity, its monitor status): an open or
  closing position's history is what its exit, the reconciler and the operator read;
- notifications still ``pending`` (their delivery is not finished);
- anything another table points at: none of the pruned tables is the target of a foreign key
  (positions, orders, cycles and securities are kept whole), so deleting them breaks no reference.

Which time: each table is compared on its *wall-clock* column against the wall-clock "now" — retention
is about disk and operator history, and wall time only moves forward (a simulated clock can start in
2024 or run backwards between demos). ``advisor_cycles`` has only a market-time key (``slot_at``), so
it alone is compared against the market clock's "now"; with the wall clock the two are the same.

``service_health`` is not history but the list of processes `catalyst status` shows, one row per worker name
and per beat process (``beat@host:pid``: every beat restart adds one). A row whose process is gone — it said
``offline``, or it went stale and never came back — is deleted once it has been gone for
``GONE_SERVICE_KEPT`` (a day, not ``retention_days``): long enough that last night's crash is still on this
morning's status page, short enough that a month of restarts and redeploys does not bury the live services
under dead ones. The record of what happened (the ``service_stale`` notification and its ``agent_logs``
warning) stays for ``retention_days``. A live row is never deleted: only a heartbeat older than the stale
threshold can qualify, and PostgreSQL re-checks the condition on a row a heartbeat updates concurrently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.sql.elements import ColumnElement

from catalyst.alerts import GONE_STATUSES, stale_after
from catalyst.core.domain import BadInput
from catalyst.db.engine import session_scope
from catalyst.db.models import (
    ActivityLog,
    AdvisorCycle,
    AgentLog,
    Decision,
    IndicatorSnapshot,
    Notification,
    Position,
    PositionMonitorStatus,
    ServiceHealth,
)

log = structlog.get_logger("catalyst.retention")

BATCH_SIZE = 5000
FINISHED_NOTIFICATIONS = ("sent", "failed", "logged")
GONE_SERVICE_KEPT = timedelta(hours=24)  # how long the row of a process that is gone stays on the status page


@dataclass(frozen=True)
class Rule:
    """One table's retention: its key, the time column it ages by, which clock, and what it must keep."""

    table: str
    model: type
    key: ColumnElement
    age: ColumnElement
    market_time: bool = False
    only_if: tuple = ()  # conditions a row must also meet to be deleted (whatever its age)


def _closed_positions():
    return select(Position.id).where(Position.status == "closed")


def _no_live_position(column) -> ColumnElement:
    """No position, or a closed one: an open or closing position's rows are kept whatever their age."""
    return or_(column.is_(None), column.in_(_closed_positions()))


RULES = (
    Rule("agent_logs", AgentLog, AgentLog.id, AgentLog.timestamp),
    Rule("decisions", Decision, Decision.id, Decision.recorded_at,
         only_if=(_no_live_position(Decision.position_id),)),
    Rule("indicator_snapshots", IndicatorSnapshot, IndicatorSnapshot.id, IndicatorSnapshot.computed_at),
    Rule("advisor_cycles", AdvisorCycle, AdvisorCycle.slot_at, AdvisorCycle.slot_at, market_time=True),
    Rule("position_monitor_status", PositionMonitorStatus, PositionMonitorStatus.position_id,
         PositionMonitorStatus.updated_at, only_if=(PositionMonitorStatus.position_id.in_(_closed_positions()),)),
    Rule("activity_log", ActivityLog, ActivityLog.id, ActivityLog.recorded_at,
         only_if=(_no_live_position(ActivityLog.position_id),)),
    Rule("notifications", Notification, Notification.id, Notification.created_at,
         only_if=(Notification.status.in_(FINISHED_NOTIFICATIONS),)),
)


def retention_window(days) -> timedelta:
    """At least one day: a zero, negative or non-number window would delete today's trail."""
    if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days) or days < 1:
        raise BadInput(f"retention_days must be a number of days >= 1, not {days!r}")
    return timedelta(days=days)


def prune(days, *, market_now: datetime | None = None, wall_now: datetime | None = None,
          batch_size: int = BATCH_SIZE, url: str | None = None,
          heartbeat_interval: float | None = None) -> dict[str, int]:
    """Delete what is older than ``days`` from every pruned table; rows deleted per table. The rows of
    services gone for a day go too (:func:`prune_gone_services`; logged, not in the returned counts)."""
    window = retention_window(days)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInput(f"batch_size must be an integer >= 1, not {batch_size!r}")
    wall_now = wall_now or datetime.now(UTC)
    market_now = market_now or wall_now
    counts = {}
    for rule in RULES:
        cutoff = (market_now if rule.market_time else wall_now) - window
        counts[rule.table] = prune_table(rule, cutoff, batch_size, url)
    if heartbeat_interval is None:
        from catalyst.settings import get_settings

        heartbeat_interval = get_settings().heartbeat_interval
    gone = prune_gone_services(wall_now, heartbeat_interval, url)
    log.info("retention_pruned", days=days, cutoff=(wall_now - window).isoformat(),
             total=sum(counts.values()), service_health=gone, **counts)
    return counts


def prune_gone_services(wall_now: datetime, heartbeat_interval: float, url: str | None = None) -> int:
    """Delete the ``service_health`` rows of processes gone for ``GONE_SERVICE_KEPT``: offline that long, or
    stale that long (no heartbeat for the stale threshold plus the day). Never a live row. Rows deleted."""
    offline_before = wall_now - GONE_SERVICE_KEPT
    silent_before = offline_before - stale_after(heartbeat_interval)
    with session_scope(url) as s:
        deleted = s.execute(
            delete(ServiceHealth)
            .where(or_(and_(ServiceHealth.status.in_(GONE_STATUSES), ServiceHealth.last_heartbeat < offline_before),
                       ServiceHealth.last_heartbeat < silent_before))
            .execution_options(synchronize_session=False)).rowcount
    if deleted:
        log.info("gone_services_pruned", deleted=deleted, offline_before=offline_before.isoformat())
    return deleted


def prune_table(rule: Rule, cutoff: datetime, batch_size: int, url: str | None = None) -> int:
    """Delete ``rule``'s rows older than ``cutoff``, ``batch_size`` at a time, committing after each batch."""
    doomed = (select(rule.key).where(rule.age < cutoff, *rule.only_if)
              .order_by(rule.key).limit(batch_size).scalar_subquery())
    total = 0
    while True:
        with session_scope(url) as s:
            deleted = s.execute(delete(rule.model).where(rule.key.in_(doomed))
                                .execution_options(synchronize_session=False)).rowcount
        total += deleted
        if deleted < batch_size:
            return total
