"""Clocks: wall time, or simulated time that every process derives from one shared anchor.

``CATALYST_CLOCK=sim:<ISO-8601 start with offset>@<speed>`` runs time from ``start`` at
``speed`` times real time. Processes agree because they all compute
``start + (wall_now - anchor) * speed`` from the same ``anchor`` (a wall-clock epoch kept in
the database), so beat, workers and CLI see the same simulated second.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from catalyst.core.domain import BadInput

_SIM_SPEC = re.compile(r"^sim:(?P<start>[^@]+)@(?P<speed>[0-9]*\.?[0-9]+)$")
MAX_SPEED = 100_000.0


class Clock(Protocol):
    speed: float

    def now(self) -> datetime:
        """Current time, timezone-aware (UTC)."""

    def wall_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of clock time lasts in real seconds."""


class WallClock:
    speed = 1.0
    spec = "wall"

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wall_seconds(self, sim_seconds: float) -> float:
        return sim_seconds


@dataclass(frozen=True)
class SimSpec:
    start: datetime
    speed: float
    text: str


@dataclass
class SimClock:
    start: datetime
    speed: float
    anchor: float
    spec: str = ""

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.anchor) * self.speed)

    def wall_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed


def parse_clock_spec(spec: str) -> SimSpec | None:
    """``None`` for wall time, a :class:`SimSpec` for ``sim:…``; anything else is ``BadInput``."""
    text = (spec or "wall").strip()
    if text == "wall":
        return None
    match = _SIM_SPEC.match(text)
    if not match:
        raise BadInput(
            f"CATALYST_CLOCK={spec!r} is malformed; expected 'wall' or "
            "'sim:<ISO-8601 start with UTC offset>@<speed>', e.g. 'sim:2026-03-02T09:30:00-05:00@60'"
        )
    try:
        start = datetime.fromisoformat(match["start"])
    except ValueError:
        raise BadInput(f"CATALYST_CLOCK start {match['start']!r} is not an ISO-8601 timestamp") from None
    if start.tzinfo is None:
        raise BadInput(f"CATALYST_CLOCK start {match['start']!r} needs a UTC offset, e.g. -05:00")
    speed = float(match["speed"])
    if not 0 < speed <= MAX_SPEED:
        raise BadInput(f"CATALYST_CLOCK speed {speed:g} must be above 0 and at most {MAX_SPEED:g}")
    return SimSpec(start=start.astimezone(UTC), speed=speed, text=text)


class ManualClock:
    """Time that moves only when told to (replay steps it slot by slot, deterministically)."""

    speed = 1.0
    spec = "manual"

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise BadInput("a manual clock needs an aware start time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)

    def wall_seconds(self, sim_seconds: float) -> float:
        return 0.0
