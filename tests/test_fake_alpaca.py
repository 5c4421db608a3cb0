"""Smoke tests: the real alpaca-py clients run against ``FakeAlpaca`` and parse every answer into their models."""

from __future__ import annotations

import functools
import time
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed, MostActivesBy
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.historical.news import NewsClient
from alpaca.data.historical.screener import ScreenerClient
from alpaca.data.models import BarSet, Quote, Snapshot
from alpaca.data.requests import (MarketMoversRequest, MostActivesRequest, NewsRequest, StockBarsRequest,
                                  StockLatestQuoteRequest, StockLatestTradeRequest, StockSnapshotRequest)
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (ClosePositionRequest, GetCalendarRequest, GetOrdersRequest, LimitOrderRequest,
                                     MarketOrderRequest, ReplaceOrderRequest, StopLossRequest, TakeProfitRequest)

from tests.fake_alpaca import FakeAlpaca, fake_alpaca  # noqa: F401  (fixture)

UTC = timezone.utc
MONDAY_OPEN = datetime(2024, 3, 4, 15, 0, tzinfo=UTC)  # 10:00 ET, a regular session


def _kw(fake: FakeAlpaca) -> dict:
    return {"api_key": fake.key_id, "secret_key": fake.secret, "url_override": fake.base_url}


def trading(fake: FakeAlpaca, timeout: float | None = None) -> TradingClient:
    client = TradingClient(paper=True, **_kw(fake))
    client._retry = 0
    if timeout:
        client._session.request = functools.partial(client._session.request, timeout=timeout)
    return client


def buy(symbol: str, qty: float, cid: str | None = None, tif: TimeInForce = TimeInForce.DAY,
        **kw) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=tif, client_order_id=cid,
                              **kw)


def bracket(symbol: str, qty: float, tp: float, sl: float, cid: str | None = None,
            tif: TimeInForce = TimeInForce.DAY) -> MarketOrderRequest:
    return buy(symbol, qty, cid, tif, order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=tp),
               stop_loss=StopLossRequest(stop_price=sl))


@pytest.fixture
def fake(fake_alpaca):
    fake_alpaca.now = MONDAY_OPEN
    for symbol, price in {"AAPL": 100.0, "MSFT": 400.0, "NVDA": 800.0}.items():
        fake_alpaca.set_price(symbol, price, prev_close=price * 0.98)
    return fake_alpaca


# -- trading -----------------------------------------------------------------------------------------

def test_account_clock_calendar(fake):
    client = trading(fake)
    account = client.get_account()
    assert account.status == "ACTIVE" and float(account.cash) == 100_000 and float(account.equity) == 100_000

    clock = client.get_clock()
    assert clock.is_open and clock.timestamp == MONDAY_OPEN
    assert clock.next_close == datetime(2024, 3, 4, 21, 0, tzinfo=UTC)
    assert clock.next_open == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)

    fake.set_session(date(2024, 3, 4), "09:30", "13:00")  # the broker disagrees with XNYS about today
    days = client.get_calendar(GetCalendarRequest(start=date(2024, 3, 1), end=date(2024, 3, 8)))
    assert [d.date for d in days] == [date(2024, 3, d) for d in (1, 4, 5, 6, 7, 8)]
    assert days[1].close == datetime(2024, 3, 4, 13, 0)  # alpaca-py: naive, exchange-local time
    assert client.get_clock().next_close == datetime(2024, 3, 4, 18, 0, tzinfo=UTC)

    fake.set_session(date(2024, 3, 4), None)  # closed today
    fake.now = datetime(2024, 3, 2, 12, tzinfo=UTC)  # Saturday
    assert not client.get_clock().is_open
    assert client.get_clock().next_open == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)


def test_bad_credentials_are_401(fake):
    client = TradingClient(api_key="wrong", secret_key="nope", paper=True, url_override=fake.base_url)
    with pytest.raises(APIError) as e:
        client.get_account()
    assert e.value.status_code == 401 and e.value.code == 40110000


def test_market_order_fills_and_updates_position_and_cash(fake):
    client = trading(fake)
    order = client.submit_order(buy("AAPL", 10, "entry-1"))
    assert order.status == OrderStatus.ACCEPTED and order.client_order_id == "entry-1"  # reply precedes the fill
    filled = client.get_order_by_client_id("entry-1")
    assert filled.status == OrderStatus.FILLED and float(filled.filled_avg_price) == 100 and filled.filled_qty == "10"
    assert client.get_order_by_id(order.id).id == order.id

    fake.set_price("AAPL", 110.0)
    position = client.get_open_position("AAPL")
    assert (position.qty, position.avg_entry_price, position.unrealized_pl) == ("10", "100", "100")
    assert [p.symbol for p in client.get_all_positions()] == ["AAPL"]
    assert float(client.get_account().cash) == 99_000 and float(client.get_account().equity) == 100_100

    close = client.close_position("AAPL", ClosePositionRequest(qty="4"))
    assert close.side == OrderSide.SELL and close.qty == "4"
    assert fake.positions["AAPL"]["qty"] == "6"
    client.close_position("AAPL")
    with pytest.raises(APIError) as e:
        client.get_open_position("AAPL")
    assert e.value.status_code == 404 and e.value.code == 40410000
    assert fake.cash == 100_100


def test_duplicate_client_order_id_is_422(fake):
    client = trading(fake)
    client.submit_order(buy("AAPL", 1, "same-id"))
    with pytest.raises(APIError) as e:
        client.submit_order(buy("AAPL", 1, "same-id"))
    assert e.value.status_code == 422 and e.value.code == 40010001
    assert e.value.message == "client_order_id must be unique"
    assert len(fake.orders_by_client_id()) == 1


def test_bracket_legs_held_then_new_and_reserve_shares(fake):
    client = trading(fake)
    parent = client.submit_order(bracket("AAPL", 10, tp=110, sl=95, cid="br-1"))
    assert parent.order_class == OrderClass.BRACKET
    assert [(leg.type.value, leg.status) for leg in parent.legs] == [("limit", "held"), ("stop", "held")]
    parent = client.get_order_by_id(parent.id)
    assert parent.status == "filled" and [leg.status for leg in parent.legs] == ["new", "held"]  # stop rests held

    open_nested = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
    assert open_nested == [] or all(o.id != parent.id for o in open_nested)
    all_nested = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert [o.id for o in all_nested] == [parent.id] and len(all_nested[0].legs) == 2
    open_flat = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert {o.id for o in open_flat} == {leg.id for leg in parent.legs}
    assert client.get_open_position("AAPL").qty_available == "0"

    with pytest.raises(APIError) as e:  # the legs hold all 10 shares
        client.submit_order(MarketOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL,
                                               time_in_force=TimeInForce.DAY))
    assert e.value.status_code == 403 and e.value.code == 40310000
    assert e.value.message == "insufficient qty available for order (requested: 10, available: 0)"
    with pytest.raises(APIError):
        client.close_position("AAPL")

    client.cancel_order_by_id(parent.legs[0].id)  # OCO: canceling one leg cancels the other
    assert {fake.order(leg.id)["status"] for leg in parent.legs} == {"pending_cancel"}
    assert {client.get_order_by_id(leg.id).status for leg in parent.legs} == {"canceled"}  # by the next request
    sell = client.submit_order(MarketOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL,
                                                  time_in_force=TimeInForce.DAY))
    assert client.get_order_by_id(sell.id).status == "filled" and fake.positions == {}


def test_stop_crossing_fills_stop_leg_and_cancels_take_profit(fake):
    client = trading(fake)
    parent = client.submit_order(bracket("MSFT", 5, tp=420, sl=390))
    tp_leg, sl_leg = parent.legs
    fake.set_price("MSFT", 395.0)
    assert fake.order(sl_leg.id)["status"] == "held"
    fake.set_price("MSFT", 388.5)
    stop = client.get_order_by_id(sl_leg.id)
    assert stop.status == "filled" and float(stop.filled_avg_price) == 388.5
    assert client.get_order_by_id(tp_leg.id).status == "canceled"
    assert "MSFT" not in fake.positions
    assert fake.cash == pytest.approx(100_000 - 5 * 400 + 5 * 388.5)


def test_replace_moves_stop_leg_and_cancel_filled_is_422(fake):
    client = trading(fake)
    parent = client.submit_order(bracket("NVDA", 2, tp=900, sl=760))
    old_stop = parent.legs[1]
    new_stop = client.replace_order_by_id(old_stop.id, ReplaceOrderRequest(stop_price=790))
    assert new_stop.id != old_stop.id and str(new_stop.replaces) == str(old_stop.id)
    assert float(new_stop.stop_price) == 790 and new_stop.status == "held"  # a held leg's replacement is held
    old = client.get_order_by_id(old_stop.id)
    assert old.status == OrderStatus.REPLACED and str(old.replaced_by) == str(new_stop.id)
    assert [str(leg.id) for leg in client.get_order_by_id(parent.id).legs] == [str(parent.legs[0].id),
                                                                                str(new_stop.id)]
    fake.set_price("NVDA", 789.0)
    assert fake.order(str(new_stop.id))["status"] == "filled"
    with pytest.raises(APIError) as e:
        client.cancel_order_by_id(new_stop.id)
    assert e.value.status_code == 422 and e.value.code == 42210000


def test_manual_and_partial_fills_and_cancel_all(fake):
    fake.auto_fill = False
    client = trading(fake)
    order = client.submit_order(buy("AAPL", 10, "manual"))
    assert fake.order("manual")["status"] == "accepted"
    fake.fill("manual", price=100.5, qty=4)
    got = client.get_order_by_client_id("manual")
    assert got.status == "partially_filled" and got.filled_qty == "4" and fake.positions["AAPL"]["qty"] == "4"
    client.cancel_order_by_id(order.id)
    assert client.get_order_by_client_id("manual").status == "canceled"

    fake.auto_fill = True
    fake.partial_fills("MSFT", 0.5)
    client.submit_order(buy("MSFT", 5, "half"))
    assert fake.order("half")["filled_qty"] == "2" and fake.order("half")["status"] == "partially_filled"
    resting = client.submit_order(LimitOrderRequest(symbol="NVDA", qty=1, side=OrderSide.BUY, limit_price=700,
                                                    time_in_force=TimeInForce.DAY))
    cancels = client.cancel_orders()
    assert {str(c.id) for c in cancels} == {fake.order("half")["id"], str(resting.id)}
    assert all(c.status == 200 for c in cancels) and client.get_order_by_client_id("half").status == "canceled"


def test_limit_order_rests_until_price_crosses(fake):
    client = trading(fake)
    order = client.submit_order(LimitOrderRequest(symbol="AAPL", qty=3, side=OrderSide.BUY, limit_price=98,
                                                  time_in_force=TimeInForce.DAY))
    fake.set_price("AAPL", 99.0)
    assert fake.order(str(order.id))["status"] == "accepted"
    fake.set_price("AAPL", 97.9)
    assert fake.order(str(order.id))["status"] == "filled" and fake.positions["AAPL"]["qty"] == "3"


# -- failure injection ---------------------------------------------------------------------------------

def test_lost_reply_applies_the_order_without_answering(fake):
    client = trading(fake, timeout=2)
    fake.fail("POST", "/v2/orders", "lost_reply")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.submit_order(buy("AAPL", 7, "lost-1"))
    assert fake.orders_by_client_id()["lost-1"]["status"] == "filled"  # filled; the client never heard
    with pytest.raises(APIError) as e:  # a blind retry is refused...
        client.submit_order(buy("AAPL", 7, "lost-1"))
    assert e.value.code == 40010001
    assert client.get_order_by_client_id("lost-1").filled_qty == "7"  # ...so look it up instead


def test_timeout_does_not_apply_the_order(fake):
    fake.hold_seconds = 3
    client = trading(fake, timeout=0.5)
    fake.fail("POST", "/v2/orders", "timeout")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.submit_order(buy("AAPL", 1, "slow-1"))
    assert time.monotonic() - started < 2
    assert "slow-1" not in fake.orders_by_client_id() and fake.positions == {}
    assert client.submit_order(buy("AAPL", 1, "slow-1")).client_order_id == "slow-1"  # one-shot


def test_429_carries_rate_limit_headers_and_counts(fake):
    client = trading(fake)
    fake.fail("GET", "/v2/account", "429", times=2)
    for _ in range(2):
        with pytest.raises(APIError) as e:
            client.get_account()
        assert e.value.status_code == 429 and e.value.code == 42910000
        headers = e.value.response.headers
        assert headers["X-RateLimit-Limit"] == "200" and headers["X-RateLimit-Remaining"] == "0"
        assert 0 < int(headers["X-RateLimit-Reset"]) - time.time() <= 3
    assert client.get_account().status == "ACTIVE"
    fake.fail("*", "/v2/clock", "500")
    with pytest.raises(APIError) as e:
        client.get_clock()
    assert e.value.status_code == 500
    fake.fail("POST", "/v2/orders", "422_duplicate")
    with pytest.raises(APIError) as e:
        client.submit_order(buy("AAPL", 1, "never-seen"))
    assert e.value.code == 40010001 and fake.orders_by_client_id() == {}
    assert fake.count("GET", "/v2/account") == 3 and fake.count("GET", "/v2/clock") == 1
    assert fake.count("POST", "/v2/orders") == 1 and fake.count(None, "/v2/") == 5
    times = fake.request_times("/v2/account")
    assert len(times) == 3 and times == sorted(times)
    assert fake.requests[0].safe_headers()["apca-api-secret-key"] == "***"
    assert fake.requests[0].key_id == fake.key_id


# -- market data, screener, news -------------------------------------------------------------------------

def test_snapshots_latest_quotes_and_trades(fake):
    data = StockHistoricalDataClient(**_kw(fake))
    symbols = ["AAPL", "MSFT", "NVDA", "UNKNOWN"]
    snaps = data.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=symbols, feed=DataFeed.IEX))
    assert set(snaps) == {"AAPL", "MSFT", "NVDA"} and all(isinstance(s, Snapshot) for s in snaps.values())
    aapl = snaps["AAPL"]
    assert aapl.latest_trade.price == 100 and aapl.latest_quote.bid_price < 100 < aapl.latest_quote.ask_price
    assert aapl.daily_bar.close == 100 and aapl.previous_daily_bar.close == 98 and aapl.minute_bar.volume > 0
    quotes = data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=["AAPL", "MSFT"],
                                                                 feed=DataFeed.IEX))
    assert isinstance(quotes["MSFT"], Quote) and quotes["MSFT"].ask_price == pytest.approx(400.01)
    trades = data.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="NVDA", feed=DataFeed.SIP))
    assert trades["NVDA"].price == 800
    assert fake.feeds() == ["iex", "iex", "sip"]


def test_bars_paging_and_feed(fake):
    data = StockHistoricalDataClient(**_kw(fake))
    start = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    fake.set_bars("AAPL", [(start + timedelta(minutes=i), 100 + i, 101 + i, 99 + i, 100.5 + i, 1000 * (i + 1))
                           for i in range(25)])
    fake.page_size = 10
    bars = data.get_stock_bars(StockBarsRequest(symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute,
                                                start=start, end=start + timedelta(minutes=20), feed=DataFeed.IEX))
    assert isinstance(bars, BarSet)
    assert len(bars["AAPL"]) == 21 and bars["AAPL"][3].open == 103 and bars["AAPL"][3].volume == 4000
    assert len(bars["MSFT"]) == 20 and {b.close for b in bars["MSFT"]} == {400}  # synthesised, flat
    assert bars["MSFT"][0].timestamp == start
    bar_requests = [r for r in fake.requests if r.path == "/v2/stocks/bars"]
    assert len(bar_requests) == 5 and {r.feed for r in bar_requests} == {"iex"}
    assert "page_token" not in bar_requests[0].query and "page_token" in bar_requests[1].query

    limited = data.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute,
                                                   start=start, limit=12, feed=DataFeed.IEX))
    assert len(limited["AAPL"]) == 12


def test_screener_and_news(fake):
    screener = ScreenerClient(**_kw(fake))
    actives = screener.get_most_actives(MostActivesRequest(by=MostActivesBy.VOLUME, top=2))
    assert len(actives.most_actives) == 2 and fake.requests[-1].query == {"by": "volume", "top": "2"}
    fake.set_most_actives([("TSLA", 9e7, 8e5), ("AMD", 5e7, 4e5), ("F", 7e7, 1e5)])
    top = screener.get_most_actives(MostActivesRequest(by=MostActivesBy.VOLUME, top=2)).most_actives
    assert [a.symbol for a in top] == ["TSLA", "F"]
    by_trades = screener.get_most_actives(MostActivesRequest(by=MostActivesBy.TRADES, top=2)).most_actives
    assert [a.symbol for a in by_trades] == ["TSLA", "AMD"]
    fake.set_price("MSFT", 380.0)  # -3% vs prev_close 392
    movers = screener.get_market_movers(MarketMoversRequest(top=5))
    assert {m.symbol for m in movers.gainers} == {"AAPL", "NVDA"} and [m.symbol for m in movers.losers] == ["MSFT"]
    fake.set_movers(gainers=[("SMCI", 21.5, 150.2, 849.0)], losers=[])
    assert screener.get_market_movers(MarketMoversRequest(top=5)).gainers[0].percent_change == 21.5
    assert fake.count("GET", "/v1beta1/screener/stocks/movers") == 2

    news = NewsClient(**_kw(fake))
    for i in range(3):
        fake.add_news("AAPL", f"Apple headline {i}", summary="s", created_at=MONDAY_OPEN - timedelta(hours=3 - i))
    fake.add_news(["MSFT", "NVDA"], "Chips and clouds")
    got = news.get_news(NewsRequest(symbols="AAPL,NVDA", limit=10))
    headlines = [n.headline for n in got.data["news"]]
    assert headlines == ["Chips and clouds", "Apple headline 2", "Apple headline 1", "Apple headline 0"]
    assert got.data["news"][1].symbols == ["AAPL"] and got.data["news"][1].created_at.tzinfo is not None
    fake.page_size = 2
    assert len(news.get_news(NewsRequest(symbols="AAPL")).data["news"]) == 3  # paged 2 + 1
    assert fake.requests[-1].query["page_token"]


# -- strict as Alpaca: each behaviour on by default, and switchable ---------------------------------------

def sell(symbol: str, qty: float, cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                              client_order_id=cid)


def test_every_strictness_is_on_by_default_and_can_be_turned_off(fake):
    from tests.fake_alpaca import STRICTNESS

    assert fake.strict == set(STRICTNESS)
    fake.lenient("oco_race", "day_expiry")
    assert fake.strict == set(STRICTNESS) - {"oco_race", "day_expiry"}
    with pytest.raises(AssertionError):
        fake.lenient("no_such_strictness")


@pytest.mark.parametrize("strict", [True, False])
def test_after_the_entry_fills_the_take_profit_is_new_and_the_stop_leg_stays_held(fake, strict):
    if not strict:
        fake.lenient("held_stop_leg")
    client = trading(fake)
    parent = client.submit_order(bracket("AAPL", 10, tp=110, sl=95))
    legs = client.get_order_by_id(parent.id).legs
    assert [leg.status for leg in legs] == (["new", "held"] if strict else ["new", "new"])
    fake.set_price("AAPL", 94.5)  # a held stop leg still triggers
    assert client.get_order_by_id(legs[1].id).status == "filled" and "AAPL" not in fake.positions


@pytest.mark.parametrize("strict", [True, False])
def test_cancelling_any_order_of_a_bracket_cancels_the_whole_group(fake, strict):
    if not strict:
        fake.lenient("group_cancel")
    fake.auto_fill = False
    client = trading(fake)
    parent = client.submit_order(bracket("AAPL", 10, tp=110, sl=95))
    fake.fill(str(parent.id), qty=4)  # a partly filled entry
    client.cancel_order_by_id(parent.legs[1].id)  # cancel the stop leg
    assert [leg.status for leg in client.get_order_by_id(parent.id).legs] == ["canceled", "canceled"]
    assert client.get_order_by_id(parent.id).status == ("canceled" if strict else "partially_filled")


@pytest.mark.parametrize("strict", [True, False])
def test_delete_is_204_and_the_order_passes_through_pending_cancel(fake, strict):
    if not strict:
        fake.lenient("pending_cancel")
    client = trading(fake)
    parent = client.submit_order(bracket("AAPL", 10, tp=110, sl=95))
    client.get_order_by_id(parent.id)
    tp = parent.legs[0].id
    raw = requests.delete(f"{fake.base_url}/v2/orders/{tp}", headers={"APCA-API-KEY-ID": fake.key_id,
                                                                    "APCA-API-SECRET-KEY": fake.secret})
    assert raw.status_code == 204 and raw.content == b""
    if strict:
        assert {fake.order(str(leg.id))["status"] for leg in parent.legs} == {"pending_cancel"}
        with pytest.raises(APIError) as e:  # the shares are still held until the cancel is done
            client.submit_order(sell("AAPL", 10))
        assert e.value.status_code == 403 and e.value.code == 40310000
        with pytest.raises(APIError) as e:  # and a pending cancel cannot be cancelled again
            client.cancel_order_by_id(tp)
        assert e.value.status_code == 422
    assert client.get_order_by_id(tp).status == "canceled"  # the next read sees it done
    client.submit_order(sell("AAPL", 10))
    assert "AAPL" not in fake.positions


@pytest.mark.parametrize("strict", [True, False])
def test_day_orders_and_their_legs_expire_at_an_early_close_and_gtc_orders_do_not(fake, strict):
    if not strict:
        fake.lenient("day_expiry")
    fake.now = datetime(2024, 7, 3, 14, 0, tzinfo=UTC)  # 10:00 ET on a 13:00 early close
    client = trading(fake)
    day = client.submit_order(bracket("AAPL", 10, tp=110, sl=95, cid="day-bracket"))
    gtc = client.submit_order(bracket("MSFT", 1, tp=440, sl=380, tif=TimeInForce.GTC))
    resting = client.submit_order(LimitOrderRequest(symbol="NVDA", qty=1, side=OrderSide.BUY, limit_price=700,
                                                    time_in_force=TimeInForce.DAY))
    fake.now = datetime(2024, 7, 3, 16, 59, tzinfo=UTC)  # 12:59 ET
    assert client.get_order_by_id(resting.id).status == "accepted"
    fake.now = datetime(2024, 7, 3, 17, 0, tzinfo=UTC)  # 13:00 ET: the close
    legs = client.get_order_by_id(day.id).legs
    if strict:
        assert [leg.status for leg in legs] == ["expired", "expired"]
        assert legs[0].expired_at == datetime(2024, 7, 3, 17, 0, tzinfo=UTC)
        assert client.get_order_by_id(resting.id).status == "expired"
    else:
        assert [leg.status for leg in legs] == ["new", "held"]
    assert [leg.status for leg in client.get_order_by_id(gtc.id).legs] == ["new", "held"]
    fake.now = datetime(2024, 7, 5, 14, 0, tzinfo=UTC)  # through the holiday to the next session
    assert [leg.status for leg in client.get_order_by_id(gtc.id).legs] == ["new", "held"]


@pytest.mark.parametrize("strict", [True, False])
def test_market_orders_outside_the_session_queue_until_the_open_and_nothing_triggers(fake, strict):
    if not strict:
        fake.lenient("queue_outside_session")
    client = trading(fake)
    client.submit_order(bracket("AAPL", 10, tp=110, sl=95, cid="held-overnight", tif=TimeInForce.GTC))
    fake.now = datetime(2024, 3, 4, 22, 0, tzinfo=UTC)  # 17:00 ET, after the close
    fake.set_price("AAPL", 90.0)  # after-hours print through the stop
    order = client.submit_order(buy("MSFT", 2, "after-hours"))
    if strict:
        assert client.get_order_by_client_id("after-hours").status == "accepted" and "MSFT" not in fake.positions
        assert client.get_order_by_client_id("held-overnight").legs[1].status == "held"  # no trigger off-session
        fake.now = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)  # the open: the queue fills, the stop triggers
    assert client.get_order_by_id(order.id).status == "filled" and fake.positions["MSFT"]["qty"] == "2"
    stop = client.get_order_by_client_id("held-overnight").legs[1]
    assert stop.status == "filled" and float(stop.filled_avg_price) == 90


@pytest.mark.parametrize("strict", [True, False])
def test_replace_refuses_unchanged_parameters_and_orders_that_filled(fake, strict):
    if not strict:
        fake.lenient("replace_unchanged")
    client = trading(fake)
    parent = client.submit_order(bracket("NVDA", 2, tp=900, sl=760))
    stop = parent.legs[1]
    if strict:
        with pytest.raises(APIError) as e:
            client.replace_order_by_id(stop.id, ReplaceOrderRequest(stop_price=760))
        assert (e.value.status_code, e.value.code, e.value.message) == (422, 42210000,
                                                                       "order parameters are not changed")
    else:
        stop = client.replace_order_by_id(stop.id, ReplaceOrderRequest(stop_price=760))
    fake.set_price("NVDA", 755.0)
    with pytest.raises(APIError) as e:
        client.replace_order_by_id(stop.id, ReplaceOrderRequest(stop_price=770))
    assert (e.value.status_code, e.value.code, e.value.message) == (422, 42210000,
                                                                   "cannot replace order in filled status")


@pytest.mark.parametrize("strict", [True, False])
def test_a_partial_take_profit_fill_resizes_the_stop_leg(fake, strict):
    if not strict:
        fake.lenient("resize_stop_on_partial")
    client = trading(fake)
    parent = client.submit_order(bracket("AAPL", 10, tp=110, sl=95))
    client.get_order_by_id(parent.id)
    fake.fill(str(parent.legs[0].id), price=110, qty=4)
    tp, stop = client.get_order_by_id(parent.id).legs
    assert (tp.status, tp.filled_qty) == ("partially_filled", "4") and fake.positions["AAPL"]["qty"] == "6"
    assert stop.qty == ("6" if strict else "10") and stop.status == "held"


@pytest.mark.parametrize("strict", [True, False])
def test_a_gap_in_a_fast_market_can_fill_both_legs(fake, strict):
    if not strict:
        fake.lenient("oco_race")
    client = trading(fake)
    parent = client.submit_order(bracket("AAPL", 10, tp=110, sl=95))
    client.get_order_by_id(parent.id)
    fake.set_price("AAPL", 111.0)  # the take-profit fills...
    fake.set_price("AAPL", 90.0)   # ...and the market gaps through the stop before the OCO cancel lands
    tp, stop = client.get_order_by_id(parent.id).legs
    assert tp.status == "filled"
    if strict:
        assert stop.status == "filled" and fake.positions["AAPL"]["qty"] == "-10"  # sold twice: now short
    else:
        assert stop.status == "canceled" and "AAPL" not in fake.positions


def test_an_order_can_be_rejected_after_its_200(fake):
    client = trading(fake)
    fake.fail("POST", "/v2/orders", "reject_after_accept")
    order = client.submit_order(bracket("AAPL", 10, tp=110, sl=95, cid="late-reject"))
    assert order.status == "accepted"
    got = client.get_order_by_client_id("late-reject")
    assert got.status == "rejected" and got.failed_at is not None and fake.positions == {}
    assert [leg.status for leg in got.legs] == ["canceled", "canceled"]


def test_pattern_day_trader_and_held_quantity_refusals_are_403(fake):
    client = trading(fake)
    client.submit_order(bracket("AAPL", 10, tp=110, sl=95))
    fake.fail("PATCH", "/v2/orders", "403_pdt")
    leg = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))[0]
    with pytest.raises(APIError) as e:
        client.replace_order_by_id(leg.id, ReplaceOrderRequest(limit_price=99))
    assert (e.value.status_code, e.value.code) == (403, 40310100)
    assert e.value.message == "trade denied due to pattern day trading protection"
    with pytest.raises(APIError) as e:
        client.submit_order(sell("AAPL", 1))
    assert (e.value.status_code, e.value.code) == (403, 40310000)


def test_snapshot_fields_can_be_null(fake):
    data = StockHistoricalDataClient(**_kw(fake))
    fake.null_snapshot_fields("AAPL", "latestTrade", "minuteBar", "dailyBar")
    snaps = data.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=["AAPL", "MSFT"], feed=DataFeed.IEX))
    assert snaps["AAPL"].latest_trade is None and snaps["AAPL"].minute_bar is None
    assert snaps["AAPL"].daily_bar is None and snaps["AAPL"].latest_quote is not None
    assert snaps["MSFT"].latest_trade.price == 400


@pytest.mark.parametrize("strict", [True, False])
def test_every_response_carries_rate_limit_headers(fake, strict):
    if not strict:
        fake.lenient("rate_limit_headers")
    headers = {"APCA-API-KEY-ID": fake.key_id, "APCA-API-SECRET-KEY": fake.secret}
    answers = [requests.get(f"{fake.base_url}/v2/account", headers=headers),
               requests.get(f"{fake.base_url}/v2/orders/nope", headers=headers),
               requests.get(f"{fake.base_url}/v2/account", headers={})]
    assert [a.status_code for a in answers] == [200, 404, 401]
    if not strict:
        assert all("X-RateLimit-Limit" not in a.headers for a in answers)
        return
    assert all(a.headers["X-RateLimit-Limit"] == "200" for a in answers)
    remaining = [int(a.headers["X-RateLimit-Remaining"]) for a in answers]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]
    assert all(0 <= int(a.headers["X-RateLimit-Reset"]) - time.time() <= 61 for a in answers)


@pytest.mark.parametrize("strict", [True, False])
def test_minute_bars_include_pre_market_and_after_hours_as_alpaca_serves_them(fake, strict):
    from tests.fake_alpaca import EXTENDED_VOLUME

    if not strict:
        fake.lenient("extended_hours_bars")
    ny = ZoneInfo("America/New_York")
    data = StockHistoricalDataClient(**_kw(fake))
    # Wednesday before Thanksgiving (full day), Thanksgiving (closed), Black Friday (closes 13:00 ET)
    bars = data.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute,
                                                start=datetime(2025, 11, 26, tzinfo=ny),
                                                end=datetime(2025, 11, 29, tzinfo=ny), feed=DataFeed.IEX))["AAPL"]
    by_day: dict[date, list] = {}
    for b in bars:
        by_day.setdefault(b.timestamp.astimezone(ny).date(), []).append(b)
    assert set(by_day) == {date(2025, 11, 26), date(2025, 11, 28)}  # no bars on the holiday
    session = {b.timestamp for b in bars if b.volume == 1000 and b.close == 100}

    def minutes(day, frm, to):
        t, end = datetime.combine(day, frm, ny), datetime.combine(day, to, ny)
        return {t + timedelta(minutes=i) for i in range(int((end - t).total_seconds() // 60))}

    wednesday, friday = date(2025, 11, 26), date(2025, 11, 28)
    regular = (minutes(wednesday, clock_time(9, 30), clock_time(16, 0))
               | minutes(friday, clock_time(9, 30), clock_time(13, 0)))
    assert session == regular
    extended = [b for b in bars if b.timestamp not in regular]
    if not strict:
        assert extended == []
        return
    assert {b.timestamp for b in extended} == (minutes(wednesday, clock_time(4, 0), clock_time(9, 30))
                                               | minutes(wednesday, clock_time(16, 0), clock_time(20, 0))
                                               | minutes(friday, clock_time(4, 0), clock_time(9, 30))
                                               | minutes(friday, clock_time(13, 0), clock_time(17, 0)))
    assert {(b.close, b.volume) for b in extended} == {(102, EXTENDED_VOLUME)}  # tell-tale price and volume
    assert bars[0].timestamp == datetime(2025, 11, 26, 4, 0, tzinfo=ny)
    assert bars[-1].timestamp == datetime(2025, 11, 28, 16, 59, tzinfo=ny)  # after-hours end 17:00 after 13:00
