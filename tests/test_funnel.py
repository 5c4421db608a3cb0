"""The candidate funnel on a synthetic and on a replayed session, through ``scan`` and ``evaluate_cycle``.

What an operator checks: every universe symbol has one ``scan_results`` row with the stage it reached
and why it stopped; the cycle keeps the counts per stage in funnel order; every stored score and verdict
is reproduced from the stored numbers alone; entries come only from the selection, with the best
pattern as their reason; a sub-minimum-price mover never passes, however hard it runs; a pre-market scan
builds a watchlist (no entries) that the day's session scans put into their universe.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from catalyst.clock import ManualClock
from catalyst.core import funnel
from catalyst.core.domain import Bar
from catalyst.core.funnel import FunnelRules, Observation, filter_rejection, finish, screen, stage_caps
from catalyst.cycles import evaluate_cycle, funnel_counts, funnel_rules, scan
from catalyst.db.models import Decision, ScanResult, TradingCycle
from catalyst.marketdata.synthetic import BEHAVIOURS, Behaviour, SyntheticMarketData
from catalyst.runtime import get_runtime
from tests.support import SHARED_DATA, environment, query, race, rows

pytestmark = pytest.mark.postgres

NY = ZoneInfo("America/New_York")
DAY = datetime(2025, 3, 12, tzinfo=NY)  # a Wednesday
# A 2-dollar stock up 40 % in its first hour on fifty times the usual volume, with news.
PENNY = Behaviour(((0, 0.0), (60, 0.40), (389, 0.42)), "PNNY soars on meme-stock frenzy", price=2.0,
                  volume_scale=50.0, news_minute=-30)
FUNNEL_ENV = {"CATALYST_SCAN_MIN_RELATIVE_VOLUME": "0.9", "CATALYST_SCAN_MIN_GAP_PCT": "-5"}


def at(hour: int, minute: int) -> datetime:
    return DAY.replace(hour=hour, minute=minute)


@pytest.fixture
def synthetic(pg_url, tmp_path):
    """This process on the test database, on the synthetic market plus PNNY, the clock at ``start``."""
    def _enter(start: datetime, **extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": "synthetic", "CATALYST_CLOCK": f"sim:{start.isoformat()}@1",
                            **FUNNEL_ENV, **extra})
    return _enter


def with_penny() -> None:
    get_runtime().market_data = SyntheticMarketData(behaviours={**BEHAVIOURS, "PNNY": PENNY})


def scan_at(slot: datetime) -> int:
    """Scan ``slot`` as beat would: with the clock at the slot."""
    get_runtime().clock = ManualClock(slot)
    return scan(get_runtime(), slot)


def results(cycle_id: int) -> list[ScanResult]:
    return rows(ScanResult, ScanResult.cycle_id == cycle_id)


def cycle(cycle_id: int) -> TradingCycle:
    return query(lambda s: s.get(TradingCycle, cycle_id))


def assert_explained(cycle_id: int) -> None:
    """Every row's score, components and verdict recomputed from its stored details; ranks follow scores."""
    rules, kind = funnel_rules(get_runtime()), cycle(cycle_id).kind
    order = funnel.SESSION_STAGES
    for r in results(cycle_id):
        parts = funnel.components(r.details, rules, kind)
        assert parts == r.details["components"], r.symbol
        assert funnel.composite(parts) == pytest.approx(r.score, abs=1e-9), r.symbol
        filtered = funnel.filter_rejection(r.details["filters"], rules, kind)
        if r.stage == funnel.UNIVERSE:
            assert r.rejected_reason == filtered or r.rejected_reason == "below_filters_cut", r.symbol
        else:
            assert filtered is None, r.symbol
        if funnel.RISK in r.details:
            assert funnel.risk_rejection(r.details["risk"], rules, kind) == (
                r.rejected_reason if r.stage == funnel.NEWS else None), r.symbol
        if r.rejected_reason and r.rejected_reason.startswith("below_"):
            cut = r.details["cut"]
            assert cut["position"] > cut["cap"] and cut["stage"] == order[order.index(r.stage) + 1]
        assert (r.rank is not None) is (r.stage == funnel.SELECTED)
        assert (r.rejected_reason is None) is (r.stage == funnel.SELECTED), r.symbol
    chosen = sorted((r for r in results(cycle_id) if r.rank is not None), key=lambda r: r.rank)
    assert [r.rank for r in chosen] == list(range(1, len(chosen) + 1))
    assert [r.score for r in chosen] == sorted((r.score for r in chosen), reverse=True)


def assert_counts_persisted(cycle_id: int) -> list[tuple[str, int]]:
    stored = cycle(cycle_id)
    stages = funnel.PREMARKET_STAGES if stored.kind == funnel.PREMARKET else funnel.SESSION_STAGES
    order = funnel.SESSION_STAGES
    from_rows = {st: sum(1 for r in results(cycle_id) if order.index(r.stage) >= order.index(st)) for st in stages}
    counts = query(lambda s: funnel_counts(s, cycle_id))
    assert counts == [(st, from_rows[st]) for st in stages]
    assert dict(stored.funnel) == from_rows
    assert [n for _, n in counts] == sorted((n for _, n in counts), reverse=True)  # a funnel only narrows
    assert stored.candidates == from_rows[funnel.SELECTED]
    return counts


def assert_entries_come_from_the_selection(cycle_id: int) -> list:
    planned = evaluate_cycle(get_runtime(), cycle_id)
    chosen = {r.symbol: r for r in results(cycle_id) if r.stage == funnel.SELECTED}
    decisions = rows(Decision, Decision.cycle_id == cycle_id, Decision.kind == "evaluate")
    assert sorted(d.symbol for d in decisions) == sorted(chosen)  # only the selection is judged
    for p in planned:
        assert p.symbol in chosen
        assert p.reason == chosen[p.symbol].details["strategy"]
        (d,) = [d for d in decisions if d.symbol == p.symbol]
        assert (d.action, d.reason) == ("enter", p.reason)
    return planned


# -- synthetic session --------------------------------------------------------------------------------------

def test_a_synthetic_session_funnel_persists_every_symbol_and_the_counts_per_stage(synthetic):
    with synthetic(at(10, 30)):
        with_penny()
        cycle_id = scan(get_runtime(), at(10, 30))
        assert scan(get_runtime(), at(10, 30)) == cycle_id  # idempotent per slot
        counts = assert_counts_persisted(cycle_id)
        assert [st for st, _ in counts] == list(funnel.SESSION_STAGES)
        assert counts[0] == ("universe", 13)
        assert sorted(r.symbol for r in results(cycle_id)) == sorted([*BEHAVIOURS, "PNNY"])
        assert cycle(cycle_id).kind == "session"
        assert 0 < dict(counts)["selected"] <= 5
        assert_explained(cycle_id)
        selected = [r for r in results(cycle_id) if r.stage == "selected"]
        for r in selected:  # what the row says it saw
            assert set(r.details) >= {"filters", "technicals", "patterns", "news", "risk", "components", "strategy"}
            assert set(r.details["patterns"]) == {"opening_range_breakout", "vwap_reclaim", "bull_flag"}
            assert r.details["technicals"]["rsi"] == r.rsi
        news = {r.symbol: r.details["news"] for r in results(cycle_id) if "news" in r.details}
        if "GAPU" in news:  # published 90 minutes before the open: two hours old at 10:30
            assert news["GAPU"]["headline"] == BEHAVIOURS["GAPU"].headline
            assert news["GAPU"]["age_minutes"] == pytest.approx(150.0, abs=0.1) and news["GAPU"]["fresh"]


def test_entered_candidates_are_the_selection_with_the_best_pattern_as_reason(synthetic):
    with synthetic(at(11, 0)):
        with_penny()
        cycle_id = scan(get_runtime(), at(11, 0))
        planned = assert_entries_come_from_the_selection(cycle_id)
        assert planned, "the synthetic morning has at least one entry"
        assert evaluate_cycle(get_runtime(), cycle_id) == planned  # re-evaluating repeats the answer


def test_a_sub_minimum_price_mover_never_passes_at_any_slot(synthetic):
    with synthetic(at(9, 45)):
        with_penny()
        slots = [at(9, 45) + timedelta(minutes=30 * k) for k in range(12)]
        for slot in slots:
            (penny,) = [r for r in results(scan_at(slot)) if r.symbol == "PNNY"]
            assert (penny.stage, penny.rejected_reason, penny.rank) == ("universe", "price_below_minimum", None)
            assert penny.details["filters"]["price"] < 5.0
        # ...although on every other number it is the best mover in the market
        last = [r for r in results(scan_at(slots[2])) if r.symbol == "PNNY"][0]
        assert last.details["filters"]["change_pct"] > 30 and last.details["filters"]["relative_volume"] > 0.9


def test_concurrent_scans_of_one_slot_store_one_cycle(synthetic):
    with synthetic(at(10, 0)):
        for round_ in range(10):
            slot = at(10, 0) + timedelta(minutes=15 * round_)
            ids = race(4, lambda i: scan(get_runtime(), slot))
            assert all(isinstance(i, int) for i in ids), ids
            assert len(set(ids)) == 1
            assert len(results(ids[0])) == len(BEHAVIOURS)
        assert len(rows(TradingCycle)) == 10


# -- pre-market ------------------------------------------------------------------------------------------

def test_a_premarket_scan_builds_a_watchlist_that_the_session_scans_start_from(synthetic):
    with synthetic(at(9, 0)):
        with_penny()
        rt = get_runtime()
        pre = scan(rt, at(9, 0))
        assert cycle(pre).kind == "premarket"
        counts = assert_counts_persisted(pre)
        assert [st for st, _ in counts] == list(funnel.PREMARKET_STAGES)
        assert_explained(pre)
        chosen = sorted((r for r in results(pre) if r.stage == "selected"), key=lambda r: r.rank)
        assert chosen and all("gap_pct" in r.details["filters"] for r in chosen)
        gaps = {r.symbol: r.details["filters"]["gap_pct"] for r in results(pre)}
        assert gaps["GAPU"] == pytest.approx(4.0, abs=1.0)  # the synthetic earnings gap, known before the open
        assert evaluate_cycle(rt, pre) == []  # a watchlist, never an order
        decisions = rows(Decision, Decision.cycle_id == pre)
        assert sorted((d.symbol, d.action, d.reason) for d in decisions) == sorted(
            (r.symbol, "skip", "premarket_watchlist") for r in chosen)
        # A universe of 4: the pre-market selection comes before the source's own symbols.
        rt.settings = rt.settings.model_copy(update={"scan_universe_size": 4})
        session_cycle = scan_at(at(10, 0))
        assert cycle(session_cycle).kind == "session"
        assert {r.symbol for r in results(session_cycle)} == {r.symbol for r in chosen[:4]}


# -- replayed session (real bars) -------------------------------------------------------------------------

REPLAY_DAY = "2025-04-09"  # MSFT's tariff-pause rally; the other real sessions are replayed on this date
REAL = {"MSFT": "MSFT-2025-04-09-1min.csv", "JPM": "JPM-2024-11-06-1min.csv", "META": "META-2024-02-02-1min.csv",
        "AAPL": "AAPL-2014-06-09-1min.csv", "SPY": "SPY-2013-10-10-1min.csv", "SHY": "SHY-2008-03-10-1min.csv"}
# Previous regular closes documented in SOURCES.md (META ~395 before its earnings gap; AAPL split-adjusted).
PREVIOUS_CLOSE = {"META": 395.0, "AAPL": 92.224}


def _restamped(path: Path, symbol: str, scale=lambda p: p, volume_factor: float = 1.0) -> list[str]:
    """The file's bars moved to REPLAY_DAY at the same New York time of day."""
    out = []
    for line in path.read_text().splitlines()[1:]:
        ts, _, o, h, l, c, v = line.split(",")
        local = datetime.fromisoformat(ts).astimezone(NY)
        moved = datetime.combine(datetime.fromisoformat(REPLAY_DAY).date(), local.time(), NY)
        prices = ",".join(f"{scale(float(x)):.4f}" for x in (o, h, l, c))
        out.append(f"{moved.isoformat()},{symbol},{prices},{float(v) * volume_factor:.0f}")
    return out


@pytest.fixture
def replay_dir(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data not found at {SHARED_DATA}")
    folder = tmp_path / "replay"
    folder.mkdir()
    header = "timestamp,symbol,open,high,low,close,volume"
    before = datetime.fromisoformat(f"{REPLAY_DAY}T15:59:00").replace(tzinfo=NY) - timedelta(days=1)
    for symbol, name in REAL.items():
        lines = _restamped(SHARED_DATA / name, symbol)
        if symbol in PREVIOUS_CLOSE:
            p = PREVIOUS_CLOSE[symbol]
            lines.insert(0, f"{before.isoformat()},{symbol},{p},{p},{p},{p},100000")
        (folder / f"{symbol}.csv").write_text("\n".join([header, *lines]) + "\n")
    # TINY: MSFT's real rally scaled to a 2-dollar stock and steepened (x^4: +32 % at 13:45, +48 % by the
    # close), on 100 times the volume.
    msft_open = 353.535
    tiny = _restamped(SHARED_DATA / REAL["MSFT"], "TINY", lambda p: 2.0 * (p / msft_open) ** 4, 100.0)
    (folder / "TINY.csv").write_text("\n".join([header, *tiny]) + "\n")
    news = [{"created_at": f"{REPLAY_DAY}T13:18:00-04:00", "symbols": ["MSFT", "AAPL", "TINY"],
             "headline": "White House announces 90-day pause on reciprocal tariffs"},
            {"created_at": "2025-04-07T08:00:00-04:00", "symbols": ["JPM"], "headline": "JPM earnings preview"}]
    (folder / "news.jsonl").write_text("\n".join(json.dumps(n) for n in news) + "\n")
    return folder


@pytest.fixture
def replayed(pg_url, tmp_path, replay_dir):
    def _enter(start: datetime, **extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": f"replay:{replay_dir}",
                            "CATALYST_CLOCK": f"sim:{start.isoformat()}@1",
                            "CATALYST_SCAN_MIN_RELATIVE_VOLUME": "0.5", **extra})
    return _enter


def test_a_replayed_session_funnel_is_persisted_explainable_and_keeps_the_penny_stock_out(replayed):
    slot = datetime.fromisoformat(f"{REPLAY_DAY}T13:45:00-04:00")
    with replayed(slot):
        cycle_id = scan(get_runtime(), slot)
        counts = dict(assert_counts_persisted(cycle_id))
        assert counts["universe"] == 7 and counts["selected"] >= 1
        assert_explained(cycle_id)
        by_symbol = {r.symbol: r for r in results(cycle_id)}
        tiny = by_symbol["TINY"]
        assert (tiny.stage, tiny.rejected_reason) == ("universe", "price_below_minimum")
        assert tiny.details["filters"]["change_pct"] > 30 and tiny.details["filters"]["dollar_volume"] > 1e8
        meta = by_symbol["META"].details["filters"]
        assert meta["previous_close"] == 395.0 and meta["gap_pct"] == pytest.approx((459.6 / 395 - 1) * 100, abs=0.01)
        assert by_symbol["MSFT"].details["filters"]["gap_pct"] is None  # no previous session replayed: unknown
        msft = by_symbol["MSFT"].details
        if "news" in msft:
            assert msft["news"]["headline"].startswith("White House") and msft["news"]["age_minutes"] == 27.0
        assert_entries_come_from_the_selection(cycle_id)


# -- the pure funnel: caps and filters ------------------------------------------------------------------------

PURE_OPEN = datetime(2025, 3, 12, 9, 30, tzinfo=NY)


def session_history(symbol: str, drift: float, today_volume: float = 2_000, price: float = 50.0,
                    minutes: int = 60) -> tuple[Bar, ...]:
    """A flat previous session (1,000 shares a minute), then ``minutes`` of today rising ``drift`` a minute
    in a zig-zag (RSI stays well below overbought)."""
    prev_day = PURE_OPEN - timedelta(days=1)
    bars = [Bar(prev_day + timedelta(minutes=i), symbol, price, price + 0.02, price - 0.02, price, 1_000)
            for i in range(390)]
    last = price * 1.01  # a 1 % gap up
    for i in range(minutes):
        close = round(last * (1 + drift) * (0.997 if i % 3 == 2 else 1.0015), 4)
        bars.append(Bar(PURE_OPEN + timedelta(minutes=i), symbol, last, max(last, close) + 0.01,
                        min(last, close) - 0.01, close, today_volume))
        last = close
    return tuple(bars)


def observation(symbol: str, history: tuple[Bar, ...]) -> Observation:
    return Observation(symbol, history[-1].close, history, PURE_OPEN)


def test_caps_narrow_a_100_symbol_universe_to_35_20_10_then_the_top_5():
    assert stage_caps(100, 5) == (35, 20, 10)
    assert stage_caps(12, 5) == (5, 5, 5)  # never below the top N
    rules = FunnelRules(max_entry_rsi=None)  # the RSI screen has tests of its own
    universe = [observation(f"S{i:03d}", session_history(f"S{i:03d}", 0.0004 + 0.00001 * i)) for i in range(100)]
    result = finish(screen(universe, rules, "America/New_York"), {}, [], PURE_OPEN + timedelta(minutes=60), rules)
    assert result.counts() == {"universe": 100, "filters": 35, "technicals": 20, "patterns": 10, "news": 10,
                               "risk": 10, "selected": 5}
    reasons = {r.rejected_reason for r in result.rows if r.stage != "selected"}
    assert reasons == {"below_filters_cut", "below_technicals_cut", "below_patterns_cut", "below_top_n"}
    assert [r.rank for r in result.selected()] == [1, 2, 3, 4, 5]


BASE_VALUES = {"price": 50.0, "tradable": True, "session_bars": 30, "dollar_volume": 5e6, "relative_volume": 2.0,
               "change_pct": 3.0, "gap_pct": 2.0}


@pytest.mark.parametrize("change,reason", [
    ({}, None),
    ({"price": 2.0, "change_pct": 40.0, "relative_volume": 50.0, "dollar_volume": 1e9}, "price_below_minimum"),
    ({"price": 4.99}, "price_below_minimum"),
    ({"price": 1500.0}, "price_above_maximum"),
    ({"tradable": False}, "not_tradable"),
    ({"price": None}, "not_tradable"),
    ({"session_bars": 0}, "no_session_bars"),
    ({"dollar_volume": 999_999.0}, "dollar_volume_too_low"),
    ({"relative_volume": 0.99}, "relative_volume_too_low"),
    ({"gap_pct": -0.5}, "gap_below_minimum"),
    ({"gap_pct": 30.0}, "gap_above_maximum"),
    ({"gap_pct": None}, None),  # no previous close known: the gap cannot be judged in session
], ids=["passes", "penny-rocket", "just-below-min", "above-max", "untradable", "no-price", "no-bars",
        "illiquid", "quiet", "gap-down", "gap-too-big", "gap-unknown"])
def test_filters_table(change, reason):
    assert filter_rejection({**BASE_VALUES, **change}, FunnelRules()) == reason


def test_premarket_filters_need_no_session_bars_but_do_need_the_gap():
    values = {"price": 50.0, "tradable": True, "gap_pct": 3.0}
    assert filter_rejection(values, FunnelRules(), "premarket") is None
    assert filter_rejection({**values, "gap_pct": None}, FunnelRules(), "premarket") == "gap_unknown"
    assert filter_rejection({**values, "price": 3.0}, FunnelRules(), "premarket") == "price_below_minimum"


# -- one symbol's bad data never fails a scan; the minimum price is the observed price ---------------


def _good_universe(n=6):
    return [observation(f"G{i}", session_history(f"G{i}", 0.0005 + 0.00001 * i)) for i in range(n)]


def test_a_price_just_under_the_minimum_never_passes_the_filters():
    h = session_history("SUBM", 0.0005, price=5.2, today_volume=400_000)
    obs = Observation("SUBM", 4.99996, h, PURE_OPEN)  # below the 5.00 minimum
    result = screen([obs, *_good_universe()], FunnelRules(max_entry_rsi=None), "America/New_York")
    row = next(r for r in result.rows if r.symbol == "SUBM")
    assert row.rejected_reason == "price_below_minimum", (row.rejected_reason, row.details["filters"]["price"])


def test_one_symbol_with_a_bad_bar_in_the_indicator_window_does_not_fail_the_screen():
    h = list(session_history("BADL", 0.0005))
    h[-3] = replace(h[-3], low=0.0)  # one bad print (a zero low) among today's bars
    universe = [observation("BADL", tuple(h)), *_good_universe()]
    result = screen(universe, FunnelRules(max_entry_rsi=None), "America/New_York")  # today: raises BadInput for every symbol
    assert {r.symbol for r in result.rows} >= {"G0", "BADL"}
    bad = next(r for r in result.rows if r.symbol == "BADL")
    assert bad.rejected_reason == "bad_data" and "error" in bad.details["technicals"]
    assert any(r.stage == "patterns" for r in result.rows), "the others went on"


def test_one_symbol_with_a_nan_high_at_the_open_does_not_fail_the_screen_late_in_the_session():
    h = list(session_history("NANH", 0.0002, minutes=250))  # 250 session bars: the open is outside the 200-bar window
    first = next(i for i, b in enumerate(h) if b.timestamp >= PURE_OPEN)
    h[first] = replace(h[first], high=math.nan)
    universe = [observation("NANH", tuple(h)), *[observation(f"G{i}", session_history(f"G{i}", 0.0005, minutes=250))
                                                 for i in range(6)]]
    result = screen(universe, FunnelRules(max_entry_rsi=None), "America/New_York")  # today: StopIteration from the ORB detector
    assert {r.symbol for r in result.rows} >= {"G0", "NANH"}
    nanh = next(r for r in result.rows if r.symbol == "NANH")
    assert nanh.rejected_reason in ("bad_data", "below_technicals_cut", "below_patterns_cut"), nanh.rejected_reason
