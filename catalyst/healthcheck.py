"""``python -m catalyst.healthcheck [NAME ...]``: a container's (or unit's) health in one cheap query.

Exit 0 when the database answers and, for each NAME given (``positions``, ``exits``, ``scanner``,
``beat``), this host's service of that name has a fresh heartbeat in ``service_health``: younger
than 3 heartbeat intervals (the threshold the stale-service alert uses) and not ``offline``,
``stopped`` or ``failing``. Exit 1 otherwise, with one line saying why (Docker keeps it in
``docker inspect``'s health log). Without a NAME only the database is checked (migrate, Flower,
metrics).

Names are matched on this host only, because a container's health is its own process's: a worker
runs as ``<name>@<hostname>`` (``celery worker -n positions@%h``) and beat beats as
``beat@<hostname>:<pid>``. It imports no Celery, pandas or runtime, so it costs a database
round-trip and little else, and it never prints the database URL (it may hold a password).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

UNHEALTHY_STATUSES = frozenset({"offline", "stopped", "failing"})
UNHEALTHY = 1  # Docker reads 1 as unhealthy (2 is reserved)


@dataclass(frozen=True)
class Beat:
    service_name: str
    status: str
    last_heartbeat: datetime


def belongs_to(service_name: str, name: str, host: str) -> bool:
    """``positions@host`` (a worker) or ``beat@host:1234`` (beat) is ``name`` on ``host``."""
    prefix = f"{name}@{host}"
    return service_name == prefix or service_name.startswith(prefix + ":")


def verdict(name: str, host: str, beats: Sequence[Beat], now: datetime, limit: timedelta) -> str | None:
    """None when ``name`` on ``host`` is healthy, else the reason it is not."""
    mine = [b for b in beats if belongs_to(b.service_name, name, host)]
    if not mine:
        return f"{name}@{host}: no heartbeat recorded"
    latest = max(mine, key=lambda b: _aware(b.last_heartbeat))
    age = now - _aware(latest.last_heartbeat)
    if latest.status in UNHEALTHY_STATUSES:
        return f"{latest.service_name}: {latest.status}"
    if age > limit:
        return f"{latest.service_name}: last heartbeat {age.total_seconds():.0f}s ago (stale after {limit.total_seconds():.0f}s)"
    return None


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every heartbeat is written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_beats(url: str) -> list[Beat]:
    """Every service_health row (a handful), on a short-lived connection."""
    from sqlalchemy import select

    from catalyst.db.engine import make_engine
    from catalyst.db.models import ServiceHealth

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(ServiceHealth.service_name, ServiceHealth.status, ServiceHealth.last_heartbeat))
            return [Beat(*row) for row in rows]
    finally:
        engine.dispose()


def check(names: Sequence[str], host: str | None = None) -> str | None:
    """None when healthy, else one line saying what is not."""
    from catalyst.core.domain import CatalystError
    from catalyst.settings import get_settings

    try:
        settings = get_settings()
    except CatalystError as exc:
        return f"settings: {exc}"
    try:
        beats = read_beats(settings.sqlalchemy_url)
    except Exception as exc:  # noqa: BLE001 - any failure to read is "the database does not answer"
        return f"database: {type(exc).__name__}: {_first_line(exc)}"
    from catalyst.alerts import stale_after  # the one definition of stale (the alert watch and status use it)

    limit = stale_after(settings.heartbeat_interval)
    now = datetime.now(UTC)
    host = host or socket.gethostname()
    problems = [p for p in (verdict(n, host, beats, now, limit) for n in names) if p]
    return "; ".join(problems) or None


def _first_line(exc: Exception) -> str:
    """The driver's first line (psycopg's connection errors name host and port, never the password)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else ""


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    problem = check(names)
    if problem:
        print(f"unhealthy: {problem}")
        return UNHEALTHY
    print("healthy" + (f": {', '.join(names)}" if names else ": database"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
