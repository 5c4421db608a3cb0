"""The advisor's gate in the database: consults per monitor cycle and USD spent per market day.

Every check-and-take is one conditional UPDATE after an insert-if-absent of the row it guards
(``INSERT ... ON CONFLICT DO NOTHING``), checked by rowcount. PostgreSQL re-evaluates the
WHERE clause on the newest row version after waiting for a concurrent writer's lock, and
SQLite serialises writers, so however many workers, processes or threads ask at once, no
more than ``limit`` consults are granted per slot and ``spent + reserved`` never passes the
budget.

A consult first *reserves* its worst-case cost, then *settles*: the reservation is released
and the real cost (from the API's reported usage) is added to ``spent_usd``. A process that
dies in between leaves its reservation in place for the rest of that day, erring on the side
of spending less.

The consult cap has one counter per gate: the exit advisor's is its monitor slot
(``advisor_cycles``), an entry review's is its trading cycle (:class:`EntryGate`,
``entry_review_consults``). Entry reviews and exit
consults are counted apart, so a scan can never use up the consults a position's exit needs;
they share the daily USD budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from catalyst.db.engine import session_scope
from catalyst.db.models import AdvisorCycle, AdvisorUsage, EntryReviewConsults

_EPSILON = 1e-9  # float slack so that reserving exactly the remaining budget is allowed


def _insert_ignore(session: Session, model, **values) -> None:
    """Insert a row unless its primary key already exists (atomic on PostgreSQL and SQLite)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(model).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(model).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - Catalyst runs on PostgreSQL or SQLite only
        raise RuntimeError(f"advisor gate does not support the {dialect} dialect")
    session.execute(stmt)


def _ensure_day(session: Session, day: str) -> None:
    _insert_ignore(session, AdvisorUsage, day=day, spent_usd=0.0, reserved_usd=0.0, calls=0,
                   updated_at=datetime.now(UTC))


@dataclass(frozen=True)
class EntryGate:
    """The consult cap of one trading cycle's entry reviews."""

    cycle_id: int


def entry_review_gate(cycle_id: int) -> EntryGate:
    """The consult-cap gate of trading cycle ``cycle_id``'s entry reviews (apart from every monitor slot)."""
    if cycle_id < 0:
        raise ValueError("a trading cycle id cannot be negative")
    return EntryGate(cycle_id)


def grant_consult(gate: datetime | EntryGate, limit: int, url: str | None = None) -> bool:
    """Take one of the ``limit`` consults of ``gate`` (a monitor slot or an :class:`EntryGate`);
    False once they are gone."""
    if limit <= 0:
        return False
    if isinstance(gate, EntryGate):
        model, key, value = EntryReviewConsults, EntryReviewConsults.cycle_id, gate.cycle_id
    else:
        model, key, value = AdvisorCycle, AdvisorCycle.slot_at, gate
    with session_scope(url) as s:
        _insert_ignore(s, model, **{key.key: value, "consults": 0})
        granted = s.execute(
            update(model).where(key == value, model.consults < limit).values(consults=model.consults + 1)
        ).rowcount
    return granted == 1


def reserve(day: str, amount: float, budget: float, url: str | None = None) -> bool:
    """Reserve ``amount`` USD of ``day``'s budget if ``spent + reserved + amount <= budget``."""
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    with session_scope(url) as s:
        _ensure_day(s, day)
        taken = s.execute(
            update(AdvisorUsage)
            .where(AdvisorUsage.day == day,
                   AdvisorUsage.spent_usd + AdvisorUsage.reserved_usd + amount <= budget + _EPSILON)
            .values(reserved_usd=AdvisorUsage.reserved_usd + amount, updated_at=datetime.now(UTC))
        ).rowcount
    return taken == 1


def settle(day: str, reserved: float, actual: float, url: str | None = None, *, calls: int = 1) -> None:
    """Release a reservation of ``reserved`` USD and charge ``actual`` USD (and ``calls`` API calls)."""
    remaining = AdvisorUsage.reserved_usd - reserved
    with session_scope(url) as s:
        _ensure_day(s, day)
        s.execute(
            update(AdvisorUsage)
            .where(AdvisorUsage.day == day)
            .values(reserved_usd=case((remaining < _EPSILON, 0.0), else_=remaining),
                    spent_usd=AdvisorUsage.spent_usd + max(actual, 0.0),
                    calls=AdvisorUsage.calls + calls,
                    updated_at=datetime.now(UTC))
        )


def spent_today(day: str, url: str | None = None) -> float:
    """USD actually charged on ``day`` (reservations not included)."""
    with session_scope(url) as s:
        return float(s.scalar(select(AdvisorUsage.spent_usd).where(AdvisorUsage.day == day)) or 0.0)


def reserved_today(day: str, url: str | None = None) -> float:
    """USD currently held by in-flight consults on ``day``."""
    with session_scope(url) as s:
        return float(s.scalar(select(AdvisorUsage.reserved_usd).where(AdvisorUsage.day == day)) or 0.0)
