"""Strict parsing of task arguments: what arrives in a message is plainly what it claims, or ``BadInput``.

Task arguments come from JSON that anyone with access to Redis can write, and each one ends
up in a PostgreSQL column or a broker order. So an argument is accepted only when there is no
doubt what it means; everything else is refused with a message naming it, before any row is
written or any order sent (DESIGN.md §4: bad input changes nothing).

- Ids are ints, or strings of ASCII digits (``str.isdigit`` also accepts '²', '⑴', '６', '٧'),
  in 1..2**31-1 (PostgreSQL ``integer``): a larger one would reach the database as a DataError.
- Numbers are JSON numbers: int or float, never a bool (``true`` is not one share) nor text;
  finite, above zero and bounded, compared as they are (``10**400`` is refused, not overflowed).
- Text is ASCII of a bounded length and shape: no NUL, no lone surrogate, nothing a column
  could truncate or refuse after an order was sent.

Pure: no I/O. Column lengths are read from the models so the bounds follow the schema.
"""

from __future__ import annotations

import math
import re
import reprlib
from datetime import UTC, datetime

from catalyst import client_ids
from catalyst.db.models import Decision, Position
from catalyst.core.domain import BadInput

MAX_ROW_ID = 2**31 - 1  # PostgreSQL integer, the type of every id column
# Shares. The floor sits well above the exit path's "nothing left to sell" tolerance (1e-9): a smaller entry
# would be closed without a sale. The ceiling is beyond any single order a broker fills, and low enough that a
# share count keeps 1e-6 precision in a float (1e9 / 1e-6 = 1e15 < 2**53).
MIN_QTY, MAX_QTY = 1e-6, 1e9
# A price per share: the dearest US share (BRK.A) trades below 1e6 USD; ten times that only stops typos and junk.
MAX_PRICE = 1e7
REASON_LENGTH = Decision.__table__.c.reason.type.length  # 64: the entry's reason lands in decisions.reason
SYMBOL_LENGTH = Position.__table__.c.symbol.type.length  # 16
SLOT_LENGTH = 40  # '2025-03-04T14:30:00.123456+00:00' is 32

_DIGITS = re.compile(r"[0-9]{1,10}")
_SYMBOL = re.compile(client_ids.SYMBOL_PATTERN)
_REASON = re.compile(rf"[A-Za-z0-9][A-Za-z0-9 _.:/-]{{0,{REASON_LENGTH - 1}}}")
_SLOT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})")
_SLOT_YEARS = range(1970, 2200)  # any slot a market calendar can mean; far ones would overflow in UTC
_REPR = reprlib.Repr(maxlevel=2, maxlist=4, maxdict=4, maxstring=36, maxother=36, maxlong=36)


def shown(value) -> str:
    """``repr`` bounded for a message: a hostile value must not make the error (or the log line) huge."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        return _REPR.repr(value)
    except ValueError:  # an int beyond str()'s digit limit, nested somewhere
        return f"a {type(value).__name__}"


def row_id(value, name: str) -> int:
    """A row id: an int, or ASCII digits, in 1..2**31-1."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = None
    if number is None or not 1 <= number <= MAX_ROW_ID:
        raise BadInput(f"{name} must be a positive integer (1..{MAX_ROW_ID}), got {shown(value)}")
    return number


def optional_row_id(value, name: str) -> int | None:
    return None if value is None else row_id(value, name)


def _number(value, name: str, low: float, high: float, what: str) -> float:
    """A JSON number in (0, high] and at least ``low``, compared before ``float()`` (10**400 is refused, not
    an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{name} must be a number, got {shown(value)} ({type(value).__name__})")
    if (isinstance(value, float) and not math.isfinite(value)) or not (0 < value <= high and value >= low):
        raise BadInput(f"{name} must be {what}, got {shown(value)}")
    return float(value)


def quantity(value, name: str = "qty") -> float:
    """Shares to buy: a JSON number in [1e-6, 1e9]."""
    return _number(value, name, MIN_QTY, MAX_QTY, f"a finite number of shares from {MIN_QTY:g} to {MAX_QTY:g}")


def price(value, name: str) -> float:
    """A price per share: a JSON number above zero, at most 1e7."""
    return _number(value, name, 0, MAX_PRICE, f"a finite price above zero, at most {MAX_PRICE:g}")


def optional_price(value, name: str) -> float | None:
    return None if value is None else price(value, name)


def symbol(value, name: str = "symbol") -> str:
    """A ticker: ASCII letters, digits, '.' or '-' (16 at most), returned upper-case."""
    # ASCII first: 'ı'.upper() is 'I' and 'ſ'.upper() is 'S'.
    if not isinstance(value, str) or not value.isascii() or not _SYMBOL.fullmatch(value.upper()):
        raise BadInput(f"{name} must be a ticker (up to {SYMBOL_LENGTH} ASCII letters, digits, '.' or '-'), "
                       f"got {shown(value)}")
    return value.upper()


def reason(value, name: str = "reason") -> str:
    """Why an entry is made: a short ASCII tag that fits ``decisions.reason``."""
    if not isinstance(value, str) or len(value) > REASON_LENGTH or not _REASON.fullmatch(value):
        raise BadInput(f"{name} must be a tag of 1..{REASON_LENGTH} ASCII letters, digits, spaces or _.:/-, "
                       f"got {shown(value)}" + (f" ({len(value)} characters)" if isinstance(value, str) else ""))
    return value


def slot(value, name: str = "slot") -> datetime | None:
    """A schedule slot: an ISO-8601 timestamp with a UTC offset (what beat sends), or absent."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > SLOT_LENGTH or not _SLOT.fullmatch(value):
        raise BadInput(f"{name} must be an ISO-8601 timestamp with a UTC offset, got {shown(value)}")
    try:
        parsed = datetime.fromisoformat(value)
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadInput(f"{name} {shown(value)} is not a valid ISO-8601 timestamp") from None
    if parsed.year not in _SLOT_YEARS:
        raise BadInput(f"{name} {shown(value)} is outside {_SLOT_YEARS.start}..{_SLOT_YEARS.stop - 1}")
    return parsed


def entry_order_id_of(value, *, symbol: str, cycle_id: int | None, task_id: str | None) -> str:
    """The entry's client order id: the one its own path derives, never one another path owns.

    A cycle's entry is ``entry-c<cycle>-<SYMBOL>`` (derived when absent); a manual entry is
    ``manual-<24 hex>`` (derived from the task id when absent, so a redelivery adopts it).
    """
    expected = client_ids.entry(cycle_id, symbol) if cycle_id is not None else None
    if value is None:
        return expected or client_ids.manual_for_task(task_id)
    if expected is not None and value == expected:
        return value
    if expected is None and isinstance(value, str) and client_ids.owner(value) == "manual":
        return value
    owner = client_ids.owner(value) if isinstance(value, str) else None
    wanted = f"{expected!r} (derived from cycle_id and symbol)" if expected else "manual-<24 lower-case hex digits>"
    raise BadInput(f"client_order_id must be {wanted}, got {shown(value)}"
                   + (f", which belongs to the {owner} path" if owner and owner not in ("manual",) else ""))
