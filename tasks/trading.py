"""Scan → evaluate → enter."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from catalyst import task_args
from catalyst.celery import app
from catalyst.cycles import evaluate_cycle, scan
from catalyst.orders import OrderPending
from catalyst.entries import open_position
from catalyst.runtime import get_runtime
from tasks.base import CatalystTask


@app.task(name="catalyst.scan_market", base=CatalystTask, bind=True)
def scan_market(self, slot: str | None = None) -> int:
    """Run the candidate funnel for one schedule slot and hand the cycle to evaluation."""
    slot_at = task_args.slot(slot)
    cycle_id = scan(get_runtime(), slot_at or get_runtime().clock.now())
    evaluate_candidates.apply_async(args=[cycle_id])
    return cycle_id


@app.task(name="catalyst.evaluate_candidates", base=CatalystTask, bind=True, autoretry_for=(OperationalError,),
          retry_backoff=2, retry_backoff_max=30, max_retries=5)
def evaluate_candidates(self, cycle_id: int) -> list[str]:
    planned = evaluate_cycle(get_runtime(), task_args.row_id(cycle_id, "cycle_id"), worker=self.request.hostname)
    for p in planned:
        enter_position.apply_async(kwargs={
            "symbol": p.symbol, "qty": p.qty, "stop": p.stop_loss_price, "target": p.take_profit_price,
            "cycle_id": p.cycle_id, "client_order_id": p.client_order_id, "reason": p.reason})
    return [p.symbol for p in planned]


@app.task(name="catalyst.enter_position", base=CatalystTask, bind=True, autoretry_for=(OrderPending, OperationalError),
          retry_backoff=2, retry_backoff_max=30, max_retries=10)
def enter_position(self, symbol: str, qty: float, stop: float | None = None, target: float | None = None,
                   cycle_id: int | None = None, client_order_id: str | None = None, reason: str = "manual") -> int:
    """Buy and open a position; the client order id (from the message, or derived) makes redelivery harmless.

    Every argument is parsed before anything is read or written; the client order id must be the
    one this entry's own path derives (a cycle's, or a manual one), never another path's.
    """
    symbol = task_args.symbol(symbol)
    qty = task_args.quantity(qty)
    stop, target = task_args.optional_price(stop, "stop"), task_args.optional_price(target, "target")
    cycle_id = task_args.optional_row_id(cycle_id, "cycle_id")
    reason = task_args.reason(reason)
    client_order_id = task_args.entry_order_id_of(client_order_id, symbol=symbol, cycle_id=cycle_id,
                                                      task_id=self.request.id)
    position = open_position(get_runtime(), symbol=symbol, qty=qty, stop=stop, target=target,
                             client_order_id=client_order_id, cycle_id=cycle_id, reason=reason,
                             worker=self.request.hostname)
    return position.id
