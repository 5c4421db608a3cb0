"""Named leases in the database: expiring locks with a fencing token.

Used for the single active beat and for "one monitor per position at a time". Every
change is a single conditional UPDATE/INSERT, which is atomic on PostgreSQL and SQLite
alike, so two contenders can never both believe they hold the same lease.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from catalyst.db.engine import session_scope
from catalyst.db.models import Lease


def _now() -> datetime:
    return datetime.now(UTC)  # leases are about process liveness: always wall time


def acquire(name: str, holder: str, ttl: float, url: str | None = None) -> int | None:
    """Take or renew ``name`` for ``ttl`` seconds; returns the fencing token, or ``None`` if held elsewhere."""
    now = _now()
    expires = now + timedelta(seconds=ttl)
    with session_scope(url) as s:
        renewed = s.execute(
            update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=expires)
        ).rowcount
        if not renewed:
            renewed = s.execute(
                update(Lease)
                .where(Lease.name == name, Lease.expires_at <= now, Lease.holder != holder)
                .values(holder=holder, token=Lease.token + 1, expires_at=expires)
            ).rowcount
        if renewed:
            return s.scalar(select(Lease.token).where(Lease.name == name, Lease.holder == holder))
    try:
        with session_scope(url) as s:
            s.add(Lease(name=name, holder=holder, token=1, expires_at=expires))
        return 1
    except IntegrityError:
        return None


def holds(name: str, holder: str, token: int, url: str | None = None) -> bool:
    """True while ``holder`` still holds ``name`` with ``token`` and it has not expired."""
    with session_scope(url) as s:
        return bool(s.scalar(select(Lease.name).where(
            Lease.name == name, Lease.holder == holder, Lease.token == token, Lease.expires_at > _now())))


def fence_clause(name: str, holder: str, token: int):
    """A WHERE clause fragment: the lease is still ours (for conditional writes guarded by it)."""
    return select(Lease.name).where(
        and_(Lease.name == name, Lease.holder == holder, Lease.token == token, Lease.expires_at > _now())
    ).exists()


def release(name: str, holder: str, url: str | None = None) -> None:
    with session_scope(url) as s:
        s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def current_holder(name: str, url: str | None = None) -> str | None:
    with session_scope(url) as s:
        return s.scalar(select(Lease.holder).where(Lease.name == name, or_(Lease.expires_at > _now())))
