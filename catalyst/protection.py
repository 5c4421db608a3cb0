"""Broker-side protection of held positions: the stop leg that trails the high-watermark."""

from __future__ import annotations

import structlog
from sqlalchemy import select

from catalyst import orders
from catalyst.db.engine import session_scope
from catalyst.db.models import Order, Position
from catalyst.records import record_activity
from catalyst.runtime import Runtime

log = structlog.get_logger("catalyst.protection")


STOP_STEP = 0.002  # move the broker's stop only for a rise of at least 0.2%: fewer replace calls


def raise_stop(rt: Runtime, position_id: int, new_stop: float) -> bool:
    """Ratchet the broker-side stop leg up to ``new_stop`` (never down).

    Alpaca has no trailing bracket leg, so the monitor trails the high-watermark by replacing
    the stop leg: the position stays protected at the broker even while workers are down.
    """
    new_stop = round(new_stop, 2)
    with session_scope() as s:
        position = s.get(Position, position_id)
        leg = s.scalar(select(Order).where(Order.position_id == position_id, Order.purpose == "stop",
                                           Order.status.in_(("new", "accepted", "held", "pending_new"))))
        if position is None or position.status != "open" or leg is None:
            return False
        current = position.stop_loss_price or 0.0
        if new_stop < current * (1 + STOP_STEP):
            return False
        leg_id = leg.broker_order_id
    report = rt.broker.replace_stop(leg_id, new_stop)
    now = rt.clock.now()
    with session_scope() as s:
        old = s.scalar(select(Order).where(Order.broker_order_id == leg_id))
        old.status, old.updated_at = "replaced", now
        orders.record_leg(s, report, position_id, old.cycle_id, now)
        position = s.get(Position, position_id)
        position.stop_loss_price = new_stop
        record_activity(s, "stop_raised", now, position_id=position_id, symbol=position.symbol, stop=new_stop,
                        previous=current, leg=report.broker_order_id)
    log.info("stop_raised", position_id=position_id, stop=new_stop, previous=current)
    return True
