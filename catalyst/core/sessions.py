"""Exchange sessions and schedule slots: pure arithmetic over exchange_calendars' tables.

Schedules never fire outside a session: instead of asking "is this slot due?" (which
defers missed slots to the next open) we compute the next *in-session* slot directly.
Sessions, holidays, early closes, lunch breaks and DST all come from the exchange
calendar; unscheduled closures can be added by hand (``closed_dates``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from catalyst.core.domain import BadInput, require_aware

MARKETS = {"US": ("XNYS", "America/New_York"), "HK": ("XHKG", "Asia/Hong_Kong")}
CALENDAR_START = "2000-01-01"


@dataclass(frozen=True)
class Session:
    """One trading session in UTC; ``break_start``/``break_end`` bound a lunch break if any."""

    day: date
    open: datetime
    close: datetime
    break_start: datetime | None = None
    break_end: datetime | None = None

    def contains(self, ts: datetime) -> bool:
        """True while the market trades (the lunch break excluded)."""
        if not self.open <= ts < self.close:
            return False
        return not (self.break_start and self.break_start <= ts < self.break_end)


class SessionCalendar:
    """Sessions of one exchange, looked up by bisection over precomputed opens."""

    def __init__(self, sessions: list[Session], tz: str, code: str) -> None:
        self.sessions = sessions
        self.tz = ZoneInfo(tz)
        self.code = code
        self._opens = [s.open for s in sessions]
        self._by_day = {s.day: s for s in sessions}

    @classmethod
    def for_market(cls, market: str = "US", closed_dates: tuple[str, ...] = ()) -> "SessionCalendar":
        if market not in MARKETS:
            raise BadInput(f"unknown market {market!r}; expected one of {', '.join(MARKETS)}")
        return _cached_calendar(market, tuple(sorted(closed_dates)))

    def with_overrides(self, days: dict[date, tuple[datetime, datetime] | None]) -> "SessionCalendar":
        """A copy where the given days open and close as stated (``None``: no session that day).

        Used when the broker's calendar knows better (unscheduled closures, changed hours).
        """
        by_day = dict(self._by_day)
        for day, hours in days.items():
            if hours is None:
                by_day.pop(day, None)
            else:
                by_day[day] = Session(day=day, open=require_aware(hours[0]).astimezone(UTC),
                                      close=require_aware(hours[1]).astimezone(UTC))
        return SessionCalendar(sorted(by_day.values(), key=lambda s: s.open), str(self.tz), self.code)

    # -- lookups ---------------------------------------------------------------
    def session_on(self, day: date) -> Session | None:
        return self._by_day.get(day)

    def session_at(self, ts: datetime) -> Session | None:
        """The session whose open..close span (lunch included) holds ``ts``."""
        index = bisect.bisect_right(self._opens, require_aware(ts)) - 1
        if index >= 0 and ts < self.sessions[index].close:
            return self.sessions[index]
        return None

    def is_open(self, ts: datetime) -> bool:
        session = self.session_at(ts)
        return bool(session and session.contains(ts))

    def next_session(self, ts: datetime) -> Session:
        """The session in progress at ``ts`` or the first one after it."""
        index = bisect.bisect_right(self._opens, require_aware(ts)) - 1
        if index >= 0 and ts < self.sessions[index].close:
            return self.sessions[index]
        if index + 1 >= len(self.sessions):
            raise BadInput(f"{ts.isoformat()} is beyond the {self.code} calendar")
        return self.sessions[index + 1]

    def minutes_to_close(self, ts: datetime) -> float | None:
        session = self.session_at(ts)
        if session is None:
            return None
        return (session.close - ts).total_seconds() / 60.0

    # -- slots -----------------------------------------------------------------
    def next_slot(self, after: datetime, interval: timedelta, *, strict: bool = True) -> datetime:
        """First slot (open + k·interval, in trading time) later than ``after`` (or equal if not strict)."""
        if interval <= timedelta(0):
            raise BadInput("a schedule interval must be positive")
        ts = require_aware(after).astimezone(UTC)
        for _ in range(len(self.sessions)):
            session = self.next_session(ts)
            slot = _first_grid_point(session, ts, interval, strict)
            while slot < session.close:
                if session.contains(slot):
                    return slot
                slot = _first_grid_point(session, session.break_end, interval, strict=False)
            ts = session.close
            strict = False
        raise BadInput(f"no session after {after.isoformat()} in the {self.code} calendar")

    def latest_slot(self, at: datetime, interval: timedelta) -> datetime | None:
        """The most recent slot at or before ``at`` within the current session, if trading now."""
        if interval <= timedelta(0):
            raise BadInput("a schedule interval must be positive")
        session = self.session_at(require_aware(at))
        if session is None or not session.contains(at):
            return None
        slot = session.open + ((at - session.open) // interval) * interval
        if not session.contains(slot):  # the grid point fell in the lunch break: take the last one before it
            slot = session.open + ((session.break_start - session.open - timedelta(microseconds=1)) // interval) * interval
        return slot


    # -- anchored times (once a session: the pre-market scan, the daily summary) --------------------
    def anchored(self, session: Session, anchor: str, offset: timedelta) -> datetime:
        """``offset`` from ``session``'s open or close (``anchor`` is "open" or "close")."""
        if anchor not in ("open", "close"):
            raise BadInput(f"a schedule anchor is 'open' or 'close', not {anchor!r}")
        return (session.open if anchor == "open" else session.close) + offset

    def next_anchored(self, after: datetime, anchor: str, offset: timedelta, *, strict: bool = True) -> datetime:
        """The first anchored time later than ``after`` (or equal, if not strict)."""
        ts = require_aware(after).astimezone(UTC)
        for session in self._sessions_from(ts - abs(offset) - timedelta(days=1)):
            when = self.anchored(session, anchor, offset)
            if when > ts or (not strict and when == ts):
                return when
        raise BadInput(f"no session after {after.isoformat()} in the {self.code} calendar")

    def latest_anchored(self, at: datetime, anchor: str, offset: timedelta, grace: timedelta) -> datetime | None:
        """The anchored time at or before ``at`` if it is at most ``grace`` old (a missed one is skipped,
        not replayed); one before the open is never sent once the session has opened."""
        ts = require_aware(at).astimezone(UTC)
        latest = None
        for session in self._sessions_from(ts - abs(offset) - timedelta(days=5)):
            when = self.anchored(session, anchor, offset)
            if when > ts:
                break
            latest = (when, session)
        if latest is None or ts - latest[0] > grace:
            return None
        when, session = latest
        if anchor == "open" and offset < timedelta(0) and ts >= session.open:
            return None
        return when

    def _sessions_from(self, ts: datetime):
        index = max(bisect.bisect_left(self._opens, ts), 0)
        return iter(self.sessions[index:])


def _first_grid_point(session: Session, ts: datetime, interval: timedelta, strict: bool) -> datetime:
    if ts < session.open:
        return session.open
    steps = (ts - session.open) // interval
    slot = session.open + steps * interval
    if slot < ts or (strict and slot == ts):
        slot += interval
    return slot


def _to_utc(value) -> datetime | None:
    if value is None or value != value:  # NaT
        return None
    return value.to_pydatetime().astimezone(UTC)


@lru_cache(maxsize=8)
def _cached_calendar(market: str, closed_dates: tuple[str, ...]) -> SessionCalendar:
    import exchange_calendars as xcals  # heavy import: only when a calendar is needed

    code, tz = MARKETS[market]
    cal = xcals.get_calendar(code, start=CALENDAR_START)
    try:
        closed = {date.fromisoformat(d) for d in closed_dates}
    except ValueError as exc:
        raise BadInput(f"closed_dates: {exc}") from None
    sessions: list[Session] = []
    has_breaks = cal.break_starts is not None
    for label, opened in cal.opens.items():
        day = label.date()
        if day in closed:
            continue
        sessions.append(
            Session(
                day=day,
                open=_to_utc(opened),
                close=_to_utc(cal.closes[label]),
                break_start=_to_utc(cal.break_starts[label]) if has_breaks else None,
                break_end=_to_utc(cal.break_ends[label]) if has_breaks else None,
            )
        )
    return SessionCalendar(sessions, tz, code)
