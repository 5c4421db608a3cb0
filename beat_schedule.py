"""The schedule Catalyst wants, derived from settings and the open positions in the database.

Static entries come from settings; there is one ``monitor-position-<id>`` entry for every
position that is open or closing. Because it is derived from PostgreSQL on every tick,
flushing Redis or restarting beat loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from catalyst.db.models import Position
from catalyst.settings import Settings

MONITOR_PREFIX = "monitor-position-"
RECONCILE_ENTRY = "reconcile"  # sent first in a tick: at a session's first slot it goes before every check


@dataclass(frozen=True)
class WantedEntry:
    name: str
    task: str
    queue: str
    args: tuple
    interval_seconds: float


def static_entries(settings: Settings) -> list[WantedEntry]:
    return [WantedEntry("scan-market", "catalyst.scan_market", "scan", (), settings.scan_interval),
            WantedEntry(RECONCILE_ENTRY, "catalyst.reconcile", "maintenance", (), settings.reconcile_interval)]


def monitor_entry(position_id: int, settings: Settings) -> WantedEntry:
    return WantedEntry(f"{MONITOR_PREFIX}{position_id}", "catalyst.monitor_position", "monitor", (position_id,),
                       settings.monitor_check_interval)


def wanted_entries(session, settings: Settings) -> dict[str, WantedEntry]:
    ids = session.scalars(select(Position.id).where(Position.status.in_(("open", "closing")))).all()
    entries = static_entries(settings) + [monitor_entry(pid, settings) for pid in ids]
    return {e.name: e for e in entries}
