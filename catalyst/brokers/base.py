"""The broker protocol: submit orders idempotently by client order id, report what the broker holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from catalyst.core.domain import CatalystError

FINAL_ORDER_STATUSES = frozenset({"filled", "canceled", "rejected", "expired", "replaced", "done_for_day"})


class BrokerError(CatalystError):
    """The broker refused or failed a request; the message says which and why."""


class OrderOutcomeUnknown(BrokerError):
    """The request may or may not have reached the broker (timeout, connection reset).

    Never treat this as a failure: record the order as ``unknown`` and resolve it by asking
    the broker for the client order id.
    """


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
    stop_price: float | None = None  # order_type "stop": a standalone stop (brokers that support legs)
    time_in_force: str = "day"  # "gtc" for protection that must outlast the session

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
    order_type: str = "market"
    stop_price: float | None = None
    limit_price: float | None = None
    legs: tuple["BrokerOrderReport", ...] = ()
    replaced_by: str | None = None  # a replaced order names the order that took its place

    @property
    def leg_purpose(self) -> str:
        """For bracket legs: the stop leg protects, the limit leg takes profit."""
        return "stop" if self.order_type in ("stop", "stop_limit", "trailing_stop") else "take_profit"

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
    supports_legs: bool  # True when entries carry broker-side stop and take-profit legs

    def submit_order(self, request: OrderRequest) -> BrokerOrderReport:
        """Submit once: a repeated ``client_order_id`` returns the existing order, never a second one."""

    def get_order(self, client_order_id: str) -> BrokerOrderReport | None:
        """The order with this client id, or ``None`` if the broker never received it."""

    def get_position(self, symbol: str) -> BrokerPositionReport | None:
        """What the broker holds in ``symbol``."""

    def list_positions(self) -> list[BrokerPositionReport]:
        """Everything the broker holds, in one call (reconciliation, never once per position)."""

    def list_open_orders(self) -> list[BrokerOrderReport]:
        """Every open order (bracket legs listed as orders of their own), in one call."""

    def get_order_by_id(self, broker_order_id: str) -> BrokerOrderReport | None:
        """One order by the broker's id (bracket legs are looked up this way)."""

    def cancel_order(self, broker_order_id: str) -> BrokerOrderReport | None:
        """Cancel if still open; returns the order's state afterwards (it may have filled first)."""

    def replace_stop(self, broker_order_id: str, stop_price: float) -> BrokerOrderReport:
        """Move a stop leg (Alpaca has no trailing bracket leg: the monitor ratchets the stop)."""

    def equity(self) -> float:
        """The account's equity (cash plus positions at market), for percent-of-equity sizing.

        A finite number above zero, or :class:`BrokerError`: sizing never guesses it.
        """
