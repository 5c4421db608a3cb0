"""Alpaca broker through alpaca-py, made safe for money paths.

- Every HTTP call has a timeout and waits for the shared rate-limit bucket; alpaca-py's own
  retries (which would resubmit orders on 429/504) are switched off.
- Submits are idempotent by ``client_order_id``: HTTP 422 code 40010001 ("client_order_id must
  be unique") means the order already exists, so it is fetched and adopted.
- A submit whose outcome is unknown (timeout, connection reset) raises
  :class:`OrderOutcomeUnknown`; callers record it and resolve it by client id, never assume failure.
- Entries are bracket orders: the stop-loss and take-profit legs live at the broker, so a
  position stays protected even while every worker is down.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlparse

import requests
import structlog

from catalyst.brokers.base import BrokerError, BrokerOrderReport, BrokerPositionReport, OrderOutcomeUnknown, OrderRequest
from catalyst.domain import BadInput

log = structlog.get_logger("catalyst.alpaca")
PAPER_HOST = "paper-api.alpaca.markets"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
DUPLICATE_CLIENT_ORDER_ID = 40010001


def check_endpoint(base_url: str, live_trading: bool) -> str:
    """Refuse a live endpoint unless trading live was asked for explicitly.

    The paper endpoint and loopback test servers (fakes, local recorders) need no opt-in;
    anything else might move real money and needs ``CATALYST_LIVE_TRADING=true``.
    """
    host = (urlparse(base_url).hostname or "").lower()
    if host == PAPER_HOST or host in LOCAL_HOSTS:
        return "paper" if host == PAPER_HOST else "local"
    if not live_trading:
        raise BadInput(f"refusing to trade on {base_url}: it is not Alpaca's paper endpoint. "
                       "Set CATALYST_LIVE_TRADING=true to trade live (real money)")
    log.warning("live_trading_enabled", endpoint=base_url)
    return "live"


def _float(value) -> float | None:
    return None if value in (None, "") else float(value)


def report_from_order(order) -> BrokerOrderReport:
    """An alpaca-py ``Order`` as a broker report (legs included)."""
    def enum(value) -> str | None:
        return getattr(value, "value", value)

    return BrokerOrderReport(
        broker_order_id=str(order.id), client_order_id=order.client_order_id, symbol=order.symbol,
        side=enum(order.side), qty=_float(order.qty) or 0.0, status=enum(order.status),
        filled_qty=_float(order.filled_qty) or 0.0, filled_avg_price=_float(order.filled_avg_price),
        filled_at=order.filled_at, order_type=enum(order.type or order.order_type) or "market",
        stop_price=_float(order.stop_price), limit_price=_float(order.limit_price),
        legs=tuple(report_from_order(leg) for leg in (order.legs or ())),
    )


class AlpacaBroker:
    name = "alpaca"
    supports_legs = True

    def __init__(self, *, api_key: str, secret_key: str, base_url: str, live_trading: bool, timeout: float,
                 bucket) -> None:
        from alpaca.trading.client import TradingClient

        from catalyst.alpaca_http import guard_client

        if not api_key or not secret_key:
            raise BadInput("CATALYST_BROKER=alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY")
        self.mode = check_endpoint(base_url, live_trading)
        self.client = TradingClient(api_key=api_key, secret_key=secret_key, paper=self.mode != "live",
                                    url_override=base_url)
        guard_client(self.client, timeout=timeout, bucket=bucket)

    # -- orders ---------------------------------------------------------------------------------
    def submit_order(self, request: OrderRequest) -> BrokerOrderReport:
        from alpaca.common.exceptions import APIError

        from catalyst.alpaca_http import api_error_code, api_error_status, retry_after_rate_limit

        data = self._order_data(request)
        try:
            order = retry_after_rate_limit(lambda: self.client.submit_order(data))
        except APIError as exc:
            if api_error_status(exc) == 422 and api_error_code(exc) == DUPLICATE_CLIENT_ORDER_ID:
                existing = self.get_order(request.client_order_id)
                if existing is not None:
                    log.info("order_adopted", client_order_id=request.client_order_id, status=existing.status)
                    return existing
            if (api_error_status(exc) or 0) >= 500:  # the server failed mid-request: it may have placed the order
                raise OrderOutcomeUnknown(f"submit of {request.client_order_id} failed at Alpaca "
                                          f"(HTTP {api_error_status(exc)})") from None
            log.warning("order_refused", client_order_id=request.client_order_id, status=api_error_status(exc),
                        error=_message(exc))
            return BrokerOrderReport("", request.client_order_id, request.symbol, request.side, request.qty,
                                     "rejected", reason=_message(exc))
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise OrderOutcomeUnknown(f"submit of {request.client_order_id} got no answer: {type(exc).__name__}") \
                from None
        return report_from_order(order)

    def _order_data(self, request: OrderRequest):
        from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, StopLossRequest, TakeProfitRequest

        fields = {"symbol": request.symbol, "qty": request.qty, "side": OrderSide(request.side),
                  "time_in_force": TimeInForce.DAY, "client_order_id": request.client_order_id}
        if request.stop_loss_price is not None and request.take_profit_price is not None:
            fields.update(order_class=OrderClass.BRACKET,
                          stop_loss=StopLossRequest(stop_price=round(request.stop_loss_price, 2)),
                          take_profit=TakeProfitRequest(limit_price=round(request.take_profit_price, 2)))
        if request.order_type == "limit":
            return LimitOrderRequest(limit_price=round(request.limit_price, 2), **fields)
        return MarketOrderRequest(**fields)

    def get_order(self, client_order_id: str) -> BrokerOrderReport | None:
        return self._get(lambda: self.client.get_order_by_client_id(client_order_id))

    def get_order_by_id(self, broker_order_id: str) -> BrokerOrderReport | None:
        return self._get(lambda: self.client.get_order_by_id(broker_order_id))

    def cancel_order(self, broker_order_id: str) -> BrokerOrderReport | None:
        from alpaca.common.exceptions import APIError

        from catalyst.alpaca_http import api_error_status, retry_after_rate_limit

        try:
            retry_after_rate_limit(lambda: self.client.cancel_order_by_id(broker_order_id))
        except APIError as exc:
            if api_error_status(exc) not in (404, 422):  # 422: already filled or canceled; read its state
                raise BrokerError(f"cancel of {broker_order_id} failed: {_message(exc)}") from None
        return self.get_order_by_id(broker_order_id)

    def replace_stop(self, broker_order_id: str, stop_price: float) -> BrokerOrderReport:
        from alpaca.common.exceptions import APIError
        from alpaca.trading.requests import ReplaceOrderRequest

        from catalyst.alpaca_http import retry_after_rate_limit

        try:
            order = retry_after_rate_limit(lambda: self.client.replace_order_by_id(
                broker_order_id, ReplaceOrderRequest(stop_price=round(stop_price, 2))))
        except APIError as exc:
            raise BrokerError(f"replacing stop {broker_order_id} failed: {_message(exc)}") from None
        return report_from_order(order)

    def get_position(self, symbol: str) -> BrokerPositionReport | None:
        found = self._get(lambda: self.client.get_open_position(symbol), convert=False)
        if found is None:
            return None
        return BrokerPositionReport(found.symbol, float(found.qty), float(found.avg_entry_price))

    def clock(self):
        from catalyst.alpaca_http import retry_after_rate_limit

        return retry_after_rate_limit(self.client.get_clock)

    def calendar(self, start: datetime, end: datetime):
        from alpaca.trading.requests import GetCalendarRequest

        from catalyst.alpaca_http import retry_after_rate_limit

        return retry_after_rate_limit(lambda: self.client.get_calendar(
            GetCalendarRequest(start=start.date(), end=end.date())))

    def _get(self, call, convert: bool = True):
        """A read: retried after rate limits, ``None`` for 404, unknown outcome on timeouts."""
        from alpaca.common.exceptions import APIError

        from catalyst.alpaca_http import api_error_status, retry_after_rate_limit

        try:
            found = retry_after_rate_limit(call)
        except APIError as exc:
            if api_error_status(exc) == 404:
                return None
            raise BrokerError(f"alpaca: {_message(exc)}") from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise BrokerError(f"alpaca did not answer: {type(exc).__name__}") from None
        return report_from_order(found) if convert else found


def _message(exc) -> str:
    try:
        return exc.message
    except Exception:
        return str(exc)[:200]
