"""The schedule Catalyst wants, derived from settings and the open positions in the database.

Static entries come from settings: a pre-market scan before each open, scans, the watchdog and
the risk monitor on the session grid, and the day's summary and the retention prune after each close. There is one
``monitor-position-<id>`` entry for every position that is open or closing. Because it is derived from PostgreSQL
(beat reads the open positions' ids every tick), flushing Redis or restarting beat loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from catalyst.db.models import Position
from catalyst.settings import Settings

MONITOR_PREFIX = "monitor-position-"
RECONCILE_ENTRY = "reconcile"  # sent first in a tick: at a session's first slot it goes before every check
RISK_ENTRY = "check-risk"  # sent next: in a crash the account-level stop goes out before the positions' checks
FIRST = (RECONCILE_ENTRY, RISK_ENTRY)


def send_order(name: str) -> int:
    """Where an entry goes in one tick's sends: the watchdog, the risk monitor, then the rest."""
    return FIRST.index(name) if name in FIRST else len(FIRST)


@dataclass(frozen=True)
class WantedEntry:
    name: str
    task: str
    queue: str
    args: tuple
    interval_seconds: float
    anchor: str = "session"  # session: every interval on the session grid; open/close: once a session
    offset_seconds: float = 0.0  # from the open or close (negative: before it)


DAY = 86400.0
SUMMARY_AFTER_CLOSE = 300.0  # the day's summary once the near-close exits have settled
PRUNE_AFTER_CLOSE = 1800.0  # the audit trail past its retention window, once the day is summarised


def static_entries(settings: Settings) -> list[WantedEntry]:
    return [WantedEntry("premarket-scan", "catalyst.scan_market", "scan", (), DAY, "open",
                        -settings.premarket_scan_minutes * 60.0),
            WantedEntry("scan-market", "catalyst.scan_market", "scan", (), settings.scan_interval),
            WantedEntry(RECONCILE_ENTRY, "catalyst.reconcile", "maintenance", (), settings.reconcile_interval),
            WantedEntry(RISK_ENTRY, "catalyst.check_risk", "maintenance", (), settings.risk_check_interval),
            WantedEntry("daily-summary", "catalyst.daily_summary", "maintenance", (), DAY, "close",
                        SUMMARY_AFTER_CLOSE),
            WantedEntry("prune", "catalyst.prune", "maintenance", (), DAY, "close", PRUNE_AFTER_CLOSE)]


def monitor_entry(position_id: int, settings: Settings) -> WantedEntry:
    return WantedEntry(f"{MONITOR_PREFIX}{position_id}", "catalyst.monitor_position", "monitor", (position_id,),
                       settings.monitor_check_interval)


def open_position_ids(session) -> set[int]:
    """The positions that need a monitor entry: one narrow indexed query (``ix_positions_status``)."""
    return set(session.scalars(select(Position.id).where(Position.status.in_(("open", "closing")))))


def wanted_entries(session, settings: Settings, ids: set[int] | None = None) -> dict[str, WantedEntry]:
    """Every entry Catalyst wants: the static ones and a check per open position (``ids``, else read now)."""
    ids = open_position_ids(session) if ids is None else ids
    entries = static_entries(settings) + [monitor_entry(pid, settings) for pid in sorted(ids)]
    return {e.name: e for e in entries}
