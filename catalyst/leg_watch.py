"""Noticing, within one monitor interval, that a bracket leg at the broker sold a position for us.

The broker may fill a stop or take-profit leg at any moment; if the price then bounces, nothing
in the exit signals would say so, and the monitor would keep "holding" (and trailing, and
counting against the limit) a position the broker no longer holds. So every check of a position
with live legs asks whether its legs are still open — from **one** ``list_open_orders`` call per
monitor cycle, shared by every check of that cycle (through Redis across processes) — and only a
leg that has left the open list is looked up by id.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime

import structlog
from sqlalchemy import select

from catalyst import orders
from catalyst.brokers.base import BrokerError, BrokerOrderReport
from catalyst.db.engine import session_scope
from catalyst.db.models import Order
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.leg_watch")
LEG_PURPOSES = ("stop", "take_profit")
LIVE_LEG_STATUSES = ("new", "accepted", "held", "pending_new", "partially_filled", "pending_replace",
                     "pending_cancel")
_memo: dict[str, frozenset[str]] = {}  # this process's copy, latest cycle only
_memo_lock = threading.Lock()


def filled_leg(rt: Runtime, position_id: int, slot: datetime) -> BrokerOrderReport | None:
    """The position's leg that has filled since we last looked, recorded; ``None`` if none has (or can't tell)."""
    with session_scope() as s:
        legs = s.execute(select(Order.broker_order_id, Order.purpose).where(
            Order.position_id == position_id, Order.purpose.in_(LEG_PURPOSES), Order.broker_order_id.is_not(None),
            Order.status.in_(LIVE_LEG_STATUSES))).all()
    if not legs:
        return None
    open_ids = open_order_ids(rt, slot)
    if open_ids is None:
        return None
    filled = None
    for leg_id, purpose in legs:  # every leg that left the open list is synced: its sibling too (OCO)
        if leg_id in open_ids:
            continue
        report = _current(rt, position_id, leg_id, purpose)
        if report is not None and report.is_filled:
            log.info("leg_fill_noticed", position_id=position_id, leg=report.broker_order_id, purpose=purpose,
                     price=report.filled_avg_price, qty=report.filled_qty)
            filled = filled or report
    return filled


def open_order_ids(rt: Runtime, slot: datetime) -> frozenset[str] | None:
    """Broker ids of every open order in monitor cycle ``slot``: one broker call per cycle for all checks."""
    key = slot.isoformat()
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    shared, name = _redis(rt), f"catalyst:open_orders:{key}"
    cached = _shared_get(shared, name)
    if cached is not None:
        ids = frozenset(json.loads(cached))
    else:
        try:
            ids = frozenset(r.broker_order_id for r in rt.broker.list_open_orders())
        except BrokerError as exc:
            log.warning("open_orders_unavailable", slot=key, error=str(exc))
            return None
        _shared_put(shared, name, json.dumps(sorted(ids)),
                    max(int(rt.clock.wall_seconds(2 * rt.settings.monitor_check_interval)), 2))
    with _memo_lock:
        _memo.clear()
        _memo[key] = ids
    return ids


def _current(rt: Runtime, position_id: int, leg_id: str, purpose: str) -> BrokerOrderReport | None:
    """What the broker says of a leg now, recorded (a replaced stop is followed to the leg in its place)."""
    from catalyst.protection import sync_stop_leg

    if purpose == "stop":
        return sync_stop_leg(rt, position_id, leg_id)
    try:
        report = rt.broker.get_order_by_id(leg_id)
    except BrokerError as exc:
        log.warning("leg_unresolved", position_id=position_id, leg=leg_id, error=str(exc))
        return None
    if report is not None:
        with session_scope() as s:
            row = s.scalar(select(Order).where(Order.broker_order_id == leg_id))
            orders.apply_report(row, report, rt.clock.now())
    return report


_clients: dict[str, object] = {}


def _shared_get(client, name: str) -> bytes | None:
    """The cycle's listing from Redis; a Redis blip only costs this process its own broker call."""
    if client is None:
        return None
    try:
        return client.get(name)
    except Exception as exc:  # noqa: BLE001 - a cache miss, not a failed check
        log.warning("open_orders_cache_unavailable", error=str(exc))
        return None


def _shared_put(client, name: str, value: str, ttl: int) -> None:
    if client is None:
        return
    try:
        client.set(name, value, nx=True, ex=ttl)
    except Exception as exc:  # noqa: BLE001 - the next check fetches again
        log.warning("open_orders_cache_unavailable", error=str(exc))


def _redis(rt: Runtime):
    url = rt.settings.redis_url
    if not url:
        return None
    if url not in _clients:
        import redis

        _clients[url] = redis.Redis.from_url(url, socket_timeout=5)
    return _clients[url]
