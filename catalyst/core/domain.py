"""Value types shared by the pure core and the adapters.

Frozen dataclasses only: no I/O, no Celery, no database. Every timestamp is
timezone-aware; constructors refuse naive datetimes so a wrong-zone bug fails
loudly instead of trading on the wrong minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class CatalystError(Exception):
    """Base of every error Catalyst reports to an operator (clear message, no traceback needed)."""


class BadInput(CatalystError):
    """Input that Catalyst refuses: it changes nothing and says why."""


class UnknownSymbol(BadInput):
    """The market-data source has never heard of this symbol."""


def require_aware(ts: datetime, what: str = "timestamp") -> datetime:
    """Return ``ts`` if it carries a UTC offset, else raise ``BadInput``."""
    if not isinstance(ts, datetime):
        raise BadInput(f"{what} must be a datetime, got {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise BadInput(f"{what} {ts.isoformat()} has no UTC offset")
    return ts


def require_price(value: float, what: str = "price") -> float:
    """A usable price is a finite number above zero."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{what} {value!r} is not a number") from None
    if math.isnan(number) or math.isinf(number) or number <= 0:
        raise BadInput(f"{what} {value!r} must be a finite number above zero")
    return number


class Strength(IntEnum):
    """How loudly a signal asks for an exit; ordering is meaningful (STRONG > WEAK)."""

    WEAK = 1
    MODERATE = 2
    STRONG = 3


@dataclass(frozen=True)
class Bar:
    """One OHLCV bar, labelled by its start time."""

    timestamp: datetime
    symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: float

    def __post_init__(self) -> None:
        require_aware(self.timestamp, "bar timestamp")


@dataclass(frozen=True)
class Quote:
    """The latest price known at ``timestamp`` (when the price was observed).

    ``volume`` is the volume of the most recent bar, used by volume-collapse rules.
    """

    symbol: str
    price: float
    timestamp: datetime
    volume: float = 0.0

    def __post_init__(self) -> None:
        require_aware(self.timestamp, "quote timestamp")
