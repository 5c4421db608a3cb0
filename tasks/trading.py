"""Scan → evaluate → enter."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import OperationalError

from catalyst.celery import app
from catalyst.cycles import evaluate_cycle, scan
from catalyst.domain import BadInput
from catalyst.orders import OrderPending
from catalyst.entries import open_position
from catalyst.runtime import get_runtime
from tasks.base import CatalystTask, positive_int


def parse_slot(value: str | None) -> datetime:
    if value is None:
        return get_runtime().clock.now()
    try:
        slot = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadInput(f"slot {value!r} is not an ISO-8601 timestamp") from None
    if slot.tzinfo is None:
        raise BadInput(f"slot {value!r} has no UTC offset")
    return slot


@app.task(name="catalyst.scan_market", base=CatalystTask, bind=True)
def scan_market(self, slot: str | None = None) -> int:
    """Rank the universe for one schedule slot and hand the cycle to evaluation."""
    cycle_id = scan(get_runtime(), parse_slot(slot))
    evaluate_candidates.apply_async(args=[cycle_id])
    return cycle_id


@app.task(name="catalyst.evaluate_candidates", base=CatalystTask, bind=True)
def evaluate_candidates(self, cycle_id: int) -> list[str]:
    planned = evaluate_cycle(get_runtime(), positive_int(cycle_id, "cycle_id"), worker=self.request.hostname)
    for p in planned:
        enter_position.apply_async(kwargs={
            "symbol": p.symbol, "qty": p.qty, "stop": p.stop_loss_price, "target": p.take_profit_price,
            "cycle_id": p.cycle_id, "client_order_id": p.client_order_id, "reason": "momentum"})
    return [p.symbol for p in planned]


@app.task(name="catalyst.enter_position", base=CatalystTask, bind=True, autoretry_for=(OrderPending, OperationalError),
          retry_backoff=2, retry_backoff_max=30, max_retries=10)
def enter_position(self, symbol: str, qty: float, stop: float | None = None, target: float | None = None,
                   cycle_id: int | None = None, client_order_id: str | None = None, reason: str = "manual") -> int:
    """Buy and open a position; the client order id (from the message) makes redelivery harmless."""
    if not client_order_id:
        client_order_id = f"manual-{(self.request.id or '').replace('-', '')[:24]}"
    if not isinstance(symbol, str):
        raise BadInput(f"symbol must be text, got {symbol!r}")
    position = open_position(get_runtime(), symbol=symbol, qty=qty, stop=stop, target=target,
                             client_order_id=client_order_id, cycle_id=cycle_id, reason=reason,
                             worker=self.request.hostname)
    return position.id
