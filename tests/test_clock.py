"""CATALYST_CLOCK parsing and the simulated clock every process derives from one anchor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

import catalyst.clock as clock_mod
from catalyst.clock import MAX_SPEED, SimClock, SimSpec, WallClock, parse_clock_spec
from catalyst.core.domain import BadInput


@pytest.fixture
def wall(monkeypatch):
    """A controllable wall clock: set ``wall.now`` (epoch seconds) and catalyst.clock sees it."""
    state = SimpleNamespace(now=1_000_000.0)
    monkeypatch.setattr(clock_mod, "time", SimpleNamespace(time=lambda: state.now))
    return state


# -- parse_clock_spec: accepted ---------------------------------------------------------


@pytest.mark.parametrize("spec", ["wall", "  wall  ", "", None])
def test_wall_specs(spec):
    assert parse_clock_spec(spec) is None


def test_sim_spec_is_converted_to_utc():
    spec = parse_clock_spec("sim:2026-03-02T09:30:00-05:00@60")
    assert isinstance(spec, SimSpec)
    assert spec.start == datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
    assert spec.start.tzinfo is UTC
    assert spec.speed == 60.0
    assert spec.text == "sim:2026-03-02T09:30:00-05:00@60"


@pytest.mark.parametrize(
    "text, start, speed",
    [
        ("sim:2026-03-02T14:30:00Z@1", datetime(2026, 3, 2, 14, 30, tzinfo=UTC), 1.0),
        ("sim:2026-03-02T09:30:00+08:00@0.5", datetime(2026, 3, 2, 1, 30, tzinfo=UTC), 0.5),
        ("sim:2026-03-02T09:30:00.250-04:00@.5", datetime(2026, 3, 2, 13, 30, 0, 250_000, tzinfo=UTC), 0.5),
        (" sim:2026-03-02T09:30:00-05:00@100000 ", datetime(2026, 3, 2, 14, 30, tzinfo=UTC), MAX_SPEED),
    ],
)
def test_sim_spec_variants(text, start, speed):
    spec = parse_clock_spec(text)
    assert spec.start == start
    assert spec.start.utcoffset() == timedelta(0)
    assert spec.speed == speed
    assert spec.text == text.strip()


# -- parse_clock_spec: refused ----------------------------------------------------------

FORMAT_HINT = "expected 'wall' or 'sim:<ISO-8601 start with UTC offset>@<speed>'"

REFUSED = [
    # (spec, fragments the message must contain)
    ("sim:2026-03-02T09:30:00@60", ["needs a UTC offset", "-05:00"]),  # missing offset
    ("sim:2026-03-02@60", ["needs a UTC offset"]),  # date only, so no offset either
    ("sim:2026-02-30T09:30:00-05:00@60", ["is not an ISO-8601 timestamp"]),  # bad date
    ("sim:2026-13-01T09:30:00-05:00@60", ["is not an ISO-8601 timestamp"]),
    ("sim:yesterday@60", ["'yesterday' is not an ISO-8601 timestamp"]),
    ("sim:2026-03-02T09:30:00-05:00@0", ["speed 0 must be above 0"]),  # speed 0
    ("sim:2026-03-02T09:30:00-05:00@0.0", ["must be above 0"]),
    ("sim:2026-03-02T09:30:00-05:00@100001", ["at most 100000"]),
    ("sim:2026-03-02T09:30:00-05:00@-5", [FORMAT_HINT]),  # negative speed
    ("sim:2026-03-02T09:30:00-05:00@1e3", [FORMAT_HINT]),
    ("sim:2026-03-02T09:30:00-05:00@60x", [FORMAT_HINT]),
    ("sim:2026-03-02T09:30:00-05:00@", [FORMAT_HINT]),
    ("sim:2026-03-02T09:30:00-05:00", [FORMAT_HINT]),  # no speed at all
    ("sim:", [FORMAT_HINT]),
    ("sim", [FORMAT_HINT]),
    ("fast", [FORMAT_HINT]),
    ("WALL", [FORMAT_HINT]),
    ("@60", [FORMAT_HINT]),
]


@pytest.mark.parametrize("spec, fragments", REFUSED, ids=[s for s, _ in REFUSED])
def test_malformed_specs_say_what_is_expected(spec, fragments):
    with pytest.raises(BadInput) as info:
        parse_clock_spec(spec)
    message = str(info.value)
    assert "CATALYST_CLOCK" in message
    for fragment in fragments:
        assert fragment in message
    if FORMAT_HINT in fragments:
        assert repr(spec) in message  # echoes what the operator typed
        assert "e.g. 'sim:2026-03-02T09:30:00-05:00@60'" in message


# -- SimClock ----------------------------------------------------------------------------

START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def test_sim_clock_starts_at_start_when_wall_equals_anchor(wall):
    clock = SimClock(start=START, speed=60.0, anchor=wall.now)
    assert clock.now() == START
    assert clock.now().tzinfo is UTC


@pytest.mark.parametrize(
    "speed, wall_elapsed, sim_elapsed",
    [
        (60.0, 1.0, timedelta(minutes=1)),
        (60.0, 10.0, timedelta(minutes=10)),
        (60.0, 0.5, timedelta(seconds=30)),
        (1.0, 90.0, timedelta(seconds=90)),
        (0.5, 10.0, timedelta(seconds=5)),
        (3600.0, 6.5, timedelta(hours=6, minutes=30)),
    ],
)
def test_sim_clock_runs_at_its_speed(wall, speed, wall_elapsed, sim_elapsed):
    clock = SimClock(start=START, speed=speed, anchor=wall.now)
    wall.now += wall_elapsed
    assert clock.now() == START + sim_elapsed


def test_sim_clock_advances_monotonically(wall):
    clock = SimClock(start=START, speed=60.0, anchor=wall.now)
    readings = []
    for _ in range(5):
        readings.append(clock.now())
        wall.now += 0.25
    assert readings == sorted(readings)
    assert [b - a for a, b in zip(readings, readings[1:])] == [timedelta(seconds=15)] * 4


def test_sim_clock_anchor_in_the_past(wall):
    # A worker that starts later than the beat still sees the shared simulated time.
    clock = SimClock(start=START, speed=60.0, anchor=wall.now - 120.0)
    assert clock.now() == START + timedelta(hours=2)


def test_sim_clock_wall_seconds(wall):
    clock = SimClock(start=START, speed=60.0, anchor=wall.now)
    assert clock.wall_seconds(60.0) == 1.0
    assert clock.wall_seconds(3600.0) == 60.0
    assert clock.wall_seconds(0.0) == 0.0


def test_two_sim_clocks_with_same_anchor_agree(wall):
    spec = parse_clock_spec("sim:2026-03-02T09:30:00-05:00@60")
    anchor = wall.now - 42.0  # e.g. read from the database by both processes
    beat = SimClock(spec.start, spec.speed, anchor, spec.text)
    worker = SimClock(spec.start, spec.speed, anchor, spec.text)
    for step in (0.0, 0.125, 1.0, 37.5, 3600.0):
        wall.now += step
        assert beat.now() == worker.now()
    assert beat.now() == spec.start + timedelta(seconds=(wall.now - anchor) * 60)


def test_sim_clocks_with_different_anchors_differ_by_scaled_gap(wall):
    early = SimClock(START, 60.0, anchor=wall.now - 10.0)
    late = SimClock(START, 60.0, anchor=wall.now)
    assert early.now() - late.now() == timedelta(minutes=10)


# -- WallClock ---------------------------------------------------------------------------


def test_wall_clock_is_real_utc_time():
    clock = WallClock()
    before = datetime.now(UTC)
    now = clock.now()
    after = datetime.now(UTC)
    assert before <= now <= after
    assert now.tzinfo is UTC
    assert clock.speed == 1.0
    assert clock.spec == "wall"
    assert clock.wall_seconds(60.0) == 60.0
