"""Writing the audit trail: decisions, activity, monitor status and per-service counters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from catalyst.db.engine import dialect_insert
from catalyst.db.models import ActivityLog, Decision, Security, ServiceHealth

COUNTERS = ("checks", "positions_checked", "exits_executed", "advisor_calls", "errors")


def wall_now() -> datetime:
    return datetime.now(UTC)


def record_decision(s: Session, *, kind: str, action: str, decided_at: datetime, reason: str | None = None,
                    symbol: str | None = None, position_id: int | None = None, cycle_id: int | None = None,
                    signals: list[dict] | None = None, details: dict[str, Any] | None = None,
                    dry_run: bool = False, worker: str | None = None) -> Decision:
    decision = Decision(kind=kind, action=action, reason=reason, symbol=symbol, position_id=position_id,
                        cycle_id=cycle_id, signals=signals or [], details=details or {}, dry_run=dry_run,
                        worker=worker, decided_at=decided_at, recorded_at=wall_now())
    s.add(decision)
    return decision


def record_activity(s: Session, event: str, occurred_at: datetime, *, position_id: int | None = None,
                    symbol: str | None = None, **details: Any) -> None:
    s.add(ActivityLog(event=event, occurred_at=occurred_at, recorded_at=wall_now(), position_id=position_id,
                      symbol=symbol, details=details))


def bump(s: Session, service: str | None, **deltas: int) -> None:
    """Add to a service's counters in the caller's transaction (no row yet → nothing to count)."""
    if not service:
        return
    values = {name: getattr(ServiceHealth, name) + n for name, n in deltas.items() if name in COUNTERS and n}
    if values:
        s.execute(update(ServiceHealth).where(ServiceHealth.service_name == service).values(**values))


def security_id(s: Session, symbol: str, exchange: str | None, sector: str | None = None) -> int:
    """The ``securities`` row of ``symbol``, created once even when several workers meet it at once.

    A ``sector`` (from the configured sector map) is recorded, and replaces an older one.
    """
    s.execute(dialect_insert(s, Security).values(symbol=symbol, exchange=exchange, sector=sector,
                                                 created_at=wall_now())
              .on_conflict_do_nothing(index_elements=["symbol"]))
    if sector is not None:
        s.execute(update(Security).where(Security.symbol == symbol, Security.sector.is_distinct_from(sector))
                  .values(sector=sector))
    return s.scalar(select(Security.id).where(Security.symbol == symbol))
