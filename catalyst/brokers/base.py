"""The broker protocol: submit orders idempotently by client order id, report what the broker holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from catalyst.domain import CatalystError

FINAL_ORDER_STATUSES = frozenset({"filled", "canceled", "rejected", "expired"})


class BrokerError(CatalystError):
    """The broker refused or failed a request; the message says which and why."""


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: str  # "buy" | "sell"
    qty: float
    order_type: str = "market"
    limit_price: float | None = None
    stop_loss_price: float | None = None  # bracket leg (brokers that support it)
    take_profit_price: float | None = None

    def __post_init__(self) -> None:
        if len(self.client_order_id) > 48:
            raise ValueError("client_order_id is limited to 48 characters")
        if self.side not in ("buy", "sell"):
            raise ValueError(f"side must be buy or sell, not {self.side!r}")


@dataclass(frozen=True)
class BrokerOrderReport:
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    status: str
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    filled_at: datetime | None = None
    reason: str | None = None

    @property
    def is_filled(self) -> bool:
        return self.status == "filled"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


@dataclass(frozen=True)
class BrokerPositionReport:
    symbol: str
    qty: float
    avg_entry_price: float


class Broker(Protocol):
    name: str

    def submit_order(self, request: OrderRequest) -> BrokerOrderReport:
        """Submit once: a repeated ``client_order_id`` returns the existing order, never a second one."""

    def get_order(self, client_order_id: str) -> BrokerOrderReport | None:
        """The order with this client id, or ``None`` if the broker never received it."""

    def get_position(self, symbol: str) -> BrokerPositionReport | None:
        """What the broker holds in ``symbol``."""
