"""Cross-check the broker's market calendar and clock with exchange_calendars at start-up.

exchange_calendars cannot know unscheduled closures or changed hours; the broker can. Every
disagreement is logged, and the broker's answer wins for that day.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import structlog

from catalyst.clock import WallClock
from catalyst.core.sessions import SessionCalendar

log = structlog.get_logger("catalyst.calendar")
LOOKAHEAD_DAYS = 14


def broker_sessions(rows, tz) -> dict[date, tuple[datetime, datetime]]:
    """Alpaca's calendar rows (naive exchange-local open/close) as aware sessions."""
    return {row.date: (row.open.replace(tzinfo=tz), row.close.replace(tzinfo=tz)) for row in rows}


def reconcile_calendar(calendar: SessionCalendar, broker_days: dict[date, tuple[datetime, datetime]],
                       start: date, end: date) -> tuple[SessionCalendar, list[dict]]:
    """Compare day by day between ``start`` and ``end``; returns the corrected calendar and the differences."""
    overrides: dict[date, tuple[datetime, datetime] | None] = {}
    differences = []
    day = start
    while day <= end:
        ours = calendar.session_on(day)
        theirs = broker_days.get(day)
        ours_hours = (ours.open, ours.close) if ours else None
        if (ours_hours is None) != (theirs is None) or (ours_hours and theirs and (
                ours_hours[0] != theirs[0] or ours_hours[1] != theirs[1])):
            overrides[day] = theirs
            differences.append({"day": day.isoformat(),
                                "exchange_calendars": [t.isoformat() for t in ours_hours] if ours_hours else None,
                                "broker": [t.isoformat() for t in theirs] if theirs else None})
        day += timedelta(days=1)
    return (calendar.with_overrides(overrides) if overrides else calendar), differences


def cross_check(rt) -> list[dict]:
    """Fetch the broker's calendar for the coming days and adopt it where it disagrees."""
    broker = rt.broker
    if not hasattr(broker, "calendar"):
        return []
    now = rt.clock.now()
    start = now.astimezone(rt.calendar.tz).date()
    end = start + timedelta(days=LOOKAHEAD_DAYS)
    try:
        rows = broker.calendar(datetime.combine(start, datetime.min.time()),
                               datetime.combine(end, datetime.min.time()))
    except Exception as exc:  # the check must never keep a worker or beat from starting
        log.warning("calendar_check_failed", error=str(exc)[:200], using="exchange_calendars")
        return []
    rt.calendar, differences = reconcile_calendar(rt.calendar, broker_sessions(rows, rt.calendar.tz), start, end)
    if hasattr(rt.market_data, "calendar"):
        rt.market_data.calendar = rt.calendar  # bars keep to the sessions the broker says, too
    for diff in differences:
        log.warning("calendar_disagreement", **diff, resolution="broker wins")
    if isinstance(rt.clock, WallClock) and hasattr(broker, "clock"):
        try:
            clock = broker.clock()
        except Exception as exc:
            log.warning("market_clock_check_failed", error=str(exc)[:200])
            return differences
        if bool(clock.is_open) != rt.calendar.is_open(now):
            log.warning("market_clock_disagreement", broker_is_open=clock.is_open,
                        calendar_is_open=rt.calendar.is_open(now))
    log.info("calendar_checked", days=LOOKAHEAD_DAYS, differences=len(differences))
    return differences
