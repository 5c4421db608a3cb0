"""Client order ids: one namespace per path that sends orders, derived here and nowhere else.

The broker deduplicates by client order id and every path adopts an order it finds under an
id it derived, so an id chosen inside another path's namespace hands that path someone else's
order (an entry sent as ``exit-p3`` became position 3's exit, which then never sold). The
namespaces are disjoint by shape, :func:`owners` names the one an id belongs to, and a task
argument may only name an id its own path would have derived (see ``catalyst.task_args``).

- ``entry-c<cycle>-<SYMBOL>``  a scanned cycle's entry (one per cycle and symbol)
- ``manual-<24 hex>``          an operator's entry (the CLI, or derived from the task id)
- ``exit-p<position>[-<n>]``   a position's sell, and its follow-ups after a partial fill
- ``stop-p<position>-<n>``     a standalone protective stop
- a UUID                        a bracket leg: named by the broker, never by us
"""

from __future__ import annotations

import hashlib
import re
import uuid

MAX_LENGTH = 48  # orders.client_order_id, paper_orders.client_order_id and Alpaca's own limit
SYMBOL_PATTERN = r"[A-Z0-9][A-Z0-9.\-]{0,15}"  # what a ticker may look like once upper-cased (securities.symbol: 16)
_ROW_ID = r"[1-9][0-9]{0,9}"
_HEX24 = re.compile(r"[0-9a-f]{24}")

NAMESPACES: dict[str, re.Pattern[str]] = {
    "entry": re.compile(rf"entry-c(?P<cycle_id>{_ROW_ID})-(?P<symbol>{SYMBOL_PATTERN})"),
    "manual": re.compile(r"manual-[0-9a-f]{24}"),
    "exit": re.compile(rf"exit-p(?P<position_id>{_ROW_ID})(?:-(?:[2-9]|[1-9][0-9]{{1,5}}))?"),
    "stop": re.compile(rf"stop-p(?P<position_id>{_ROW_ID})-{_ROW_ID}"),
    "broker": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
}


def entry(cycle_id: int, symbol: str) -> str:
    """The entry of ``symbol`` planned by cycle ``cycle_id``: a re-evaluated cycle plans the same id."""
    return f"entry-c{cycle_id}-{symbol}"


def manual(token: str | None = None) -> str:
    """An operator's entry; ``token`` (24 lower-case hex digits) defaults to a fresh random one."""
    token = uuid.uuid4().hex[:24] if token is None else token
    if not _HEX24.fullmatch(token):
        raise ValueError(f"a manual entry token is 24 lower-case hex digits, got {token!r}")
    return f"manual-{token}"


def manual_for_task(task_id: str | None) -> str:
    """The manual entry id of one task message: a redelivery of the same message derives the same id.

    A UUID task id (what Celery generates) keeps its first 24 hex digits, as before; any other
    task id a caller chose is hashed, so it can never shape the id.
    """
    if not task_id:
        return manual()
    try:
        return manual(uuid.UUID(task_id).hex[:24])
    except ValueError:
        return manual(hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:24])


def exit(position_id: int, attempt: int = 1) -> str:  # noqa: A001 - the namespace's name
    """``exit-p<id>``; a follow-up sell for what a partial fill left over is ``exit-p<id>-<n>``."""
    return f"exit-p{position_id}" if attempt == 1 else f"exit-p{position_id}-{attempt}"


STOP_PREFIX = "stop-p"


def stop(position_id: int, n: int) -> str:
    return f"{STOP_PREFIX}{position_id}-{n}"


def owners(client_order_id: str) -> list[str]:
    """The namespaces ``client_order_id`` belongs to: exactly one for every id Catalyst derives."""
    if not isinstance(client_order_id, str) or len(client_order_id) > MAX_LENGTH:
        return []
    return [name for name, pattern in NAMESPACES.items() if pattern.fullmatch(client_order_id)]


def owner(client_order_id: str) -> str | None:
    found = owners(client_order_id)
    return found[0] if len(found) == 1 else None
