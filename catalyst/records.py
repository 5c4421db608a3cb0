"""Writing the audit trail: decisions, activity, monitor status and per-service counters."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
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


# -- counters of frequent events, kept in memory and written now and then -------------------------------------------
COUNT_FLUSH_SECONDS = 10.0  # at most one counter UPDATE per service and process this often (not one per check)
_counts: dict[str, Counter] = {}
_counts_lock = threading.Lock()
_last_flush = 0.0


def count(service: str | None, **deltas: int) -> None:
    """Add to a service's counters in this process's memory; :func:`flush_counts` writes them."""
    if not service:
        return
    with _counts_lock:
        pending = _counts.setdefault(service, Counter())
        pending.update({name: n for name, n in deltas.items() if name in COUNTERS and n})


def flush_counts(force: bool = False) -> bool:
    """Write what :func:`count` gathered, if ``COUNT_FLUSH_SECONDS`` passed since the last write (or ``force``).

    One short transaction for every service at once. If PostgreSQL refuses, the counts are kept for the next
    flush (counters are the operator's gauges, not the books: a few seconds late is fine, lost on a kill too).
    """
    global _last_flush
    from catalyst.db.engine import session_scope

    with _counts_lock:
        if not _counts or (not force and time.monotonic() - _last_flush < COUNT_FLUSH_SECONDS):
            return False
        taken = {service: pending for service, pending in _counts.items() if pending}
        _counts.clear()
        _last_flush = time.monotonic()
    try:
        with session_scope() as s:
            for service, pending in taken.items():
                bump(s, service, **pending)
    except Exception:
        with _counts_lock:
            for service, pending in taken.items():
                _counts.setdefault(service, Counter()).update(pending)
        raise
    return True


def _forget_inherited_counts() -> None:
    """A forked child starts with nothing pending: the parent's counts are the parent's to write."""
    global _counts_lock, _last_flush
    _counts_lock = threading.Lock()
    _counts.clear()
    _last_flush = 0.0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_counts)


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
