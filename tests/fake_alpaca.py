"""A local fake of Alpaca's trading and market-data REST APIs, so tests drive the real ``alpaca-py`` clients.

    with FakeAlpaca() as alpaca:                        # or the ``fake_alpaca`` fixture
        kw = dict(api_key=alpaca.key_id, secret_key=alpaca.secret, url_override=alpaca.base_url)
        trading = TradingClient(paper=True, **kw)       # also StockHistoricalDataClient, ScreenerClient, NewsClient
        alpaca.set_price("AAPL", 190.0)                 # moves the market; resting limit/stop orders trigger
        alpaca.fail("POST", "/v2/orders", "lost_reply") # the next order is applied, its reply is dropped
        alpaca.count("POST", "/v2/orders")              # introspection over every recorded request

One server answers both hosts: alpaca-py builds ``url_override + "/" + api_version + path`` (``v2`` for trading
and stock data, ``v1beta1`` for screener and news), so every client shares ``base_url``.

Behaviour: orders are market / limit / stop, ``order_class`` simple or bracket (legs: take-profit limit and
stop, ``held`` until the parent fills; OCO — a leg filling or being canceled cancels its sibling).
``POST /v2/orders`` replies with the order as accepted (fills are asynchronous at Alpaca); with ``auto_fill``
the market order has filled by the time the next request arrives (``reply_before_fill=False`` to reply after).
Everything fills at the current price. Sells larger than the long position minus shares held by open sell
orders (an OCO pair holds its shares once) get 403 40310000; ``shorting_enabled`` lets a flat account go short.

Strict by default, as Alpaca documents it (``STRICTNESS``; ``lenient(*names)`` turns one off for a test): the
stop leg stays ``held`` after the parent fills (it still triggers), cancelling any order of a bracket cancels
the group, DELETE is 204 and passes through ``pending_cancel`` (shares still held) until the next read, ``day``
orders (legs included) expire at the session close (13:00 on early closes), outside the session market orders
queue as ``accepted`` and fill at the open while nothing triggers (a gap fills at the open's price), PATCH
refuses unchanged parameters (422 42210000 "order parameters are not changed") and orders no longer open
("cannot replace order in filled status"), a partial take-profit fill resizes the stop leg, a filled leg's
sibling is cancelled only by the next read (a fast market can fill both), and every response carries
``X-RateLimit-Limit/-Remaining/-Reset``, and synthesised minute bars include the extended hours (pre-market from
04:00 ET, after-hours to 20:00 ET or 17:00 after an early close; 2% above the price on a volume of 500,000, so a
leak into a session figure shows). ``null_snapshot_fields(symbol, *fields)`` answers snapshot fields null.

Failure kinds for ``fail(method, path_prefix, kind, times=1)``: "timeout" (hold ``hold_seconds`` then close,
not applied), "lost_reply" (applied, connection closed without a reply), "429" (X-RateLimit-* headers), "500",
"422_duplicate", "403_pdt" (40310100 "trade denied due to pattern day trading protection", not applied),
"reject_after_accept" (answered 200 ``accepted``, ``rejected`` by the next read). Method "*" matches any
method. Wrong or missing key headers get 401 40110000.

Control: ``now`` / ``advance``, ``set_session``, ``set_price``, ``set_bars``, ``fill``, ``partial_fills``,
``set_most_actives``, ``set_movers``, ``add_news``, ``auto_fill``, ``page_size``, ``account_overrides``.
Introspection: ``requests``, ``count``, ``request_times``, ``feeds``, ``orders_by_client_id``, ``orders``,
``order``, ``positions``, ``cash``.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock_time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

import pytest

from tests.local_server import LocalServer

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
FAILURE_KINDS = ("timeout", "lost_reply", "429", "500", "422_duplicate", "403_pdt", "reject_after_accept")
# Alpaca's documented behaviour that a naive fake gets kind. All on by default; ``lenient(*names)`` turns
# one off for a test that is about something else.
STRICTNESS = frozenset({
    "held_stop_leg",          # after the parent fills the take-profit leg is `new`, the stop leg stays `held`
    "group_cancel",           # cancelling any order of a bracket cancels the whole group (parent included)
    "pending_cancel",         # DELETE is 204 and the order is `pending_cancel` (shares held) until the next read
    "day_expiry",             # unfilled `day` orders (legs included) expire at the session close
    "queue_outside_session",  # outside the session market orders queue (`accepted`) and nothing triggers
    "replace_unchanged",      # PATCH with the parameters the order already has is refused (422)
    "resize_stop_on_partial",  # a partial take-profit fill resizes the stop leg to what is left
    "oco_race",               # a filled leg's sibling is cancelled by the next read: a gap before it fills both
    "rate_limit_headers",     # X-RateLimit-Limit / -Remaining / -Reset on every response
    "extended_hours_bars",    # synthesised minute bars include pre-market (04:00 ET) and after-hours (to 20:00 ET)
})
RATE_LIMIT = 200  # requests per minute
PRE_MARKET_OPEN = clock_time(4, 0)       # ET: Alpaca's pre-market bars start here ...
AFTER_HOURS_CLOSE = clock_time(20, 0)    # ... and after-hours bars end here (17:00 after an early close)
EARLY_CLOSE_AFTER_HOURS = clock_time(17, 0)
EXTENDED_PREMIUM = 0.02            # extended-hours bars trade 2% above the session price ...
EXTENDED_VOLUME = 500_000          # ... on a volume no session bar has (1,000): a leak shows in any figure
OPEN_STATUSES = {"new", "accepted", "pending_new", "partially_filled", "held", "accepted_for_bidding",
                 "pending_cancel", "pending_replace", "calculated"}
WORKING = {"new", "accepted", "pending_new", "partially_filled"}  # may fill now (held legs may not)


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.body = status, {"code": code, "message": message, **extra}


@dataclass
class RecordedRequest:
    method: str
    path: str                   # without the query string, percent-decoded
    query: dict[str, str]       # repeated keys joined with ","
    headers: dict[str, str]     # lower-cased names; the secret is kept (see ``safe_headers``)
    body: Any
    at: float                   # time.monotonic() on arrival

    @property
    def key_id(self) -> str | None:
        return self.headers.get("apca-api-key-id")

    @property
    def feed(self) -> str | None:
        return self.query.get("feed")

    def safe_headers(self) -> dict[str, str]:
        return {k: ("***" if k == "apca-api-secret-key" else v) for k, v in self.headers.items()}


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: float
    time_in_force: str
    created_at: datetime
    order_class: str = "simple"
    limit_price: float | None = None
    stop_price: float | None = None
    status: str = "accepted"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    extended_hours: bool = False
    legs: list[str] = field(default_factory=list)
    parent: str | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    queued: bool = False        # a market order waiting for the session to open

    @property
    def remaining(self) -> float:
        return round(self.qty - self.filled_qty, 9)


@dataclass
class _Market:
    price: float
    open: float
    high: float
    low: float
    prev_close: float
    volume: float = 0.0
    trades: int = 0
    at: datetime | None = None


def _num(x: float | None) -> str | None:
    """Alpaca sends quantities and prices as decimal strings: 10 -> "10", 101.5 -> "101.5"."""
    if x is None:
        return None
    s = f"{float(x):.9f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _ts(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    dt = datetime.fromisoformat(s) if "T" in s else datetime.combine(date.fromisoformat(s), datetime.min.time(), NY)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-asset/{symbol}"))


@functools.lru_cache(maxsize=1)
def _xnys_sessions() -> dict[date, tuple[datetime, datetime]]:
    import exchange_calendars as xcals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = xcals.get_calendar("XNYS").schedule
    return {ts.date(): (o.to_pydatetime(), c.to_pydatetime()) for ts, o, c in zip(sched.index, sched.open, sched.close)}


class FakeAlpaca(LocalServer):
    thread_name = "fake-alpaca"
    def __init__(self, key_id: str = "PKFAKE0000000000TEST", secret: str = "fake-secret-key", *,
                 cash: float = 100_000.0,
                 now: datetime | None = None, auto_fill: bool = True, reply_before_fill: bool = True,
                 shorting_enabled: bool = False, hold_seconds: float = 5.0, page_size: int = 10_000,
                 strict: frozenset[str] | set[str] = STRICTNESS):
        self.key_id, self.secret = key_id, secret
        self.auto_fill, self.reply_before_fill, self.shorting_enabled = auto_fill, reply_before_fill, shorting_enabled
        self.hold_seconds = hold_seconds      # how long "timeout" holds a request (interrupted at shutdown)
        self.page_size = page_size            # server-side cap on bars / news per page, to exercise paging
        self.account_overrides: dict[str, Any] = {}   # e.g. {"trading_blocked": True}
        unknown = set(strict) - STRICTNESS
        assert not unknown, f"unknown strictness {unknown}; one of {sorted(STRICTNESS)}"
        self.strict: set[str] = set(strict)
        self.snapshot_nulls: dict[str, set[str]] = {}  # symbol -> snapshot fields answered as null
        self._pending: list[tuple[str, str]] = []     # (order id, final status) applied on the next request
        self._reject_next = False
        self._rate_window: tuple[int, int] = (0, 0)   # (minute, requests in it)
        self.requests: list[RecordedRequest] = []
        self.account_id = str(uuid.uuid4())
        self._now = now
        self._cash = self._last_equity = float(cash)
        self._orders: dict[str, _Order] = {}          # insertion order = submission order
        self._positions: dict[str, list[float]] = {}  # symbol -> [signed qty, avg entry price]
        self._market: dict[str, _Market] = {}
        self._bars: dict[str, list[tuple]] = {}
        self._session_overrides: dict[date, tuple[datetime, datetime] | None] = {}
        self._failures: list[list] = []               # [method, path prefix, kind, remaining]
        self._partial: dict[str, float] = {}
        self._most_actives: list[tuple] | None = None
        self._movers: tuple[list, list] | None = None
        self._news: list[dict] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- control: market, clock, failures ------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self._now or datetime.now(UTC)

    @now.setter
    def now(self, value: datetime | None) -> None:
        assert value is None or value.tzinfo is not None, "use a timezone-aware datetime"
        with self._lock:
            self._now = value
            self._sweep()

    def advance(self, **delta: float) -> datetime:
        """Move the frozen clock forward, e.g. ``advance(minutes=5)``."""
        with self._lock:
            self._now = self.now + timedelta(**delta)
            self._sweep()
            return self._now

    def set_price(self, symbol: str, price: float, *, prev_close: float | None = None, volume: float = 0.0) -> None:
        """Move the market; resting limit/stop orders and active bracket legs trigger at the new price."""
        with self._lock:
            m = self._market.get(symbol)
            if m is None:
                m = self._market[symbol] = _Market(price, price, price, price,
                                                   price if prev_close is None else prev_close)
            m.price, m.high, m.low = price, max(m.high, price), min(m.low, price)
            if prev_close is not None:
                m.prev_close = prev_close
            m.volume, m.trades, m.at = m.volume + (volume or 100), m.trades + 1, self.now
            self._sweep()
            self._check_triggers(symbol)

    def set_bars(self, symbol: str, bars: list[tuple]) -> None:
        """Bars served for ``symbol``: ``(timestamp, o, h, l, c, v)`` tuples (the timeframe param is ignored)."""
        with self._lock:
            self._bars[symbol] = sorted(bars, key=lambda b: b[0])

    def set_session(self, day: date, open: str | datetime | None, close: str | datetime | None = None) -> None:
        """Override one day of the session table: ``("13:00"`` ET strings or aware datetimes); ``None`` = closed."""
        def at(t):
            return t if isinstance(t, datetime) else datetime.combine(day, datetime.strptime(t, "%H:%M").time(), NY)
        with self._lock:
            self._session_overrides[day] = None if open is None else (at(open).astimezone(UTC),
                                                                      at(close).astimezone(UTC))

    def sessions(self, start: date, end: date) -> list[tuple[date, datetime, datetime]]:
        """Trading sessions (date, open UTC, close UTC) from XNYS plus the overrides, inclusive."""
        base, out = _xnys_sessions(), []
        with self._lock:
            overrides = dict(self._session_overrides)
        for i in range((end - start).days + 1):
            d = start + timedelta(days=i)
            s = overrides[d] if d in overrides else base.get(d)
            if s is not None:
                out.append((d, *s))
        return out

    def fail(self, method: str, path: str, kind: str, times: int = 1) -> None:
        """The next ``times`` requests matching method (or "*") and path prefix fail as ``kind``."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; one of {FAILURE_KINDS}")
        with self._lock:
            self._failures.append([method.upper(), path, kind, times])

    def lenient(self, *names: str) -> None:
        """Turn off strictness ``names`` (see ``STRICTNESS``) for this fake."""
        unknown = set(names) - STRICTNESS
        assert not unknown, f"unknown strictness {unknown}; one of {sorted(STRICTNESS)}"
        with self._lock:
            self.strict -= set(names)

    def null_snapshot_fields(self, symbol: str, *fields: str) -> None:
        """Answer these snapshot fields (``latestTrade``, ``latestQuote``, ``minuteBar``, ``dailyBar``,
        ``prevDailyBar``) as ``null`` for ``symbol``, as Alpaca does for a thinly traded or new symbol."""
        with self._lock:
            self.snapshot_nulls[symbol] = set(fields)

    def in_session(self, at: datetime | None = None) -> bool:
        at = at or self.now
        return any(o <= at < c for _, o, c in self.sessions(at.date() - timedelta(days=1), at.date() + timedelta(days=1)))

    def partial_fills(self, symbol: str, fraction: float | None) -> None:
        """Market orders for ``symbol`` fill only ``fraction`` of their qty (rest waits for ``fill``); None = off."""
        with self._lock:
            if fraction is None:
                self._partial.pop(symbol, None)
            else:
                self._partial[symbol] = fraction

    def fill(self, order_id: str, price: float | None = None, qty: float | None = None) -> dict:
        """Fill an open order (by id or client_order_id): all remaining qty, or ``qty`` (a partial fill)."""
        with self._lock:
            o = self._find(order_id)
            if not self._live(o):
                raise ValueError(f"order {o.id} is {o.status}, cannot fill")
            self._fill(o, o.remaining if qty is None else qty, self._market[o.symbol].price if price is None else price)
            return self._order_json(o)

    def set_most_actives(self, rows: list[tuple[str, float, float]]) -> None:
        """``(symbol, volume, trade_count)`` rows; by default derived from the symbols with a price."""
        with self._lock:
            self._most_actives = list(rows)

    def set_movers(self, gainers: list[tuple], losers: list[tuple]) -> None:
        """``(symbol, percent_change, change, price)`` rows; by default derived from price vs prev_close."""
        with self._lock:
            self._movers = (list(gainers), list(losers))

    def add_news(self, symbols: str | list[str], headline: str, *, summary: str = "",
                 created_at: datetime | None = None, author: str = "Benzinga Newsdesk", source: str = "benzinga",
                 content: str = "", url: str | None = None) -> int:
        """Add an article (newest first in answers); returns its integer id."""
        with self._lock:
            nid = 24_000_000 + len(self._news) + 1
            at = _ts(created_at or self.now)
            self._news.append({"id": nid, "headline": headline, "summary": summary, "author": author, "created_at": at,
                               "updated_at": at, "url": url or f"https://www.benzinga.com/news/{nid}",
                               "content": content,
                               "images": [], "symbols": [symbols] if isinstance(symbols, str) else list(symbols),
                               "source": source})
            return nid

    # -- introspection -------------------------------------------------------------------------------

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (method in (None, "*") or r.method == method.upper()) and r.path.startswith(path_prefix))

    def request_times(self, path_prefix: str = "", method: str | None = None) -> list[float]:
        with self._lock:
            return [r.at for r in self.requests
                    if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())]

    def feeds(self, path_prefix: str = "/v2/stocks") -> list[str | None]:
        """The ``feed`` param of every market-data request (None where the client sent none)."""
        with self._lock:
            return [r.feed for r in self.requests if r.path.startswith(path_prefix)]

    def orders_by_client_id(self) -> dict[str, dict]:
        with self._lock:
            self._sweep()
            return {o.client_order_id: self._order_json(o) for o in self._orders.values()}

    @property
    def orders(self) -> list[dict]:
        with self._lock:
            self._sweep()
            return [self._order_json(o) for o in self._orders.values()]

    def order(self, id_or_client_id: str) -> dict:
        with self._lock:
            self._sweep()
            return self._order_json(self._find(id_or_client_id))

    @property
    def positions(self) -> dict[str, dict]:
        with self._lock:
            self._sweep()
            return {s: self._position_json(s) for s in self._positions}

    @property
    def cash(self) -> float:
        with self._lock:
            return self._cash

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> FakeAlpaca:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                query = {k: ",".join(v) for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                fake._handle(self, RecordedRequest(self.command, unquote(parts.path), query,
                                                   {k.lower(): v for k, v in self.headers.items()}, body,
                                                   time.monotonic()))

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

            def reply(self, status: int, payload: Any, headers: dict | None = None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                headers = {**fake._rate_headers(), **(headers or {})}
                try:
                    self.send_response(status)
                    if status != 204:
                        self.send_header("content-type", "application/json; charset=UTF-8")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("x-request-id", uuid.uuid4().hex)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

        return self._serve(Handler)

    # -- serving -------------------------------------------------------------------------------------

    def _handle(self, handler, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)
            self._count_rate()
            if req.method == "GET":  # a pending cancel (or late rejection) is seen by the next read, not sooner
                self._settle_pending()
            self._sweep()
            kind = self._take_failure(req.method, req.path)
        if kind == "timeout":
            self._stopping.wait(self.hold_seconds)
            handler.close_connection = True
            return
        if kind == "429":
            return handler.reply(429, {"code": 42910000, "message": "rate limit exceeded"},
                                 {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0",
                                  "X-RateLimit-Reset": str(int(time.time()) + 2)})
        if kind == "500":
            return handler.reply(500, {"code": 50010000, "message": "internal server error occurred"})
        if kind == "422_duplicate":
            return handler.reply(422, {"code": 40010001, "message": "client_order_id must be unique"})
        if kind == "403_pdt":
            return handler.reply(403, {"code": 40310100, "message": "trade denied due to pattern day trading protection"})
        if req.headers.get("apca-api-key-id") != self.key_id or req.headers.get("apca-api-secret-key") != self.secret:
            return handler.reply(401, {"code": 40110000, "message": "request is not authorized"})
        with self._lock:
            self._reject_next = kind == "reject_after_accept"
            try:
                status, payload = self._dispatch(req)
            except ApiError as e:
                status, payload = e.status, e.body
            finally:
                self._reject_next = False
        if kind == "lost_reply":  # applied above; the reply never arrives
            handler.close_connection = True
            return
        handler.reply(status, payload)

    def _take_failure(self, method: str, path: str) -> str | None:
        for f in self._failures:
            if f[0] in ("*", method) and path.startswith(f[1]) and f[3] > 0:
                f[3] -= 1
                if f[3] == 0:
                    self._failures.remove(f)
                return f[2]
        return None

    ROUTES = [
        ("GET", r"/v2/account", "_get_account"),
        ("GET", r"/v2/clock", "_get_clock"),
        ("GET", r"/v2/calendar", "_get_calendar"),
        ("POST", r"/v2/orders", "_post_order"),
        ("GET", r"/v2/orders", "_get_orders"),
        ("DELETE", r"/v2/orders", "_delete_orders"),
        ("GET", r"/v2/orders:by_client_order_id", "_get_order_by_client_id"),
        ("GET", r"/v2/orders/(?P<oid>[^/]+)", "_get_order"),
        ("DELETE", r"/v2/orders/(?P<oid>[^/]+)", "_delete_order"),
        ("PATCH", r"/v2/orders/(?P<oid>[^/]+)", "_patch_order"),
        ("GET", r"/v2/positions", "_get_positions"),
        ("GET", r"/v2/positions/(?P<symbol>[^/]+)", "_get_position"),
        ("DELETE", r"/v2/positions/(?P<symbol>[^/]+)", "_delete_position"),
        ("GET", r"/v2/stocks/snapshots", "_get_snapshots"),
        ("GET", r"/v2/stocks/bars", "_get_bars"),
        ("GET", r"/v2/stocks/quotes/latest", "_get_latest_quotes"),
        ("GET", r"/v2/stocks/trades/latest", "_get_latest_trades"),
        ("GET", r"/v1beta1/screener/stocks/most-actives", "_get_most_actives"),
        ("GET", r"/v1beta1/screener/stocks/movers", "_get_movers"),
        ("GET", r"/v1beta1/news", "_get_news"),
    ]

    def _dispatch(self, req: RecordedRequest) -> tuple[int, Any]:
        path = req.path.rstrip("/")
        for method, pattern, name in self.ROUTES:
            m = re.fullmatch(pattern, path)
            if m and method == req.method:
                return getattr(self, name)(req, **m.groupdict())
        raise ApiError(404, 40410000, "endpoint not found")

    # -- trading: account, clock, calendar -----------------------------------------------------------

    def _get_account(self, req) -> tuple[int, dict]:
        mvs = [self._qty(s) * self._market[s].price for s in self._positions]
        long_mv, short_mv = sum(v for v in mvs if v > 0), sum(v for v in mvs if v < 0)
        equity, bp = self._cash + long_mv + short_mv, max(self._cash, 0.0)
        acct = {"id": self.account_id, "account_number": "PA3FAKE00001", "status": "ACTIVE", "crypto_status": "ACTIVE",
                "currency": "USD", "buying_power": _num(bp), "regt_buying_power": _num(bp),
                "daytrading_buying_power": "0", "effective_buying_power": _num(bp),
                "non_marginable_buying_power": _num(bp), "options_buying_power": _num(bp), "cash": _num(self._cash),
                "accrued_fees": "0", "pending_transfer_in": "0", "pending_transfer_out": "0",
                "portfolio_value": _num(equity), "equity": _num(equity), "last_equity": _num(self._last_equity),
                "long_market_value": _num(long_mv), "short_market_value": _num(short_mv), "initial_margin": "0",
                "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0", "daytrade_count": 0,
                "pattern_day_trader": False, "trading_blocked": False, "transfers_blocked": False,
                "account_blocked": False, "trade_suspended_by_user": False, "shorting_enabled": self.shorting_enabled,
                "multiplier": "1", "created_at": "2024-01-02T15:00:00Z", "options_approved_level": 0,
                "options_trading_level": 0}
        return 200, {**acct, **self.account_overrides}

    def _get_clock(self, req) -> tuple[int, dict]:
        now = self.now
        days = self.sessions(now.date() - timedelta(days=1), now.date() + timedelta(days=20))
        is_open = any(o <= now < c for _, o, c in days)
        next_open = next(o for _, o, c in days if o > now)
        next_close = next(c for _, o, c in days if c > now)
        return 200, {"timestamp": now.astimezone(NY).isoformat(), "is_open": is_open,
                     "next_open": next_open.astimezone(NY).isoformat(),
                     "next_close": next_close.astimezone(NY).isoformat()}

    def _get_calendar(self, req) -> tuple[int, list]:
        start = date.fromisoformat(req.query["start"][:10]) if req.query.get("start") else self.now.date()
        end = date.fromisoformat(req.query["end"][:10]) if req.query.get("end") else start + timedelta(days=365)
        days = self.sessions(start, end)
        out = []
        for i, (d, o, c) in enumerate(days):
            settle = self.sessions(d + timedelta(days=1), d + timedelta(days=10))[0][0]
            out.append({"date": d.isoformat(), "open": o.astimezone(NY).strftime("%H:%M"),
                        "close": c.astimezone(NY).strftime("%H:%M"), "session_open": "0400", "session_close": "2000",
                        "settlement_date": settle.isoformat()})
        return 200, out

    # -- trading: orders -----------------------------------------------------------------------------

    def _find(self, id_or_client_id: Any) -> _Order:
        id_or_client_id = str(id_or_client_id)  # a UUID from an alpaca-py model works too
        if id_or_client_id in self._orders:
            return self._orders[id_or_client_id]
        for o in self._orders.values():
            if o.client_order_id == id_or_client_id:
                return o
        raise ApiError(404, 40410000, "order not found")

    def _order_json(self, o: _Order, legs: bool = True) -> dict:
        return {"id": o.id, "client_order_id": o.client_order_id, "created_at": _ts(o.created_at),
                "updated_at": _ts(o.updated_at or o.created_at), "submitted_at": _ts(o.created_at),
                "filled_at": _ts(o.filled_at), "expired_at": _ts(o.expired_at), "canceled_at": _ts(o.canceled_at),
                "failed_at": _ts(o.failed_at),
                "replaced_at": _ts(o.replaced_at), "replaced_by": o.replaced_by, "replaces": o.replaces,
                "asset_id": _asset_id(o.symbol), "symbol": o.symbol, "asset_class": "us_equity", "notional": None,
                "qty": _num(o.qty), "filled_qty": _num(o.filled_qty), "filled_avg_price": _num(o.filled_avg_price),
                "order_class": o.order_class, "order_type": o.type, "type": o.type, "side": o.side,
                "position_intent": "buy_to_open" if o.side == "buy" else "sell_to_close",
                "time_in_force": o.time_in_force, "limit_price": _num(o.limit_price), "stop_price": _num(o.stop_price),
                "status": o.status, "extended_hours": o.extended_hours,
                "legs": [self._order_json(self._orders[i]) for i in o.legs] if (legs and o.legs) else None,
                "trail_percent": None, "trail_price": None, "hwm": None, "subtag": None, "source": None}

    def _new_order(self, symbol, side, otype, qty, tif, client_order_id=None, **kw) -> _Order:
        o = _Order(str(uuid.uuid4()), client_order_id or str(uuid.uuid4()), symbol, side, otype, qty, tif, self.now,
                   **kw)
        self._orders[o.id] = o
        return o

    def _reserved(self, symbol: str, side: str = "sell") -> float:
        """Qty held by open orders on ``side``; an OCO pair (bracket legs) holds its shares once."""
        groups: dict[str, float] = {}
        for o in self._orders.values():
            if o.symbol == symbol and o.side == side and o.status in OPEN_STATUSES:
                key = o.parent or o.id
                groups[key] = max(groups.get(key, 0.0), o.remaining)
        return sum(groups.values())

    def _check_available(self, symbol: str, side: str, qty: float) -> None:
        held = self._qty(symbol)
        if side == "sell":
            available = max(held, 0.0) - self._reserved(symbol)
            if qty > available + 1e-9 and not (self.shorting_enabled and held <= 0):
                related = [o.id for o in self._orders.values()
                           if o.symbol == symbol and o.side == "sell" and o.status in OPEN_STATUSES]
                raise ApiError(403, 40310000, f"insufficient qty available for order (requested: {_num(qty)}, "
                                              f"available: {_num(max(available, 0))})",
                               available=_num(max(available, 0)),
                               existing_qty=_num(max(held, 0)), held_for_orders=_num(self._reserved(symbol)),
                               related_orders=related, symbol=symbol)
        elif held >= 0 and qty * self._market[symbol].price > max(self._cash, 0.0) + 1e-9:
            raise ApiError(403, 40310000, "insufficient buying power")

    def _post_order(self, req) -> tuple[int, dict]:
        b = req.body if isinstance(req.body, dict) else {}
        for name in ("symbol", "side", "type", "time_in_force"):
            if not b.get(name):
                raise ApiError(422, 40010000, f"{name} is required")
        if b.get("qty") in (None, ""):
            raise ApiError(422, 40010000, "qty is required (notional orders are not supported by the fake)")
        symbol, side, otype, tif = b["symbol"], b["side"], b["type"], b["time_in_force"]
        qty, cid, oclass = float(b["qty"]), b.get("client_order_id"), b.get("order_class") or "simple"
        limit = float(b["limit_price"]) if b.get("limit_price") is not None else None
        stop = float(b["stop_price"]) if b.get("stop_price") is not None else None
        if cid is not None and len(cid) > 48:
            raise ApiError(422, 40010000, "client_order_id must be no more than 48 characters")
        if cid is not None and any(o.client_order_id == cid for o in self._orders.values()):
            raise ApiError(422, 40010001, "client_order_id must be unique")
        if symbol not in self._market:
            raise ApiError(422, 40010001, f'asset "{symbol}" not found')
        if qty <= 0:
            raise ApiError(422, 40010001, "qty must be > 0")
        if side not in ("buy", "sell") or otype not in ("market", "limit", "stop"):
            raise ApiError(422, 40010001, f"unsupported side/type {side}/{otype}")
        if (otype == "limit" and limit is None) or (otype == "stop" and stop is None):
            raise ApiError(422, 40010001, f"{'limit' if otype == 'limit' else 'stop'}_price is required")
        if oclass not in ("simple", "bracket"):
            raise ApiError(422, 40010001, f"order_class {oclass} is not supported by the fake")
        tp, sl = b.get("take_profit") or {}, b.get("stop_loss") or {}
        if oclass == "bracket":
            if tp.get("limit_price") is None or sl.get("stop_price") is None:
                raise ApiError(422, 40010001, "bracket orders require take_profit.limit_price and stop_loss.stop_price")
            if tif not in ("day", "gtc"):
                raise ApiError(422, 40010001, "bracket orders must be day or gtc")
            base, sign = limit if limit is not None else self._market[symbol].price, 1 if side == "buy" else -1
            tp_price, sl_price = float(tp["limit_price"]), float(sl["stop_price"])
            if sign * (tp_price - base) < 0.01 - 1e-9:
                raise ApiError(422, 42210000, f"take_profit.limit_price must be {'>' if sign > 0 else '<'}= "
                                              f"base_price {'+' if sign > 0 else '-'} 0.01. base_price: {_num(base)}")
            if sign * (base - sl_price) < 0.01 - 1e-9:
                raise ApiError(422, 42210000, f"stop_loss.stop_price must be {'<' if sign > 0 else '>'}= "
                                              f"base_price {'-' if sign > 0 else '+'} 0.01. base_price: {_num(base)}")
        self._check_available(symbol, side, qty)
        o = self._new_order(symbol, side, otype, qty, tif, cid, order_class=oclass, limit_price=limit, stop_price=stop,
                            extended_hours=bool(b.get("extended_hours")))
        if oclass == "bracket":
            exit_side = "sell" if side == "buy" else "buy"
            kw = dict(order_class="bracket", status="held", parent=o.id)
            tp_leg = self._new_order(symbol, exit_side, "limit", qty, tif, limit_price=float(tp["limit_price"]), **kw)
            sl_leg = self._new_order(symbol, exit_side, "stop", qty, tif, stop_price=float(sl["stop_price"]), **kw)
            o.legs = [tp_leg.id, sl_leg.id]
        reply = self._order_json(o)
        if self._reject_next:  # accepted now, rejected a moment later (risk checks after the 200)
            self._pending.append((o.id, "rejected"))
        elif otype == "market":
            self._market_order_arrived(o)
        else:
            self._check_triggers(symbol)
        return 200, (reply if self.reply_before_fill else self._order_json(o))

    def _market_order_arrived(self, o: _Order) -> None:
        """Fill at once in the session; outside it queue until the open (strict)."""
        if not self.auto_fill:
            return
        if "queue_outside_session" in self.strict and not self.in_session():
            o.queued = True
            return
        fraction = self._partial.get(o.symbol)
        qty = o.remaining
        qty_now = qty if fraction is None else float(int(qty * fraction)) if qty == int(qty) else qty * fraction
        if qty_now > 0:
            self._fill(o, qty_now, self._market[o.symbol].price)

    def _get_orders(self, req) -> tuple[int, list]:
        q = req.query
        status, nested = q.get("status", "open"), q.get("nested", "").lower() == "true"
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        after, until = _parse_time(q.get("after")), _parse_time(q.get("until"))
        out = []
        for o in self._orders.values():
            if nested and o.parent:
                continue
            is_open = o.status in OPEN_STATUSES
            if (status == "open" and not is_open) or (status == "closed" and is_open):
                continue
            if (symbols and o.symbol not in symbols) or (q.get("side") and o.side != q["side"]):
                continue
            if (after and o.created_at <= after) or (until and o.created_at >= until):
                continue
            out.append(self._order_json(o, legs=nested))
        if q.get("direction", "desc") == "desc":
            out.reverse()
        return 200, out[: min(int(q.get("limit") or 50), 500)]

    def _get_order(self, req, oid) -> tuple[int, dict]:
        if oid not in self._orders:
            raise ApiError(404, 40410000, "order not found")
        return 200, self._order_json(self._orders[oid])

    def _get_order_by_client_id(self, req) -> tuple[int, dict]:
        cid = req.query.get("client_order_id", "")
        for o in self._orders.values():
            if o.client_order_id == cid:
                return 200, self._order_json(o)
        raise ApiError(404, 40410000, "order not found")

    def _cancel(self, o: _Order) -> None:
        """Cancel ``o``: its legs and the OCO sibling go too, and (strict) the whole bracket group.

        Strict: the orders become ``pending_cancel`` (still holding their shares) and turn ``canceled``
        by the next read (GET); an order sent in between still finds the shares held.
        """
        if o.status not in OPEN_STATUSES or o.status in ("pending_cancel", "pending_replace"):
            raise ApiError(422, 42210000, f'order is already in "{o.status}" state')
        group = [o] + [self._orders[i] for i in o.legs] + ([self._orders[i] for i in self._orders[o.parent].legs]
                                                           if o.parent else [])
        if o.parent and "group_cancel" in self.strict:
            group.append(self._orders[o.parent])
        for x in group:
            if x.status in OPEN_STATUSES and x.status != "pending_cancel":
                self._end(x, "canceled")

    def _end(self, o: _Order, status: str) -> None:
        """Take an open order out of the book: at once, or (strict) through ``pending_cancel``."""
        o.updated_at, o.queued = self.now, False
        if status == "canceled" and "pending_cancel" in self.strict:
            o.status = "pending_cancel"
            self._pending.append((o.id, "canceled"))
            return
        o.status = status
        if status == "canceled":
            o.canceled_at = self.now
        elif status == "expired":
            o.expired_at = self.now
        elif status == "rejected":
            o.failed_at = self.now

    def _settle_pending(self) -> None:
        """What was asked before this read has happened now: pending cancels, late rejections."""
        pending, self._pending = self._pending, []
        for oid, status in pending:
            o = self._orders[oid]
            if o.status in OPEN_STATUSES:
                o.status, o.updated_at = status, self.now
                if status == "canceled":
                    o.canceled_at = self.now
                else:
                    o.failed_at = self.now
                    for i in o.legs:
                        if self._orders[i].status in OPEN_STATUSES:
                            self._orders[i].status, self._orders[i].canceled_at = "canceled", self.now

    def _sweep(self) -> None:
        """Apply the passage of time: day orders expire at the close, queued orders fill at the open."""
        now = self.now
        if "day_expiry" in self.strict:
            closes: dict[date, list[datetime]] = {}
            for o in self._orders.values():
                if o.time_in_force != "day" or o.status not in OPEN_STATUSES or o.extended_hours:
                    continue
                d = o.created_at.date()
                if d not in closes:
                    closes[d] = [c for _, _, c in self.sessions(d - timedelta(days=1), d + timedelta(days=14))]
                close = next((c for c in closes[d] if c > o.created_at), None)  # the close of its session
                if close is not None and close <= now:
                    o.status, o.expired_at, o.updated_at, o.queued = "expired", close, close, False
        if not self.in_session(now):
            return
        for o in list(self._orders.values()):
            if o.queued and o.status in OPEN_STATUSES:
                o.queued = False
                self._market_order_arrived(o)
        for symbol in {o.symbol for o in self._orders.values() if o.status in OPEN_STATUSES}:
            self._check_triggers(symbol)

    def _live(self, o: _Order) -> bool:
        """May this order fill now? Working orders, and a `held` stop leg once its parent has filled."""
        if o.status in WORKING:
            return True
        if o.status == "held" and o.parent:
            parent = self._orders[o.parent]
            return parent.status == "filled" or (parent.status not in OPEN_STATUSES and parent.filled_qty > 0)
        return False

    def _count_rate(self) -> None:
        minute = int(time.time() // 60)
        current, n = self._rate_window
        self._rate_window = (minute, n + 1 if current == minute else 1)

    def _rate_headers(self) -> dict[str, str]:
        if "rate_limit_headers" not in self.strict:
            return {}
        with self._lock:
            minute, n = self._rate_window
        return {"X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": str(max(RATE_LIMIT - n, 0)),
                "X-RateLimit-Reset": str((minute + 1) * 60)}

    def _delete_order(self, req, oid) -> tuple[int, None]:
        if oid not in self._orders:
            raise ApiError(404, 40410000, "order not found")
        self._cancel(self._orders[oid])
        return 204, None

    def _delete_orders(self, req) -> tuple[int, list]:
        targets = [o for o in self._orders.values() if o.status in OPEN_STATUSES]
        for o in targets:
            if o.status in OPEN_STATUSES and o.status not in ("pending_cancel", "pending_replace"):
                self._cancel(o)
        return 207, [{"id": o.id, "status": 200, "body": self._order_json(o)} for o in targets]

    def _patch_order(self, req, oid) -> tuple[int, dict]:
        if oid not in self._orders:
            raise ApiError(404, 40410000, "order not found")
        old, b = self._orders[oid], req.body if isinstance(req.body, dict) else {}
        if old.status not in OPEN_STATUSES or old.status in ("pending_cancel", "pending_replace"):
            raise ApiError(422, 42210000, f"cannot replace order in {old.status} status")
        cid = b.get("client_order_id")
        if cid and any(o.client_order_id == cid for o in self._orders.values()):
            raise ApiError(422, 40010001, "client_order_id must be unique")
        pick = lambda k, cur: float(b[k]) if b.get(k) is not None else cur  # noqa: E731
        qty, limit, stop = pick("qty", old.qty), pick("limit_price", old.limit_price), pick("stop_price", old.stop_price)
        tif = b.get("time_in_force") or old.time_in_force
        if "replace_unchanged" in self.strict and (qty, limit, stop, tif) == (old.qty, old.limit_price,
                                                                             old.stop_price, old.time_in_force):
            raise ApiError(422, 42210000, "order parameters are not changed")
        if old.type == "limit" and b.get("stop_price") is not None:
            raise ApiError(422, 42210000, "limit orders must not have stop_price")
        new = self._new_order(old.symbol, old.side, old.type, qty, tif, cid, order_class=old.order_class,
                              parent=old.parent, limit_price=limit, stop_price=stop,
                              status="held" if old.status == "held" else "new", replaces=old.id, legs=list(old.legs),
                              extended_hours=old.extended_hours)
        new.filled_qty = old.filled_qty
        old.status, old.replaced_at, old.replaced_by, old.updated_at = "replaced", self.now, new.id, self.now
        for o in self._orders.values():
            if o.parent == old.id:
                o.parent = new.id
        if old.parent:
            parent = self._orders[old.parent]
            parent.legs = [new.id if i == old.id else i for i in parent.legs]
        self._check_triggers(new.symbol)
        return 200, self._order_json(new)

    # -- fills ---------------------------------------------------------------------------------------

    def _qty(self, symbol: str) -> float:
        return self._positions[symbol][0] if symbol in self._positions else 0.0

    def _fill(self, o: _Order, qty: float, price: float) -> None:
        qty = min(qty, o.remaining)
        if qty <= 0:
            return
        prev = o.filled_qty
        o.filled_qty = round(prev + qty, 9)
        o.filled_avg_price = round(((o.filled_avg_price or 0.0) * prev + price * qty) / o.filled_qty, 6)
        o.status = "filled" if o.remaining <= 0 else "partially_filled"
        o.updated_at = self.now
        o.filled_at = self.now if o.status == "filled" else None
        signed = qty if o.side == "buy" else -qty
        self._cash = round(self._cash - signed * price, 6)
        old, avg = self._positions.get(o.symbol, [0.0, 0.0])
        new = round(old + signed, 9)
        if new == 0:
            self._positions.pop(o.symbol, None)
        elif old == 0 or old * signed > 0:
            self._positions[o.symbol] = [new, (abs(old) * avg + qty * price) / abs(new)]
        else:  # reduced, or crossed through zero
            self._positions[o.symbol] = [new, avg if old * new > 0 else price]
        if o.parent and o.status == "partially_filled" and "resize_stop_on_partial" in self.strict:
            for i in self._orders[o.parent].legs:  # the sibling now guards only what is left
                sib = self._orders[i]
                if sib is not o and sib.status in OPEN_STATUSES:
                    sib.qty, sib.updated_at = round(sib.filled_qty + o.remaining, 9), self.now
        if o.status != "filled":
            return
        if o.legs:  # parent filled: the exit legs become live (Alpaca keeps the stop leg `held` until it triggers)
            for i in o.legs:
                leg = self._orders[i]
                if leg.status == "held" and not (leg.type == "stop" and "held_stop_leg" in self.strict):
                    leg.status, leg.updated_at = "new", self.now
        if o.parent:  # one leg filled: OCO cancels the sibling (strict: only by the next request)
            for i in self._orders[o.parent].legs:
                sib = self._orders[i]
                if sib is not o and sib.status in OPEN_STATUSES and sib.status != "pending_cancel":
                    if "oco_race" in self.strict:
                        sib.updated_at = self.now
                        self._pending.append((sib.id, "canceled"))
                    else:
                        sib.status, sib.canceled_at, sib.updated_at = "canceled", self.now, self.now
        self._check_triggers(o.symbol)

    def _crosses(self, o: _Order, price: float) -> bool:
        if o.type == "limit":
            return price <= o.limit_price if o.side == "buy" else price >= o.limit_price
        if o.type == "stop":
            return price >= o.stop_price if o.side == "buy" else price <= o.stop_price
        return False

    def _check_triggers(self, symbol: str) -> None:
        if symbol not in self._market:
            return
        if "queue_outside_session" in self.strict and not self.in_session():
            return  # nothing triggers outside the session: a gap fills at the open's price
        price = self._market[symbol].price
        for o in list(self._orders.values()):
            if o.symbol == symbol and self._live(o) and self._crosses(o, price):
                self._fill(o, o.remaining, price)

    # -- trading: positions --------------------------------------------------------------------------

    def _position_json(self, symbol: str) -> dict:
        qty, avg = self._positions[symbol]
        m = self._market[symbol]
        cost, mv = qty * avg, qty * m.price
        upl, intraday = mv - cost, (m.price - m.prev_close) * qty
        return {"asset_id": _asset_id(symbol), "symbol": symbol, "exchange": "NASDAQ", "asset_class": "us_equity",
                "asset_marginable": True, "qty": _num(qty), "qty_available": _num(qty - self._reserved(symbol)
                                                                                  if qty > 0 else qty),
                "avg_entry_price": _num(round(avg, 6)), "side": "long" if qty > 0 else "short",
                "market_value": _num(round(mv, 6)), "cost_basis": _num(round(cost, 6)),
                "unrealized_pl": _num(round(upl, 6)), "unrealized_plpc": _num(round(upl / abs(cost), 6)),
                "unrealized_intraday_pl": _num(round(intraday, 6)),
                "unrealized_intraday_plpc": _num(round(intraday / abs(m.prev_close * qty), 6)),
                "current_price": _num(m.price), "lastday_price": _num(m.prev_close),
                "change_today": _num(round(m.price / m.prev_close - 1, 6))}

    def _get_positions(self, req) -> tuple[int, list]:
        return 200, [self._position_json(s) for s in sorted(self._positions)]

    def _get_position(self, req, symbol) -> tuple[int, dict]:
        if symbol not in self._positions:
            raise ApiError(404, 40410000, "position does not exist")
        return 200, self._position_json(symbol)

    def _close(self, symbol: str, query: dict) -> dict:
        if symbol not in self._positions:
            raise ApiError(404, 40410000, "position does not exist")
        held = self._positions[symbol][0]
        qty = float(query["qty"]) if query.get("qty") else abs(held) * float(query.get("percentage") or 100) / 100
        side = "sell" if held > 0 else "buy"
        self._check_available(symbol, side, qty)
        o = self._new_order(symbol, side, "market", qty, "day")
        reply = self._order_json(o)
        self._market_order_arrived(o)
        return reply if self.reply_before_fill else self._order_json(o)

    def _delete_position(self, req, symbol) -> tuple[int, dict]:
        return 200, self._close(symbol, req.query)

    # -- market data ---------------------------------------------------------------------------------

    def _symbols(self, req) -> list[str]:
        return [s for s in req.query.get("symbols", "").split(",") if s]

    def _trade(self, m: _Market) -> dict:
        return {"t": _ts(m.at or self.now), "x": "V", "p": m.price, "s": 100, "c": ["@"], "i": m.trades, "z": "C"}

    def _quote(self, m: _Market) -> dict:
        return {"t": _ts(m.at or self.now), "ax": "V", "ap": round(m.price + 0.01, 4), "as": 2, "bx": "V",
                "bp": round(m.price - 0.01, 4), "bs": 3, "c": ["R"], "z": "C"}

    def _day_start(self, d: date) -> datetime:
        return datetime.combine(d, datetime.min.time(), NY)

    def _get_snapshots(self, req) -> tuple[int, dict]:
        now = self.now
        prev_day = (self.sessions(now.date() - timedelta(days=10), now.date() - timedelta(days=1)) or
                    [(now.date() - timedelta(days=1),)])[-1][0]
        out = {}
        for s in self._symbols(req):
            if (m := self._market.get(s)) is None:
                continue
            minute = now.replace(second=0, microsecond=0)
            out[s] = {"latestTrade": self._trade(m), "latestQuote": self._quote(m),
                      "minuteBar": {"t": _ts(minute), "o": m.price, "h": m.price, "l": m.price, "c": m.price,
                                    "v": 100, "n": 1, "vw": m.price},
                      "dailyBar": {"t": _ts(self._day_start(now.astimezone(NY).date())), "o": m.open, "h": m.high,
                                   "l": m.low, "c": m.price, "v": m.volume, "n": m.trades,
                                   "vw": round((m.high + m.low + m.price) / 3, 4)},
                      "prevDailyBar": {"t": _ts(self._day_start(prev_day)), "o": m.prev_close, "h": m.prev_close,
                                       "l": m.prev_close, "c": m.prev_close, "v": 1_000_000, "n": 10_000,
                                       "vw": m.prev_close}}
            for name in self.snapshot_nulls.get(s, ()):
                out[s][name] = None
        return 200, out

    def _synth_bars(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> list[tuple]:
        """Flat bars at the current price (volume 1,000) through the session minutes of [start, end); with
        ``extended_hours_bars`` also the pre-market (04:00 ET to the open) and after-hours (the close to 20:00 ET,
        17:00 after an early close) minutes, as Alpaca serves them, at ``EXTENDED_PREMIUM`` above the price on
        ``EXTENDED_VOLUME`` so that any extended-hours bar reaching a figure shows."""
        m = re.fullmatch(r"(\d+)(Min|T|Hour|H|Day|D)", timeframe or "1Min")
        n, unit = (int(m.group(1)), m.group(2)) if m else (1, "Min")
        p, out = self._market[symbol].price, []
        ext_p = round(p * (1 + EXTENDED_PREMIUM), 4)
        extended = "extended_hours_bars" in self.strict
        for d, o, c in self.sessions(start.date() - timedelta(days=1), end.date()):
            if unit in ("Day", "D"):
                t = self._day_start(d)
                if start <= t < end:
                    out.append((t, p, p, p, p, 1_000_000))
                continue
            step = timedelta(minutes=n * (60 if unit in ("Hour", "H") else 1))
            segments = [(o, c, p, 1000)]
            if extended:
                early = c.astimezone(NY).time() < clock_time(16, 0)
                post_end = datetime.combine(d, EARLY_CLOSE_AFTER_HOURS if early else AFTER_HOURS_CLOSE, NY)
                segments = [(datetime.combine(d, PRE_MARKET_OPEN, NY), o, ext_p, EXTENDED_VOLUME), *segments,
                            (c, max(c, post_end), ext_p, EXTENDED_VOLUME)]
            for seg_open, seg_close, price, volume in segments:
                t = seg_open + ((max(seg_open, start) - seg_open + step - timedelta(microseconds=1)) // step) * step
                while t < min(seg_close, end) and len(out) < 10_000:
                    out.append((t, price, price, price, price, volume))
                    t += step
        return out

    def _get_bars(self, req) -> tuple[int, dict]:
        q = req.query
        now = self.now
        start = _parse_time(q.get("start")) or self._day_start(now.astimezone(NY).date())
        end = _parse_time(q.get("end")) or now
        rows = []
        for s in sorted(self._symbols(req)):
            if s in self._bars:
                bars = [b for b in self._bars[s] if start <= b[0] <= end]
            elif s in self._market:
                bars = self._synth_bars(s, q.get("timeframe", "1Min"), start, end)
            else:
                bars = []
            if q.get("sort") == "desc":
                bars = bars[::-1]
            rows += [(s, b) for b in bars]
        page, token = self._page(q, rows, default=1000, cap=10_000)
        out: dict[str, list] = {}
        for s, (t, o, h, l, c, v) in page:
            out.setdefault(s, []).append({"t": _ts(t), "o": o, "h": h, "l": l, "c": c, "v": v,
                                          "n": max(1, int(v) // 100), "vw": round((h + l + c) / 3, 4)})
        return 200, {"bars": out, "next_page_token": token}

    def _page(self, q: dict, rows: list, default: int, cap: int) -> tuple[list, str | None]:
        """One page of ``rows`` for the ``limit`` / ``page_token`` params (tokens are opaque base64 offsets)."""
        offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        size = min(int(q.get("limit") or default), cap, self.page_size)
        more = offset + size < len(rows)
        return rows[offset: offset + size], base64.b64encode(str(offset + size).encode()).decode() if more else None

    def _get_latest_quotes(self, req) -> tuple[int, dict]:
        return 200, {"quotes": {s: self._quote(self._market[s]) for s in self._symbols(req) if s in self._market}}

    def _get_latest_trades(self, req) -> tuple[int, dict]:
        return 200, {"trades": {s: self._trade(self._market[s]) for s in self._symbols(req) if s in self._market}}

    # -- screener and news ---------------------------------------------------------------------------

    def _get_most_actives(self, req) -> tuple[int, dict]:
        rows = self._most_actives
        if rows is None:
            rows = [(s, m.volume, m.trades) for s, m in self._market.items()]
        key = 2 if req.query.get("by") == "trades" else 1
        rows = sorted(rows, key=lambda r: -r[key])[: int(req.query.get("top") or 10)]
        return 200, {"most_actives": [{"symbol": s, "volume": v, "trade_count": n} for s, v, n in rows],
                     "last_updated": _ts(self.now)}

    def _get_movers(self, req) -> tuple[int, dict]:
        top = int(req.query.get("top") or 10)
        if self._movers is not None:
            gainers, losers = self._movers
        else:
            rows = [(s, round((m.price / m.prev_close - 1) * 100, 4), round(m.price - m.prev_close, 4), m.price)
                    for s, m in self._market.items()]
            gainers = sorted((r for r in rows if r[1] > 0), key=lambda r: -r[1])
            losers = sorted((r for r in rows if r[1] < 0), key=lambda r: r[1])
        row = lambda r: {"symbol": r[0], "percent_change": r[1], "change": r[2], "price": r[3]}  # noqa: E731
        return 200, {"gainers": [row(r) for r in gainers[:top]], "losers": [row(r) for r in losers[:top]],
                     "market_type": "stocks", "last_updated": _ts(self.now)}

    def _get_news(self, req) -> tuple[int, dict]:
        """As documented: ``start`` defaults to the beginning of the current day and ``end`` to now (both
        inclusive), articles are sorted by their updated date (``desc`` unless ``sort=asc``), ``limit`` 10 by
        default and 50 at most per page, ``exclude_contentless`` drops articles without content."""
        q = req.query
        symbols = set(self._symbols(req))
        now = self.now
        start = _parse_time(q.get("start")) or self._day_start(now.astimezone(NY).date())
        end = _parse_time(q.get("end")) or now
        contentless_out = q.get("exclude_contentless", "").lower() == "true"
        items = [n for n in self._news if (not symbols or symbols & set(n["symbols"]))
                 and start <= _parse_time(n["created_at"]) <= end and not (contentless_out and not n["content"])]
        items.sort(key=lambda n: (n["updated_at"], n["id"]), reverse=q.get("sort", "desc").lower() != "asc")
        page, token = self._page(q, items, default=10, cap=50)
        with_content = q.get("include_content", "").lower() == "true"
        return 200, {"news": [dict(n, content=n["content"] if with_content else "") for n in page],
                     "next_page_token": token}


@pytest.fixture
def fake_alpaca():
    with FakeAlpaca() as alpaca:
        yield alpaca
