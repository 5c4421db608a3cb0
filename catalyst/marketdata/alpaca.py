"""Alpaca market data through alpaca-py: batched snapshots shared per monitor cycle, bars, screener, news.

Broker calls per cycle do not grow with the number of positions: the first quote asked for in a
cycle fetches snapshots for every watched symbol (≤ 100 symbols per call) and stores them in the
cycle cache (Redis when configured); every other ``monitor_position`` task of that cycle reads it.

Bars are regular-session bars only: Alpaca's minute bars include the pre-market (from 04:00 ET) and the
after-hours (to 20:00 ET), thin prints that must not reach VWAP, RSI/MACD/ATR or any volume figure. Which
minutes are regular (early closes, holidays, lunch breaks) comes from the exchange calendar.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import structlog

from catalyst.core.domain import Bar, Quote, require_aware
from catalyst.core.news import NewsItem
from catalyst.core.sessions import Session, SessionCalendar

log = structlog.get_logger("catalyst.alpaca_data")
BATCH = 100
NEWS_SYMBOLS_PER_CALL = 50
NEWS_LIMIT = 50  # articles per call: Alpaca's largest page
SCREENER_TOP = 50  # most actives (and half as many gainers) in the scanner's universe
WAIT_FOR_PEER_SECONDS = 5.0
BATCH_DONE = "__batch_done__"
BARS_LOOKBACK = timedelta(days=5)  # at least this much history per bars call: thin symbols skip minutes


class LocalCycleCache:
    """Per-process cache for the embedded default (one worker process)."""

    def __init__(self) -> None:
        self._data: dict[str, dict] = {}
        self._locks: set[str] = set()
        self._mutex = threading.Lock()

    def get(self, cycle: str, symbol: str):
        with self._mutex:
            return self._data.get(cycle, {}).get(symbol, _MISSING)

    def put_many(self, cycle: str, values: dict, ttl: float) -> None:
        with self._mutex:
            self._data = {k: v for k, v in self._data.items() if k >= cycle}  # old cycles go
            self._locks = {k for k in self._locks if k >= cycle}
            self._data.setdefault(cycle, {}).update(values)

    def try_lock(self, name: str, ttl: float) -> bool:
        with self._mutex:
            if name in self._locks:
                return False
            self._locks.add(name)
            return True


class RedisCycleCache:
    """Shared by every worker: one hash per cycle with a TTL, and a SET NX fetch lock."""

    def __init__(self, redis_url: str, prefix: str = "catalyst:snapshots") -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.prefix = prefix

    def get(self, cycle: str, symbol: str):
        raw = self.client.hget(f"{self.prefix}:{cycle}", symbol)
        return _MISSING if raw is None else json.loads(raw)

    def put_many(self, cycle: str, values: dict, ttl: float) -> None:
        key = f"{self.prefix}:{cycle}"
        if values:
            pipe = self.client.pipeline()
            pipe.hset(key, mapping={k: json.dumps(v) for k, v in values.items()})
            pipe.expire(key, max(int(ttl), 1))
            pipe.execute()

    def try_lock(self, name: str, ttl: float) -> bool:
        return bool(self.client.set(f"{self.prefix}:lock:{name}", "1", nx=True, ex=max(int(ttl), 1)))


_MISSING = object()


def _window_start(calendar: SessionCalendar, end: datetime, count: int) -> datetime:
    """Where a bars request must start to hold ``count`` regular-session minutes before ``end``.

    Sessions are walked back from ``end`` until they hold ``count`` minutes; never less than
    ``BARS_LOOKBACK`` (a thinly traded symbol has no bar in some minutes), the window Catalyst always
    asked for. One request either way: with the extended hours (which Alpaca always sent) five days are
    some 4,800 rows, under alpaca-py's 10,000-row page.
    """
    floor = end - BARS_LOOKBACK
    needed = count
    day = end.astimezone(calendar.tz).date()
    for _ in range(BARS_LOOKBACK.days + 14 + count // 100):  # ~1.4 calendar days per 390-minute session
        session = calendar.session_on(day)
        if session is not None and session.open < end:
            needed -= _regular_minutes(session, end)
            if needed <= 0:
                return min(floor, session.open)
        day -= timedelta(days=1)
    return min(floor, datetime.combine(day, datetime.min.time(), calendar.tz))


def _regular_minutes(session: Session, end: datetime) -> int:
    """Whole trading minutes of ``session`` before ``end`` (a lunch break excluded)."""
    until = min(session.close, end)
    span = until - session.open
    if session.break_start is not None and until > session.break_start:
        span -= min(session.break_end, until) - session.break_start
    return int(span.total_seconds() // 60)


class AlpacaMarketData:
    name = "alpaca"

    def __init__(self, *, api_key: str, secret_key: str, data_url: str | None, feed: str, timeout: float, bucket,
                 cache, cycle_seconds: float, watchlist, calendar: SessionCalendar) -> None:
        from alpaca.data.historical import StockHistoricalDataClient
        from alpaca.data.historical.news import NewsClient
        from alpaca.data.historical.screener import ScreenerClient

        from catalyst.alpaca_http import guard_client

        self.feed = feed
        self.cache = cache
        self.cycle_seconds = cycle_seconds
        self.watchlist = watchlist  # () -> symbols of open positions
        self.calendar = calendar  # which minutes are regular; calendar_check swaps in the broker-corrected one
        self.client = StockHistoricalDataClient(api_key, secret_key, url_override=data_url)
        self.screener = ScreenerClient(api_key, secret_key, url_override=data_url)
        self.news_client = NewsClient(api_key, secret_key, url_override=data_url)
        for c in (self.client, self.screener, self.news_client):
            guard_client(c, timeout=timeout, bucket=bucket)

    # -- protocol ------------------------------------------------------------------------------
    def symbols(self) -> list[str]:
        return sorted(set(self.watchlist()))

    def knows(self, symbol: str) -> bool:
        return bool(self._fetch([symbol]).get(symbol))

    def quote(self, symbol: str, at: datetime) -> Quote | None:
        require_aware(at, "at")
        cycle = self._cycle(at)
        snap = self.cache.get(cycle, symbol)
        if snap is _MISSING:
            snap = self._fill_cycle(cycle, symbol)
        if not snap:
            return None
        return Quote(symbol, snap["price"], datetime.fromisoformat(snap["at"]), snap.get("volume") or 0.0)

    def bars(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        """The last ``count`` complete regular-session minute bars before ``end`` (extended hours dropped)."""
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        from catalyst.alpaca_http import retry_after_rate_limit

        require_aware(end, "end")
        calendar = self.calendar
        request = StockBarsRequest(symbol_or_symbols=symbol, timeframe=TimeFrame.Minute,
                                   start=_window_start(calendar, end, count), end=end, feed=DataFeed(self.feed))
        barset = retry_after_rate_limit(lambda: self.client.get_stock_bars(request))
        rows = barset.data.get(symbol, []) if hasattr(barset, "data") else []
        done = [Bar(b.timestamp, symbol, float(b.open), float(b.high), float(b.low), float(b.close), float(b.volume))
                for b in rows if b.timestamp + timedelta(minutes=1) <= end and calendar.is_open(b.timestamp)]
        return done[-count:] if count else []

    def prefetch(self, symbols: list[str], at: datetime) -> None:
        """Fill this cycle's cache for ``symbols`` with batched calls (the scanner's whole universe)."""
        cycle = self._cycle(at)
        missing = [s for s in symbols if self.cache.get(cycle, s) is _MISSING]
        if missing:
            fetched = self._fetch(missing)
            self.cache.put_many(cycle, {s: fetched.get(s) for s in missing}, max(self.cycle_seconds * 2, 30))

    # -- scanner source ---------------------------------------------------------------------------
    def scan_universe(self, top: int = SCREENER_TOP) -> list[str]:
        """Most actives by volume plus the top gainers: where today's catalysts show up first."""
        from alpaca.data.requests import MarketMoversRequest, MostActivesRequest

        from catalyst.alpaca_http import retry_after_rate_limit

        actives = retry_after_rate_limit(lambda: self.screener.get_most_actives(MostActivesRequest(top=top)))
        movers = retry_after_rate_limit(lambda: self.screener.get_market_movers(MarketMoversRequest(top=top // 2)))
        symbols = [a.symbol for a in actives.most_actives] + [g.symbol for g in movers.gainers]
        return sorted(set(symbols))

    def news(self, symbols: list[str], since: datetime, until: datetime) -> list[NewsItem]:
        """Alpaca news (``GET /v1beta1/news``) about ``symbols`` published in ``[since, until]``, newest first.

        Up to ``NEWS_SYMBOLS_PER_CALL`` symbols and ``NEWS_LIMIT`` articles per call (the scanner asks only for
        the funnel's last few symbols); an article naming several of them counts for each.
        """
        from alpaca.data.requests import NewsRequest

        from catalyst.alpaca_http import retry_after_rate_limit

        since, until = require_aware(since, "news since"), require_aware(until, "news until")
        wanted = sorted(set(symbols))
        items: list[NewsItem] = []
        for i in range(0, len(wanted), NEWS_SYMBOLS_PER_CALL):
            chunk = wanted[i:i + NEWS_SYMBOLS_PER_CALL]
            request = NewsRequest(symbols=",".join(chunk), start=since.astimezone(UTC), end=until.astimezone(UTC),
                                  sort="desc", limit=NEWS_LIMIT)
            found = retry_after_rate_limit(lambda: self.news_client.get_news(request))
            for article in (found.data.get("news", []) if hasattr(found, "data") else []):
                items.extend(NewsItem(s, article.headline, article.created_at, getattr(article, "source", None))
                             for s in article.symbols if s in chunk)
        log.info("news_fetched", symbols=len(wanted), articles=len(items))
        return sorted(items, key=lambda n: (n.created_at, n.symbol), reverse=True)

    # -- internals -------------------------------------------------------------------------------
    def _cycle(self, at: datetime) -> str:
        step = int(at.timestamp() // self.cycle_seconds * self.cycle_seconds)
        return datetime.fromtimestamp(step, UTC).isoformat()

    def _fill_cycle(self, cycle: str, symbol: str):
        """One batched fetch per cycle for every watched symbol; peers wait for it instead of calling."""
        ttl = max(self.cycle_seconds * 2, 30)
        if self.cache.try_lock(cycle, ttl):
            wanted = sorted(set(self.watchlist()) | {symbol})
            fetched = self._fetch(wanted)
            self.cache.put_many(cycle, {**{s: fetched.get(s) for s in wanted}, BATCH_DONE: True}, ttl)
            return fetched.get(symbol)
        deadline = time.monotonic() + WAIT_FOR_PEER_SECONDS
        while time.monotonic() < deadline:
            snap = self.cache.get(cycle, symbol)
            if snap is not _MISSING:
                return snap
            if self.cache.get(cycle, BATCH_DONE) is not _MISSING:
                break  # the batch is in and did not include this symbol
            time.sleep(0.05)
        if self.cache.try_lock(f"{cycle}:{symbol}", ttl):  # joined after the batch: fetch just this one
            snap = self._fetch([symbol]).get(symbol)
            self.cache.put_many(cycle, {symbol: snap}, ttl)
            return snap
        deadline = time.monotonic() + WAIT_FOR_PEER_SECONDS  # a peer is fetching this one: wait for it
        while time.monotonic() < deadline:
            if (snap := self.cache.get(cycle, symbol)) is not _MISSING:
                return snap
            time.sleep(0.05)
        return None

    def _fetch(self, symbols: list[str]) -> dict[str, dict]:
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import StockSnapshotRequest

        from catalyst.alpaca_http import retry_after_rate_limit

        out: dict[str, dict] = {}
        for i in range(0, len(symbols), BATCH):
            chunk = symbols[i:i + BATCH]
            request = StockSnapshotRequest(symbol_or_symbols=chunk, feed=DataFeed(self.feed))
            snaps = retry_after_rate_limit(lambda: self.client.get_stock_snapshot(request))
            for sym, snap in (snaps or {}).items():
                trade = getattr(snap, "latest_trade", None)
                if trade is None or trade.price is None:
                    continue
                bar = getattr(snap, "minute_bar", None)
                out[sym] = {"price": float(trade.price), "at": trade.timestamp.isoformat(),
                            "volume": float(bar.volume) if bar is not None else 0.0}
        log.info("snapshots_fetched", symbols=len(symbols), calls=(len(symbols) + BATCH - 1) // BATCH)
        return out
