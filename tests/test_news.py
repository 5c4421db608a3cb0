"""News as the funnel's catalyst: the real Alpaca adapter against the fake news API, the synthetic and
replay sources, the verdict the funnel stores (headline and age), and a news outage that never fails a scan.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from catalyst.core.domain import BadInput
from catalyst.core.news import NewsItem, by_symbol, verdict
from catalyst.marketdata.replay import ReplayMarketData
from catalyst.marketdata.synthetic import SyntheticMarketData
from catalyst.runtime import get_runtime
from tests.alpaca_support import START, alpaca_env, alpaca_market
from tests.fake_alpaca import FakeAlpaca
from tests.support import query, write_replay_csv

NY = ZoneInfo("America/New_York")
OPEN_ALL = {"CATALYST_SCAN_MIN_RELATIVE_VOLUME": "0", "CATALYST_SCAN_MIN_DOLLAR_VOLUME": "0",
            "CATALYST_SCAN_MIN_GAP_PCT": "-100", "CATALYST_SCAN_MAX_GAP_PCT": "100"}


# -- the verdict -------------------------------------------------------------------------------------------

def item(symbol: str, headline: str, minutes_ago: float, now: datetime) -> NewsItem:
    return NewsItem(symbol, headline, now - timedelta(minutes=minutes_ago))


def test_the_newest_headline_counts_with_its_age_and_only_within_the_max_age():
    now = datetime(2025, 3, 4, 10, 0, tzinfo=NY)
    items = [item("AAA", "old news", 300, now), item("AAA", "fresh news", 45, now), item("AAA", "future", -5, now)]
    v = verdict(items, now, max_age_minutes=60)
    assert (v["headline"], v["age_minutes"], v["fresh"]) == ("fresh news", 45.0, True)  # a future article is unseen
    assert verdict(items[:1], now, 60)["fresh"] is False
    assert verdict([], now, 60) == {"headline": None, "age_minutes": None, "fresh": False}


def test_items_are_grouped_per_wanted_symbol_newest_first():
    now = datetime(2025, 3, 4, 10, 0, tzinfo=NY)
    grouped = by_symbol([item("AAA", "a1", 30, now), item("BBB", "b", 10, now), item("AAA", "a2", 5, now),
                         item("ZZZ", "unwanted", 1, now)], ["AAA", "BBB", "CCC"])
    assert {s: [i.headline for i in found] for s, found in grouped.items()} == {
        "AAA": ["a2", "a1"], "BBB": ["b"], "CCC": []}


# -- synthetic and replay sources ----------------------------------------------------------------------------

def test_synthetic_news_is_deterministic_and_published_at_its_scripted_minute():
    md = SyntheticMarketData()
    since, until = datetime(2025, 3, 12, 0, 0, tzinfo=NY), datetime(2025, 3, 12, 9, 0, tzinfo=NY)
    found = md.news(md.symbols(), since, until)
    assert found == SyntheticMarketData().news(md.symbols(), since, until)
    assert {(i.symbol, i.created_at.astimezone(NY).strftime("%H:%M")) for i in found} == {
        ("GAPU", "08:00"), ("DNTR", "07:30"), ("UPTR", "08:45")}  # before the open: only pre-market news
    assert md.news(["FLAT", "CHOP"], since, until + timedelta(hours=8)) == []  # symbols without news


def test_replay_reads_news_from_a_side_file_and_refuses_a_bad_line(tmp_path):
    start = datetime(2025, 3, 4, 9, 30, tzinfo=NY)
    write_replay_csv(tmp_path / "AAA.csv", "AAA", start, [10.0] * 30)
    (tmp_path / "news.jsonl").write_text(json.dumps(
        {"created_at": "2025-03-04T09:40:00-05:00", "symbols": ["AAA", "BBB"], "headline": "AAA wins"}) + "\n")
    md = ReplayMarketData(tmp_path)
    (found,) = md.news(["AAA"], start, start + timedelta(hours=1))
    assert (found.symbol, found.headline) == ("AAA", "AAA wins")
    assert md.news(["AAA"], start, start + timedelta(minutes=5)) == []  # published later
    assert ReplayMarketData(tmp_path / "AAA.csv").news(["AAA"], start, start + timedelta(hours=1))  # beside the file
    (tmp_path / "news.jsonl").write_text('{"created_at": "2025-03-04T09:40:00", "symbols": ["AAA"], "headline": "x"}\n')
    with pytest.raises(BadInput, match="news.jsonl line 1"):
        ReplayMarketData(tmp_path)


# -- Alpaca, through the real SDK against the fake -------------------------------------------------------

@pytest.fixture
def fake():
    with FakeAlpaca(now=START, hold_seconds=3.0) as api:  # a news timeout: longer than ALPACA_TIMEOUT (2 s)
        yield api


def adapter(fake):
    from catalyst.core.sessions import SessionCalendar
    from catalyst.marketdata.alpaca import AlpacaMarketData, LocalCycleCache
    from catalyst.ratelimit import LocalTokenBucket

    return AlpacaMarketData(api_key=fake.key_id, secret_key=fake.secret, data_url=fake.base_url, feed="iex",
                            timeout=2, bucket=LocalTokenBucket(200, 60), cache=LocalCycleCache(), cycle_seconds=60,
                            watchlist=lambda: [], calendar=SessionCalendar.for_market("US"))


def test_alpaca_news_comes_per_symbol_within_the_window(fake):
    fake.add_news(["AAA", "BBB"], "AAA to merge with BBB", created_at=START - timedelta(hours=2))
    fake.add_news("AAA", "AAA beats earnings", created_at=START - timedelta(minutes=20))
    fake.add_news("CCC", "CCC unrelated", created_at=START - timedelta(minutes=10))
    fake.add_news("AAA", "AAA last year", created_at=START - timedelta(days=400))
    found = adapter(fake).news(["AAA", "BBB"], START - timedelta(hours=24), START)
    assert [(i.symbol, i.headline) for i in found] == [
        ("AAA", "AAA beats earnings"), ("BBB", "AAA to merge with BBB"), ("AAA", "AAA to merge with BBB")]
    assert found[0].created_at == START - timedelta(minutes=20)
    (request,) = [r for r in fake.requests if r.path == "/v1beta1/news"]
    assert request.query["symbols"] == "AAA,BBB" and "start" in request.query and "end" in request.query


@pytest.fixture
def alpaca(fake, pg_url, redis_url, tmp_path):
    env = alpaca_env(fake, pg_url, redis_url, tmp_path, **OPEN_ALL)
    with alpaca_market(fake, env, {"AAA": 20.0, "BBB": 30.0, "CCC": 40.0}) as driver:
        fake.set_most_actives([("AAA", 5_000_000, 40_000), ("BBB", 3_000_000, 20_000), ("CCC", 1_000_000, 9_000)])
        fake.set_movers([], [])
        yield driver


def scan_rows(slot: datetime):
    from catalyst.cycles import scan
    from catalyst.db.models import ScanResult

    cycle_id = scan(get_runtime(), slot)
    return {r.symbol: r for r in query(lambda s: s.scalars(select(ScanResult).where(ScanResult.cycle_id == cycle_id))
                                       .all())}


@pytest.mark.postgres
def test_a_scan_stores_each_finalists_headline_and_age_and_only_fresh_news_boosts(fake, alpaca):
    fake.add_news("AAA", "AAA wins FDA approval", created_at=START - timedelta(minutes=30))
    fake.add_news("BBB", "BBB old story", created_at=START - timedelta(hours=30))  # older than 24 h
    found = scan_rows(START + timedelta(minutes=1))
    news = {s: r.details["news"] for s, r in found.items()}
    assert news["AAA"]["headline"] == "AAA wins FDA approval" and news["AAA"]["fresh"] is True
    assert news["AAA"]["age_minutes"] == pytest.approx(31.0, abs=1.0)
    assert news["BBB"] == {"headline": None, "age_minutes": None, "fresh": False}  # outside the window asked for
    assert found["AAA"].catalyst == "AAA wins FDA approval" and found["BBB"].catalyst is None
    assert found["AAA"].details["components"]["news"] == 1.0 and found["BBB"].details["components"]["news"] == 0.0
    assert fake.count("GET", "/v1beta1/news") == 1  # one call for every finalist


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["500", "timeout"])
def test_a_news_outage_never_fails_the_scan(fake, alpaca, kind, capfd):
    fake.add_news("AAA", "AAA wins FDA approval", created_at=START - timedelta(minutes=30))
    fake.fail("GET", "/v1beta1/news", kind, times=5)
    found = scan_rows(START + timedelta(minutes=1))
    assert set(found) == {"AAA", "BBB", "CCC"}
    reached = [r for r in found.values() if "news" in r.details]
    assert reached and all(r.details["news"]["unavailable"] and r.catalyst is None for r in reached)
    assert all("risk" in r.details for r in reached)  # and the funnel went on past the news stage
    captured = capfd.readouterr()  # the log's stream depends on which process configured logging first
    assert "news_unavailable" in captured.out + captured.err
