"""Alpaca broker through alpaca-py, made safe for money paths.

- Every HTTP call has a timeout and waits for the shared rate-limit bucket; alpaca-py's own
  retries (which would resubmit orders on 429/504) are switched off.
- Submits are idempotent by ``client_order_id``: HTTP 422 code 40010001 ("client_order_id must
  be unique") means the order already exists, so it is fetched and adopted.
- A submit whose outcome is unknown (timeout, connection reset) raises
  :class:`OrderOutcomeUnknown`; callers record it and resolve it by client id, never assume failure.
- Entries are ``gtc`` bracket orders: the stop-loss and take-profit legs live at the broker and
  outlast the session close, so a position stays protected overnight and while every worker is down.
- Cancel and replace go through the same guard as submits: a lost answer is
  :class:`OrderOutcomeUnknown` (resolved by reading the order; a replaced order names its successor
  in ``replaced_by``), every other failure a :class:`BrokerError` — never a raw transport error.
"""

from __future__ import annotations

import math
from datetime import datetime
from urllib.parse import urlparse

import redis
import requests
import structlog

from catalyst.brokers.base import BrokerError, BrokerOrderReport, BrokerPositionReport, OrderOutcomeUnknown, OrderRequest
from catalyst.core.domain import BadInput

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
        replaced_by=str(order.replaced_by) if getattr(order, "replaced_by", None) else None,
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
        from catalyst.ratelimit import RateLimitTimeout

        data = self._order_data(request)
        try:
            order = retry_after_rate_limit(lambda: self.client.submit_order(data))
        except APIError as exc:
            if api_error_status(exc) == 422 and api_error_code(exc) == DUPLICATE_CLIENT_ORDER_ID:
                try:
                    existing = self.get_order(request.client_order_id)
                except BrokerError as lookup:
                    raise OrderOutcomeUnknown(f"submit of {request.client_order_id}: the client_order_id is taken "
                                              f"and the lookup failed ({lookup})") from None
                if existing is not None:
                    log.info("order_adopted", client_order_id=request.client_order_id, status=existing.status)
                    return existing
                # Alpaca holds an order under this id that it cannot show us yet: it may fill. Never a refusal.
                raise OrderOutcomeUnknown(f"submit of {request.client_order_id}: Alpaca says the client_order_id "
                                          "is taken, but the order is not found yet") from None
            if (api_error_status(exc) or 0) >= 500:  # the server failed mid-request: it may have placed the order
                raise OrderOutcomeUnknown(f"submit of {request.client_order_id} failed at Alpaca "
                                          f"(HTTP {api_error_status(exc)})") from None
            log.warning("order_refused", client_order_id=request.client_order_id, status=api_error_status(exc),
                        error=_message(exc))
            return BrokerOrderReport("", request.client_order_id, request.symbol, request.side, request.qty,
                                     "rejected", reason=_message(exc))
        except RateLimitTimeout as exc:  # the request budget never allowed it: nothing was sent
            raise BrokerError(f"submit of {request.client_order_id} not sent: {exc}") from None
        except redis.RedisError as exc:  # the shared rate-limit bucket failed before (or after a 429): not placed
            raise BrokerError(f"submit of {request.client_order_id} not sent: rate-limit store failed ({exc})") \
                from None
        except requests.RequestException as exc:  # no answer, or one we could not read: it may have been placed
            raise OrderOutcomeUnknown(f"submit of {request.client_order_id} got no usable answer: "
                                      f"{type(exc).__name__}") from None
        return report_from_order(order)

    def _order_data(self, request: OrderRequest):
        from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
        from alpaca.trading.requests import (LimitOrderRequest, MarketOrderRequest, StopLossRequest, StopOrderRequest,
                                             TakeProfitRequest)

        fields = {"symbol": request.symbol, "qty": request.qty, "side": OrderSide(request.side),
                  "time_in_force": TimeInForce(request.time_in_force), "client_order_id": request.client_order_id}
        if request.stop_loss_price is not None and request.take_profit_price is not None:
            # gtc, not day: Alpaca expires day orders — legs included — at the close, and a position may be held
            # overnight (max hold 24 h). Brackets accept day or gtc only; the parent takes the same time in force.
            fields.update(order_class=OrderClass.BRACKET, time_in_force=TimeInForce.GTC,
                          stop_loss=StopLossRequest(stop_price=round(request.stop_loss_price, 2)),
                          take_profit=TakeProfitRequest(limit_price=round(request.take_profit_price, 2)))
        if request.order_type == "limit":
            return LimitOrderRequest(limit_price=round(request.limit_price, 2), **fields)
        if request.order_type == "stop":
            return StopOrderRequest(stop_price=round(request.stop_price, 2), **fields)
        return MarketOrderRequest(**fields)

    def get_order(self, client_order_id: str) -> BrokerOrderReport | None:
        return self._get(lambda: self.client.get_order_by_client_id(client_order_id))

    def get_order_by_id(self, broker_order_id: str) -> BrokerOrderReport | None:
        return self._get(lambda: self.client.get_order_by_id(broker_order_id))

    def cancel_order(self, broker_order_id: str) -> BrokerOrderReport | None:
        """Ask Alpaca to cancel (HTTP 204 means *accepted*: the order passes through ``pending_cancel``).

        Returns the order's state afterwards; callers follow it until it is final. A cancel whose
        answer was lost raises :class:`OrderOutcomeUnknown` (it may have been applied).
        """
        from alpaca.common.exceptions import APIError

        from catalyst.alpaca_http import api_error_status

        try:
            self._call(lambda: self.client.cancel_order_by_id(broker_order_id), f"cancel of {broker_order_id}",
                       changes_orders=True)
        except BrokerError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, APIError) and api_error_status(cause) in (404, 422)):
                raise  # 422: already filled, canceled or pending cancel; 404: unknown. Either way, read its state
        return self.get_order_by_id(broker_order_id)

    def replace_stop(self, broker_order_id: str, stop_price: float) -> BrokerOrderReport:
        """Move a stop leg. Alpaca answers with a *new* order (the old one becomes ``replaced``).

        An answer that never came raises :class:`OrderOutcomeUnknown`: resolve it with
        :meth:`get_order_by_id` on the old id and follow its ``replaced_by``.
        """
        return self.replace_order(broker_order_id, stop_price=stop_price)

    def replace_order(self, broker_order_id: str, *, stop_price: float | None = None,
                      limit_price: float | None = None) -> BrokerOrderReport:
        from alpaca.trading.requests import ReplaceOrderRequest

        fields = {k: round(v, 2) for k, v in (("stop_price", stop_price), ("limit_price", limit_price))
                  if v is not None}
        order = self._call(lambda: self.client.replace_order_by_id(broker_order_id, ReplaceOrderRequest(**fields)),
                           f"replacing {broker_order_id}", changes_orders=True)
        return report_from_order(order)

    def get_position(self, symbol: str) -> BrokerPositionReport | None:
        found = self._get(lambda: self.client.get_open_position(symbol), convert=False)
        if found is None:
            return None
        return BrokerPositionReport(found.symbol, float(found.qty), float(found.avg_entry_price))

    def list_positions(self) -> list[BrokerPositionReport]:
        """Every position the account holds, in one request (reconciliation compares them with ours)."""
        return [BrokerPositionReport(p.symbol, float(p.qty), float(p.avg_entry_price))
                for p in self._call(self.client.get_all_positions, "listing positions")]

    def list_open_orders(self) -> list[BrokerOrderReport]:
        """Every open order in one request (Alpaca's cap: 500), flat: an open leg of a filled bracket is listed itself."""
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        found = self._call(lambda: self.client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=False,
                                                                           limit=500)), "listing open orders")
        return [report_from_order(o) for o in found]

    def equity(self) -> float:
        """``equity`` of GET /v2/account (cash + long and short market value, computed by Alpaca)."""
        account = self._call(self.client.get_account, "reading the account")
        raw = getattr(account, "equity", None)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise BrokerError(f"Alpaca's account has no usable equity ({raw!r})") from None
        if not math.isfinite(value) or value <= 0:
            raise BrokerError(f"Alpaca's account equity {raw!r} is not a number above zero")
        return value

    def clock(self):
        return self._call(self.client.get_clock, "clock")

    def calendar(self, start: datetime, end: datetime):
        from alpaca.trading.requests import GetCalendarRequest

        return self._call(lambda: self.client.get_calendar(GetCalendarRequest(start=start.date(), end=end.date())),
                          "calendar")

    def _get(self, call, convert: bool = True):
        """A read: retried after rate limits, ``None`` for 404, :class:`BrokerError` for anything else."""
        from alpaca.common.exceptions import APIError

        from catalyst.alpaca_http import api_error_status

        try:
            found = self._call(call, "alpaca")
        except BrokerError as exc:
            if isinstance(exc.__cause__, APIError) and api_error_status(exc.__cause__) == 404:
                return None
            raise
        return report_from_order(found) if convert else found

    def _call(self, call, what: str, *, changes_orders: bool = False):
        """Every request to Alpaca goes through here: nothing but :class:`BrokerError` ever escapes.

        For a request that changes orders (cancel, replace) a lost answer — timeout, dropped
        connection, 5xx — is :class:`OrderOutcomeUnknown`: Alpaca may have applied it. A refusal
        (4xx) is a plain :class:`BrokerError` whose ``__cause__`` is the ``APIError``.
        """
        from alpaca.common.exceptions import APIError

        from catalyst.alpaca_http import api_error_status, retry_after_rate_limit
        from catalyst.ratelimit import RateLimitTimeout

        unknown = OrderOutcomeUnknown if changes_orders else BrokerError
        try:
            return retry_after_rate_limit(call)
        except APIError as exc:
            status = api_error_status(exc) or 0
            error = (unknown if status >= 500 else BrokerError)(f"{what} failed at Alpaca (HTTP {status}): "
                                                                f"{_message(exc)}")
            raise error from exc
        except RateLimitTimeout as exc:  # nothing was sent
            raise BrokerError(f"{what}: rate limit budget exhausted ({exc})") from None
        except redis.RedisError as exc:  # the shared rate-limit bucket failed: nothing that changes orders was sent
            raise BrokerError(f"{what}: rate-limit store failed ({exc})") from None
        except requests.RequestException as exc:  # no answer, or a garbled one
            raise unknown(f"{what}: Alpaca did not answer usably ({type(exc).__name__})") from None


def _message(exc) -> str:
    try:
        return exc.message
    except Exception:
        return str(exc)[:200]
