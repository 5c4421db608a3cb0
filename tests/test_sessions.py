"""Exchange sessions and schedule slots, checked against real NYSE / HKEX dates.

Every case is something an operator would notice: a schedule firing on a holiday, after
an early close, at the wrong UTC hour after a DST change, or during the Hong Kong lunch.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from catalyst.core.domain import BadInput
from catalyst.core.sessions import SessionCalendar

NY = ZoneInfo("America/New_York")
HKT = ZoneInfo("Asia/Hong_Kong")
MINUTE = timedelta(minutes=1)


def us() -> SessionCalendar:
    return SessionCalendar.for_market("US")


def hk() -> SessionCalendar:
    return SessionCalendar.for_market("HK")


def ny(day: str, hhmmss: str = "12:00") -> datetime:
    """Wall time in New York on an ISO date, e.g. ny("2026-11-27", "12:45")."""
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmmss), tzinfo=NY)


def hkt(day: str, hhmmss: str = "12:00") -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmmss), tzinfo=HKT)


def slots_of_day(cal: SessionCalendar, day: str, interval: timedelta) -> list[datetime]:
    """Every slot next_slot yields on ``day``, walking from midnight New York."""
    session = cal.session_on(date.fromisoformat(day))
    assert session is not None
    out: list[datetime] = []
    slot = cal.next_slot(session.open, interval, strict=False)
    while slot.date() == session.day and slot < session.close:
        out.append(slot)
        slot = cal.next_slot(slot, interval)
    return out


# -- calendar basics -------------------------------------------------------------------


def test_calendar_is_cached_per_market_and_closures():
    assert us() is us()
    assert SessionCalendar.for_market("US", closed_dates=("2026-11-23",)) is not us()


def test_unknown_market_is_bad_input():
    with pytest.raises(BadInput, match="unknown market 'XX'.*US, HK"):
        SessionCalendar.for_market("XX")


def test_bad_closed_date_is_bad_input():
    with pytest.raises(BadInput, match="closed_dates"):
        SessionCalendar.for_market("US", closed_dates=("2026-02-30",))


# -- weekends --------------------------------------------------------------------------


@pytest.mark.parametrize("day", ["2026-11-21", "2026-11-22"], ids=["saturday", "sunday"])
def test_weekend_has_no_session(day):
    cal = us()
    assert cal.session_on(date.fromisoformat(day)) is None
    for hhmm in ("09:30", "12:00", "15:59"):
        ts = ny(day, hhmm)
        assert cal.is_open(ts) is False
        assert cal.session_at(ts) is None
        assert cal.minutes_to_close(ts) is None
        assert cal.latest_slot(ts, MINUTE) is None


@pytest.mark.parametrize(
    "after",
    [ny("2026-11-21", "12:00"), ny("2026-11-22", "12:00"), ny("2026-11-20", "16:00"), ny("2026-11-20", "23:59:59")],
    ids=["saturday-noon", "sunday-noon", "friday-close", "friday-late"],
)
@pytest.mark.parametrize("interval", [timedelta(seconds=60), timedelta(minutes=30), timedelta(hours=2)])
def test_next_slot_over_weekend_lands_on_monday_open(after, interval):
    slot = us().next_slot(after, interval)
    assert slot == ny("2026-11-23", "09:30")
    assert slot.astimezone(NY).strftime("%A %H:%M") == "Monday 09:30"


def test_next_session_from_saturday_is_monday():
    session = us().next_session(ny("2026-11-21", "12:00"))
    assert session.day == date(2026, 11, 23)
    assert session.open == ny("2026-11-23", "09:30")
    assert session.close == ny("2026-11-23", "16:00")


# -- NYSE holidays ---------------------------------------------------------------------

HOLIDAYS = [
    # (holiday, next trading day)
    ("2026-11-26", "2026-11-27"),  # Thanksgiving
    ("2025-12-25", "2025-12-26"),  # Christmas
    ("2026-04-03", "2026-04-06"),  # Good Friday -> Monday
]


@pytest.mark.parametrize("holiday, next_day", HOLIDAYS, ids=[h for h, _ in HOLIDAYS])
def test_holiday_has_no_session_and_no_slot(holiday, next_day):
    cal = us()
    assert cal.session_on(date.fromisoformat(holiday)) is None
    for hhmm in ("09:30", "12:00", "15:59"):
        assert cal.is_open(ny(holiday, hhmm)) is False
        assert cal.session_at(ny(holiday, hhmm)) is None
    # Nothing fires on the holiday: the first slot is the next trading day's open.
    for interval in (timedelta(seconds=60), timedelta(minutes=30)):
        assert cal.next_slot(ny(holiday, "00:00"), interval) == ny(next_day, "09:30")
        assert cal.next_slot(ny(holiday, "10:00"), interval) == ny(next_day, "09:30")


def test_holiday_eve_last_slot_then_after_holiday():
    # Wednesday before Thanksgiving is a full day; its last minute slot is 15:59.
    cal = us()
    assert cal.next_slot(ny("2026-11-25", "15:58:30"), MINUTE) == ny("2026-11-25", "15:59")
    assert cal.next_slot(ny("2026-11-25", "15:59"), MINUTE) == ny("2026-11-27", "09:30")


# -- early closes ----------------------------------------------------------------------

EARLY_CLOSES = [
    # (half day, next trading day)
    ("2026-11-27", "2026-11-30"),  # day after Thanksgiving 2026
    ("2024-11-29", "2024-12-02"),  # day after Thanksgiving 2024
    ("2025-12-24", "2025-12-26"),  # Christmas Eve 2025
]


@pytest.mark.parametrize("day, next_day", EARLY_CLOSES, ids=[d for d, _ in EARLY_CLOSES])
def test_early_close_at_13_new_york(day, next_day):
    cal = us()
    session = cal.session_on(date.fromisoformat(day))
    assert session is not None
    assert session.open == ny(day, "09:30")
    assert session.close == ny(day, "13:00")
    assert cal.minutes_to_close(ny(day, "12:45")) == 15
    assert cal.is_open(ny(day, "12:59:59")) is True
    assert cal.is_open(ny(day, "13:00")) is False
    assert cal.is_open(ny(day, "15:00")) is False
    assert cal.minutes_to_close(ny(day, "13:00")) is None
    # Last minute slot is 12:59; nothing at or after 13:00 that day.
    assert cal.next_slot(ny(day, "12:58:30"), MINUTE) == ny(day, "12:59")
    for after in (ny(day, "12:59"), ny(day, "13:00"), ny(day, "14:00")):
        assert cal.next_slot(after, MINUTE) == ny(next_day, "09:30")
    assert cal.next_slot(ny(day, "13:00"), MINUTE, strict=False) == ny(next_day, "09:30")
    assert cal.latest_slot(ny(day, "13:00"), MINUTE) is None


@pytest.mark.parametrize(
    "day, count, last",
    [("2026-11-23", 390, "15:59"), ("2026-11-27", 210, "12:59"), ("2025-12-24", 210, "12:59")],
    ids=["regular", "thanksgiving-friday", "christmas-eve"],
)
def test_minute_slots_in_a_day(day, count, last):
    slots = slots_of_day(us(), day, MINUTE)
    assert len(slots) == count
    assert slots[0] == ny(day, "09:30")
    assert slots[-1] == ny(day, last)
    assert all(b - a == MINUTE for a, b in zip(slots, slots[1:]))


def test_regular_day_minutes_to_close():
    cal = us()
    assert cal.minutes_to_close(ny("2026-11-23", "15:45")) == 15
    assert cal.minutes_to_close(ny("2026-11-23", "09:30")) == 390
    assert cal.minutes_to_close(ny("2026-11-23", "15:59:30")) == 0.5
    assert cal.minutes_to_close(ny("2026-11-23", "16:00")) is None
    assert cal.minutes_to_close(ny("2026-11-23", "09:29:59")) is None


# -- daylight saving -------------------------------------------------------------------

DST = [
    # (trading day, UTC open, UTC close)
    ("2026-03-06", "14:30", "21:00"),  # Friday before spring-forward (EST, UTC-5)
    ("2026-03-09", "13:30", "20:00"),  # Monday after 2026-03-08 (EDT, UTC-4)
    ("2026-10-30", "13:30", "20:00"),  # Friday before fall-back (EDT)
    ("2026-11-02", "14:30", "21:00"),  # Monday after 2026-11-01 (EST)
]


@pytest.mark.parametrize("day, utc_open, utc_close", DST, ids=[d for d, *_ in DST])
def test_open_follows_new_york_dst(day, utc_open, utc_close):
    cal = us()
    session = cal.session_on(date.fromisoformat(day))
    assert session.open == datetime.combine(session.day, time.fromisoformat(utc_open), tzinfo=UTC)
    assert session.close == datetime.combine(session.day, time.fromisoformat(utc_close), tzinfo=UTC)
    # Always 09:30-16:00 on the New York wall clock.
    assert session.open.astimezone(NY).time() == time(9, 30)
    assert session.close.astimezone(NY).time() == time(16, 0)


@pytest.mark.parametrize(
    "friday_close, monday_open_utc",
    [
        (ny("2026-03-06", "16:00"), datetime(2026, 3, 9, 13, 30, tzinfo=UTC)),
        (ny("2026-10-30", "16:00"), datetime(2026, 11, 2, 14, 30, tzinfo=UTC)),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_next_slot_across_dst_weekend(friday_close, monday_open_utc):
    slot = us().next_slot(friday_close, timedelta(minutes=30))
    assert slot == monday_open_utc
    assert slot.astimezone(NY).time() == time(9, 30)


# -- the slot grid ---------------------------------------------------------------------

D = "2026-11-23"  # an ordinary Monday

GRID = [
    # (after NY, interval, strict, expected NY)
    ("09:30:30", timedelta(seconds=60), True, "09:31"),
    ("09:30:00.000001", timedelta(seconds=60), True, "09:31"),
    ("09:31:00", timedelta(seconds=60), True, "09:32"),
    ("09:31:00", timedelta(seconds=60), False, "09:31"),
    ("09:30:00", timedelta(seconds=60), True, "09:31"),
    ("09:30:00", timedelta(seconds=60), False, "09:30"),
    ("09:00:00", timedelta(seconds=60), True, "09:30"),  # before the open: the open itself
    ("04:00:00", timedelta(minutes=30), True, "09:30"),
    ("09:30:00", timedelta(minutes=30), True, "10:00"),
    ("09:30:00", timedelta(minutes=30), False, "09:30"),
    ("09:45:00", timedelta(minutes=30), True, "10:00"),
    ("10:00:00", timedelta(minutes=30), True, "10:30"),
    ("10:00:00", timedelta(minutes=30), False, "10:00"),
    ("10:00:01", timedelta(minutes=30), False, "10:30"),
    ("10:00:00", timedelta(hours=1), True, "10:30"),  # hourly grid is 09:30, 10:30, ... not 10:00
    ("15:58:30", timedelta(seconds=60), True, "15:59"),
    ("15:59:00", timedelta(seconds=60), False, "15:59"),
    ("09:30:00", timedelta(minutes=45), True, "10:15"),
]


@pytest.mark.parametrize(
    "after, interval, strict, expected",
    GRID,
    ids=[f"{a}-{int(i.total_seconds())}s-{'strict' if s else 'loose'}" for a, i, s, _ in GRID],
)
def test_next_slot_grid(after, interval, strict, expected):
    assert us().next_slot(ny(D, after), interval, strict=strict) == ny(D, expected)


@pytest.mark.parametrize(
    "after, interval",
    [
        ("15:59:00", timedelta(seconds=60)),  # last minute slot of the day is 15:59
        ("15:59:30", timedelta(seconds=60)),
        ("16:00:00", timedelta(seconds=60)),
        ("15:30:00", timedelta(minutes=30)),  # 16:00 would be the close: not a slot
        ("15:30:00", timedelta(minutes=45)),  # grid ..., 14:45, 15:30, (16:15)
    ],
)
def test_no_slot_at_close_rolls_to_next_open(after, interval):
    assert us().next_slot(ny(D, after), interval) == ny("2026-11-24", "09:30")


def test_thirty_minute_grid_is_anchored_at_the_open():
    slots = slots_of_day(us(), D, timedelta(minutes=30))
    expected = [ny(D, "09:30") + k * timedelta(minutes=30) for k in range(13)]
    assert slots == expected
    assert [s.astimezone(NY).strftime("%H:%M") for s in slots[:3]] == ["09:30", "10:00", "10:30"]
    assert slots[-1] == ny(D, "15:30")


def test_next_slot_returns_utc_whatever_the_input_zone():
    cal = us()
    after_ny = ny(D, "09:30:30")
    for zone in (NY, HKT, UTC, ZoneInfo("Europe/London")):
        slot = cal.next_slot(after_ny.astimezone(zone), MINUTE)
        assert slot == ny(D, "09:31")
        assert slot.utcoffset() == timedelta(0)


LATEST = [
    # (at NY, interval, expected NY or None)
    ("10:07:30", timedelta(minutes=30), "10:00"),
    ("10:00:00", timedelta(minutes=30), "10:00"),
    ("09:30:00", timedelta(minutes=30), "09:30"),
    ("09:59:59", timedelta(minutes=30), "09:30"),
    ("15:59:59", timedelta(seconds=60), "15:59"),
    ("09:29:59", timedelta(seconds=60), None),
    ("16:00:00", timedelta(seconds=60), None),
    ("20:00:00", timedelta(minutes=30), None),
]


@pytest.mark.parametrize("at, interval, expected", LATEST, ids=[f"{a}-{int(i.total_seconds())}s" for a, i, _ in LATEST])
def test_latest_slot(at, interval, expected):
    result = us().latest_slot(ny(D, at), interval)
    assert result == (ny(D, expected) if expected else None)


def test_latest_slot_and_next_slot_agree():
    cal = us()
    interval = timedelta(minutes=15)
    at = ny(D, "11:07:12")
    latest = cal.latest_slot(at, interval)
    assert latest == ny(D, "11:00")
    assert cal.next_slot(latest, interval, strict=False) == latest
    assert cal.next_slot(at, interval) == latest + interval


# -- Hong Kong lunch break -------------------------------------------------------------

HK_DAY = "2026-03-02"  # an ordinary Monday in Hong Kong


def test_hk_session_shape():
    session = hk().session_on(date.fromisoformat(HK_DAY))
    assert session.open == hkt(HK_DAY, "09:30")
    assert session.break_start == hkt(HK_DAY, "12:00")
    assert session.break_end == hkt(HK_DAY, "13:00")
    assert session.close == hkt(HK_DAY, "16:00")


@pytest.mark.parametrize(
    "at, is_open",
    [("09:29:59", False), ("09:30", True), ("11:59:59", True), ("12:00", False), ("12:30", False),
     ("12:59:59", False), ("13:00", True), ("15:59:59", True), ("16:00", False)],
)
def test_hk_is_open_excludes_lunch(at, is_open):
    assert hk().is_open(hkt(HK_DAY, at)) is is_open


def test_hk_lunch_is_inside_the_session_span():
    cal = hk()
    assert cal.session_at(hkt(HK_DAY, "12:30")) is not None
    assert cal.minutes_to_close(hkt(HK_DAY, "12:30")) == 210
    assert cal.latest_slot(hkt(HK_DAY, "12:30"), MINUTE) is None


HK_GRID = [
    # (after HKT, interval, strict, expected HKT)
    ("12:00:30", timedelta(seconds=60), True, "13:00"),
    ("12:00:00", timedelta(seconds=60), False, "13:00"),
    ("11:59:00", timedelta(seconds=60), True, "13:00"),
    ("11:58:30", timedelta(seconds=60), True, "11:59"),
    ("11:30:00", timedelta(minutes=30), True, "13:00"),
    ("12:59:59", timedelta(minutes=30), True, "13:00"),
    ("13:00:00", timedelta(minutes=30), True, "13:30"),
    ("11:35:00", timedelta(minutes=25), True, "13:15"),  # 12:00, 12:25, 12:50 fall in the lunch
]


@pytest.mark.parametrize(
    "after, interval, strict, expected",
    HK_GRID,
    ids=[f"{a}-{int(i.total_seconds())}s-{'strict' if s else 'loose'}" for a, i, s, _ in HK_GRID],
)
def test_hk_next_slot_skips_lunch(after, interval, strict, expected):
    slot = hk().next_slot(hkt(HK_DAY, after), interval, strict=strict)
    assert slot == hkt(HK_DAY, expected)


def test_hk_no_minute_slot_during_lunch():
    cal = hk()
    session = cal.session_on(date.fromisoformat(HK_DAY))
    slots = slots_of_day(cal, HK_DAY, MINUTE)
    assert not any(session.break_start <= s < session.break_end for s in slots)
    assert len(slots) == 150 + 180  # 09:30-12:00 and 13:00-16:00


def test_hk_latest_slot_after_lunch_is_a_real_slot():
    cal = hk()
    interval = timedelta(minutes=25)  # grid 09:30 + 25k: ..., 11:35, [12:00, 12:25, 12:50 lunch], 13:15
    latest = cal.latest_slot(hkt(HK_DAY, "13:05"), interval)
    assert latest is not None and cal.is_open(latest)
    assert latest == hkt(HK_DAY, "11:35")


# -- unscheduled closures --------------------------------------------------------------


def test_closed_dates_make_a_weekday_closed():
    cal = SessionCalendar.for_market("US", closed_dates=("2026-11-23",))
    monday = date(2026, 11, 23)
    assert cal.session_on(monday) is None
    assert cal.is_open(ny("2026-11-23", "12:00")) is False
    assert cal.session_at(ny("2026-11-23", "12:00")) is None
    assert cal.next_slot(ny("2026-11-21", "12:00"), MINUTE) == ny("2026-11-24", "09:30")
    assert cal.next_slot(ny("2026-11-23", "10:00"), MINUTE) == ny("2026-11-24", "09:30")
    # The shared, unmodified calendar still trades that Monday.
    assert us().session_on(monday) is not None
    assert us().is_open(ny("2026-11-23", "12:00")) is True


def test_closed_dates_order_does_not_matter():
    a = SessionCalendar.for_market("US", closed_dates=("2026-11-24", "2026-11-23"))
    b = SessionCalendar.for_market("US", closed_dates=("2026-11-23", "2026-11-24"))
    assert a is b
    assert a.next_slot(ny("2026-11-21", "12:00"), MINUTE) == ny("2026-11-25", "09:30")


def test_hk_closed_date():
    cal = SessionCalendar.for_market("HK", closed_dates=(HK_DAY,))
    assert cal.is_open(hkt(HK_DAY, "10:00")) is False
    assert cal.next_slot(hkt(HK_DAY, "10:00"), MINUTE) == hkt("2026-03-03", "09:30")


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [timedelta(0), timedelta(seconds=-60)], ids=["zero", "negative"])
def test_next_slot_refuses_non_positive_interval(interval):
    with pytest.raises(BadInput, match="interval must be positive"):
        us().next_slot(ny(D, "10:00"), interval)


@pytest.mark.parametrize("interval", [timedelta(0), timedelta(seconds=-60)], ids=["zero", "negative"])
def test_latest_slot_refuses_non_positive_interval(interval):
    with pytest.raises(BadInput):
        us().latest_slot(ny(D, "10:00:30"), interval)


NAIVE = datetime(2026, 11, 23, 10, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.next_slot(NAIVE, MINUTE),
        lambda c: c.next_slot(NAIVE, MINUTE, strict=False),
        lambda c: c.latest_slot(NAIVE, MINUTE),
        lambda c: c.is_open(NAIVE),
        lambda c: c.session_at(NAIVE),
        lambda c: c.next_session(NAIVE),
        lambda c: c.minutes_to_close(NAIVE),
    ],
    ids=["next_slot", "next_slot-loose", "latest_slot", "is_open", "session_at", "next_session", "minutes_to_close"],
)
def test_naive_datetimes_are_refused(call):
    with pytest.raises(BadInput, match="no UTC offset"):
        call(us())


def test_beyond_calendar_horizon_is_bad_input():
    cal = us()
    with pytest.raises(BadInput, match="beyond the XNYS calendar"):
        cal.next_slot(cal.sessions[-1].close + timedelta(days=1), MINUTE)


# -- property ---------------------------------------------------------------------------

ZONES = st.sampled_from([UTC, NY, HKT, ZoneInfo("Europe/London"), ZoneInfo("Australia/Sydney")])


@pytest.mark.parametrize("market", ["US", "HK"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
@given(
    after=st.datetimes(min_value=datetime(2008, 1, 1), max_value=datetime(2027, 12, 31, 23, 59), timezones=ZONES),
    seconds=st.integers(min_value=30, max_value=2 * 3600),
    strict=st.booleans(),
)
def test_next_slot_property(market, after, seconds, strict):
    cal = SessionCalendar.for_market(market)
    # The calendar only reaches about a year past today (exchange_calendars' default end).
    assume(after < cal.sessions[-1].open - timedelta(days=7))
    interval = timedelta(seconds=seconds)

    slot = cal.next_slot(after, interval, strict=strict)

    assert slot > after if strict else slot >= after
    assert cal.is_open(slot) is True
    session = cal.session_at(slot)
    assert (slot - session.open) % interval == timedelta(0)
    assert cal.next_slot(slot, interval, strict=False) == slot

    # Minimality: no in-session grid point is skipped.
    current = cal.session_at(after)
    if current is None:
        assert slot == cal.next_session(after).open
    else:
        steps = (after - current.open) // interval
        grid = current.open + steps * interval
        if grid < after or (strict and grid == after):
            grid += interval
        if grid < current.close and current.contains(grid):
            assert slot == grid
        else:
            assert slot > grid


# -- once-a-session times: the pre-market scan and the daily summary ---------------------------------
PREMARKET = -timedelta(minutes=30)
GRACE = timedelta(minutes=30)


def ny_at(day: str, hh: int, mm: int) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(hh, mm), NY).astimezone(UTC)


@pytest.mark.parametrize("after, expected", [
    (ny_at("2025-03-07", 9, 1), ny_at("2025-03-10", 9, 0)),   # Friday's has gone: Monday's, after the DST change
    (ny_at("2025-12-24", 8, 0), ny_at("2025-12-24", 9, 0)),   # an early close still opens at 09:30
    (ny_at("2025-12-24", 9, 0), ny_at("2025-12-26", 9, 0)),   # strictly later: Christmas is skipped
    (ny_at("2025-01-17", 10, 0), ny_at("2025-01-21", 9, 0)),  # Martin Luther King Jr. Day
])
def test_the_premarket_time_is_half_an_hour_before_each_open_in_new_york_time(after, expected):
    assert us().next_anchored(after, "open", PREMARKET) == expected


def test_the_close_anchor_follows_early_closes():
    assert us().next_anchored(ny_at("2025-11-28", 9, 0), "close", timedelta(minutes=5)) == ny_at("2025-11-28", 13, 5)


def test_a_missed_premarket_time_is_sent_late_only_before_the_open():
    cal = us()
    assert cal.latest_anchored(ny_at("2025-03-04", 9, 20), "open", PREMARKET, GRACE) == ny_at("2025-03-04", 9, 0)
    assert cal.latest_anchored(ny_at("2025-03-04", 9, 30), "open", PREMARKET, GRACE) is None  # the session is open
    assert cal.latest_anchored(ny_at("2025-03-04", 8, 59), "open", PREMARKET, GRACE) is None  # Monday's is long gone


def test_a_missed_close_time_is_skipped_after_the_grace():
    cal = us()
    assert cal.latest_anchored(ny_at("2025-03-04", 16, 30), "close", timedelta(minutes=5), GRACE) == ny_at("2025-03-04", 16, 5)
    assert cal.latest_anchored(ny_at("2025-03-04", 16, 36), "close", timedelta(minutes=5), GRACE) is None


def test_an_unknown_anchor_is_refused():
    with pytest.raises(BadInput, match="anchor"):
        us().next_anchored(ny_at("2025-03-04", 9, 0), "noon", timedelta(0))
