"""Scanner ranking and the entry rule, as an operator expects them.

Ranking is deterministic (best score first, ties by symbol, at most ``top_n``) and ignores
snapshots it cannot price. The entry rule respects the halt flag, symbols already held,
weak momentum, the position limit across the whole candidate list, and sizes each entry in
whole shares within the dollar amount, with protective stop and target prices.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalyst.core.scanner import (
    Candidate,
    EntryRules,
    Snapshot,
    evaluate,
    protective_prices,
    rank,
    score,
    size,
)

RULES = EntryRules(min_change_pct=1.0, max_positions=5, position_size_usd=1000.0, stop_loss_pct=0.05,
                   take_profit_pct=0.15)


def snap(symbol: str, change_pct: float, rel_volume: float = 1.0, price: float | None = None,
         catalyst: str | None = None) -> Snapshot:
    """A snapshot moving ``change_pct`` since the open with ``rel_volume`` times typical volume."""
    session_open = 100.0
    return Snapshot(symbol, price if price is not None else session_open * (1 + change_pct / 100.0), session_open,
                    volume=10_000 * rel_volume, typical_volume=10_000, catalyst=catalyst)


def cand(symbol: str, rank_: int, change_pct: float = 3.0, price: float = 50.0) -> Candidate:
    return Candidate(symbol, rank_, change_pct, price, change_pct, 10_000, 1.0, None)


def symbols(items) -> list[str]:
    return [i.symbol for i in items]


# -- ranking ---------------------------------------------------------------------------------------

def test_candidates_come_best_score_first_with_ranks_from_one():
    ranked = rank([snap("AAA", 1.0), snap("BBB", 5.0), snap("CCC", -2.0), snap("DDD", 3.0)], top_n=10)
    assert symbols(ranked) == ["BBB", "DDD", "AAA", "CCC"]
    assert [c.rank for c in ranked] == [1, 2, 3, 4]
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)


def test_equal_scores_are_ordered_by_symbol():
    ranked = rank([snap("ZED", 2.0), snap("ABC", 2.0), snap("MID", 2.0)], top_n=3)
    assert symbols(ranked) == ["ABC", "MID", "ZED"]


def test_top_n_caps_the_list_and_keeps_the_best():
    snaps = [snap(f"S{i:02d}", float(i)) for i in range(12)]
    ranked = rank(snaps, top_n=3)
    assert symbols(ranked) == ["S11", "S10", "S09"]
    assert len(rank(snaps, top_n=50)) == 12
    assert rank(snaps, top_n=0) == []


def test_relative_volume_boosts_momentum_up_to_double():
    assert score(snap("A", 2.0, rel_volume=0.5)) == pytest.approx(2.0)  # thin volume: no penalty, no boost
    assert score(snap("A", 2.0, rel_volume=1.5)) == pytest.approx(3.0)
    assert score(snap("A", 2.0, rel_volume=2.0)) == pytest.approx(4.0)
    assert score(snap("A", 2.0, rel_volume=50.0)) == pytest.approx(4.0)  # one huge print can't dominate
    ranked = rank([snap("LOUD", 2.0, rel_volume=2.0), snap("QUIET", 3.0, rel_volume=1.0)], top_n=2)
    assert symbols(ranked) == ["LOUD", "QUIET"]


def test_candidate_carries_the_numbers_it_was_ranked_on():
    (c,) = rank([snap("TEST", 2.5, rel_volume=1.5, catalyst="earnings beat")], top_n=1)
    assert c == Candidate("TEST", 1, pytest.approx(3.75), pytest.approx(102.5), pytest.approx(2.5), 15_000,
                          pytest.approx(1.5), "earnings beat")


@pytest.mark.parametrize("bad", [
    Snapshot("BAD", 0.0, 100.0, 1, 1), Snapshot("BAD", -5.0, 100.0, 1, 1),
    Snapshot("BAD", float("nan"), 100.0, 1, 1), Snapshot("BAD", float("inf"), 100.0, 1, 1),
    Snapshot("BAD", 100.0, 0.0, 1, 1), Snapshot("BAD", 100.0, -1.0, 1, 1), Snapshot("BAD", 100.0, float("nan"), 1, 1),
], ids=["zero price", "negative price", "nan price", "inf price", "zero open", "negative open", "nan open"])
def test_snapshots_without_a_usable_price_are_never_ranked(bad):
    ranked = rank([bad, snap("GOOD", 1.0)], top_n=5)
    assert symbols(ranked) == ["GOOD"]


def test_zero_typical_volume_means_no_boost_not_a_crash():
    s = Snapshot("NEW", 102.0, 100.0, volume=5_000, typical_volume=0)
    assert s.relative_volume == 0.0
    assert score(s) == pytest.approx(2.0)


finite_snapshots = st.builds(
    Snapshot,
    symbol=st.text(alphabet="ABCDEFGH", min_size=1, max_size=3),
    price=st.floats(min_value=0.5, max_value=500, allow_nan=False),
    session_open=st.sampled_from([10.0, 50.0, 100.0, 250.0]),
    volume=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    typical_volume=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(snaps=st.lists(finite_snapshots, max_size=25, unique_by=lambda s: s.symbol),
       top_n=st.integers(min_value=0, max_value=30), seed=st.integers(0, 2**32 - 1))
def test_ranking_is_deterministic_whatever_order_the_universe_arrives_in(snaps, top_n, seed):
    shuffled = list(snaps)
    random.Random(seed).shuffle(shuffled)
    first, second = rank(snaps, top_n), rank(shuffled, top_n)
    assert first == second
    assert len(first) == min(top_n, len(snaps))
    keys = [(-score(s), s.symbol) for s in sorted(snaps, key=lambda s: (-score(s), s.symbol))][:top_n]
    assert [(-score(next(s for s in snaps if s.symbol == c.symbol)), c.symbol) for c in first] == keys
    assert [c.rank for c in first] == list(range(1, len(first) + 1))




@pytest.mark.parametrize("volume,typical", [(float("nan"), 100.0), (100.0, float("nan")), (float("inf"), 100.0),
                                            (100.0, float("inf")), (-100.0, 100.0)],
                         ids=["nan volume", "nan typical volume", "inf volume", "inf typical volume",
                              "negative volume"])
def test_a_snapshot_with_unusable_volume_is_never_ranked(volume, typical):
    odd = Snapshot("AAA", 101.0, 100.0, volume, typical)
    assert symbols(rank([odd, snap("BBB", 3.0)], 2)) == ["BBB"]


def test_a_nan_volume_never_yields_a_nan_score_or_an_order_dependent_rank():
    odd = Snapshot("AAA", 101.0, 100.0, float("nan"), 100.0)
    others = [snap("BBB", 3.0), snap("CCC", 2.0)]
    orders = [rank([odd, *others], 3), rank([*others, odd], 3), rank([others[0], odd, others[1]], 3)]
    assert all(math.isfinite(c.score) for ranked in orders for c in ranked)
    assert orders[0] == orders[1] == orders[2]

# -- entry rule -----------------------------------------------------------------------------------------

def verdicts_by_symbol(verdicts) -> dict[str, tuple[str, str]]:
    return {v.symbol: (v.action, v.reason) for v in verdicts}


def test_halted_trading_skips_every_candidate_with_trading_halted():
    candidates = [cand("AAA", 1), cand("BBB", 2, change_pct=0.1), cand("CCC", 3, price=5000.0)]
    verdicts = evaluate(candidates, held={"AAA"}, open_count=0, halted=True, rules=RULES)
    assert [(v.symbol, v.action, v.reason, v.qty) for v in verdicts] == [
        ("AAA", "skip", "trading_halted", 0), ("BBB", "skip", "trading_halted", 0),
        ("CCC", "skip", "trading_halted", 0)]


def test_a_symbol_already_held_is_skipped_and_does_not_use_a_slot():
    rules = EntryRules(max_positions=2)
    verdicts = evaluate([cand("AAA", 1), cand("BBB", 2), cand("CCC", 3)], held={"AAA"}, open_count=1,
                        halted=False, rules=rules)
    assert verdicts_by_symbol(verdicts) == {"AAA": ("skip", "already_held"), "BBB": ("enter", "momentum"),
                                            "CCC": ("skip", "position_limit")}


@pytest.mark.parametrize("change_pct,action", [(0.99, "skip"), (1.0, "enter"), (1.01, "enter"), (-3.0, "skip")])
def test_momentum_below_the_minimum_is_skipped(change_pct, action):
    (v,) = evaluate([cand("TEST", 1, change_pct=change_pct)], set(), 0, False, RULES)
    assert v.action == action
    assert v.reason == ("momentum" if action == "enter" else "momentum_too_weak")


def test_position_limit_is_respected_across_all_candidates():
    candidates = [cand(f"S{i}", i) for i in range(1, 9)]
    verdicts = evaluate(candidates, set(), open_count=3, halted=False, rules=RULES)
    assert [v.action for v in verdicts] == ["enter", "enter"] + ["skip"] * 6
    assert {v.reason for v in verdicts[2:]} == {"position_limit"}


@pytest.mark.parametrize("open_count", [5, 6, 100])
def test_no_entries_once_the_limit_is_reached_or_exceeded(open_count):
    verdicts = evaluate([cand("AAA", 1), cand("BBB", 2)], set(), open_count, False, RULES)
    assert [(v.action, v.reason) for v in verdicts] == [("skip", "position_limit")] * 2


def test_skipped_candidates_do_not_consume_slots_so_the_next_best_enters():
    rules = EntryRules(max_positions=2)
    candidates = [cand("WEAK", 1, change_pct=0.5), cand("DEAR", 2, price=2000.0), cand("HELD", 3),
                  cand("ONE", 4), cand("TWO", 5), cand("THREE", 6)]
    verdicts = evaluate(candidates, {"HELD"}, 0, False, rules)
    assert verdicts_by_symbol(verdicts) == {
        "WEAK": ("skip", "momentum_too_weak"), "DEAR": ("skip", "price_above_position_size"),
        "HELD": ("skip", "already_held"), "ONE": ("enter", "momentum"), "TWO": ("enter", "momentum"),
        "THREE": ("skip", "position_limit")}


def test_verdicts_come_best_rank_first_whatever_the_input_order():
    candidates = [cand("C", 3), cand("A", 1), cand("B", 2)]
    assert symbols(evaluate(candidates, set(), 0, False, RULES)) == ["A", "B", "C"]


@pytest.mark.parametrize("price,qty", [(50.0, 20), (333.0, 3), (999.99, 1), (1000.0, 1), (0.5, 2000),
                                       (7.0, 142)])
def test_entries_are_whole_shares_within_the_dollar_amount(price, qty):
    (v,) = evaluate([cand("TEST", 1, price=price)], set(), 0, False, RULES)
    assert (v.action, v.qty) == ("enter", qty)
    assert isinstance(v.qty, int)
    assert v.qty * price <= RULES.position_size_usd
    assert (v.qty + 1) * price > RULES.position_size_usd


@pytest.mark.parametrize("price", [1000.01, 5000.0])
def test_a_share_dearer_than_the_position_size_is_skipped(price):
    (v,) = evaluate([cand("TEST", 1, price=price)], set(), 0, False, RULES)
    assert (v.action, v.reason, v.qty) == ("skip", "price_above_position_size", 0)


@settings(max_examples=300, deadline=None)
@given(price=st.floats(min_value=0.01, max_value=1e5, allow_nan=False),
       dollars=st.floats(min_value=1, max_value=1e6, allow_nan=False))
def test_size_never_exceeds_the_dollar_amount_and_never_leaves_a_whole_share_unbought(price, dollars):
    qty = size(price, dollars)
    assert qty >= 0 and qty * price <= dollars * (1 + 1e-12)
    assert (qty + 1) * price > dollars * (1 - 1e-12)


@pytest.mark.parametrize("price", [0.0, -10.0, float("nan")])
def test_size_of_an_unusable_price_is_zero_shares(price):
    assert size(price, 1000.0) == 0


def test_entries_carry_protective_stop_and_target_prices():
    (v,) = evaluate([cand("TEST", 1, price=50.0)], set(), 0, False, RULES)
    assert (v.stop_loss_price, v.take_profit_price) == (47.5, 57.5)
    assert v.stop_loss_price < 50.0 < v.take_profit_price


@pytest.mark.parametrize("price,stop,target", [(100.0, 95.0, 115.0), (12.34, 11.72, 14.19), (333.33, 316.66, 383.33)])
def test_protective_prices_are_rounded_to_cents(price, stop, target):
    assert protective_prices(price, 0.05, 0.15) == (stop, target)


def test_skips_carry_no_quantity_or_protective_prices():
    verdicts = evaluate([cand("AAA", 1, change_pct=0.1), cand("BBB", 2)], {"BBB"}, 0, False, RULES)
    for v in verdicts:
        assert (v.action, v.qty, v.stop_loss_price, v.take_profit_price) == ("skip", 0, None, None)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 12), open_count=st.integers(0, 8), max_positions=st.integers(0, 8),
       held=st.sets(st.integers(0, 11), max_size=6), halted=st.booleans())
def test_entries_never_exceed_the_free_slots(n, open_count, max_positions, held, halted):
    candidates = [cand(f"S{i:02d}", i + 1) for i in range(n)]
    verdicts = evaluate(candidates, {f"S{i:02d}" for i in held}, open_count, halted,
                        EntryRules(max_positions=max_positions))
    entered = [v for v in verdicts if v.action == "enter"]
    assert len(verdicts) == n
    assert len(entered) <= max(max_positions - open_count, 0)
    assert not (halted and entered)
    assert all(v.symbol not in {f"S{i:02d}" for i in held} for v in entered)
    assert all(math.isfinite(v.stop_loss_price) and v.qty >= 1 for v in entered)


def test_an_overbought_candidate_is_not_bought_only_to_be_sold_on_the_first_check():
    hot = Candidate("HOT", 1, 9.0, 50.0, 5.0, 1000, 2.0, None, rsi=80.0)
    cool = Candidate("COOL", 2, 4.0, 50.0, 2.0, 1000, 1.0, None, rsi=60.0)
    unknown = Candidate("NEW", 3, 3.0, 50.0, 1.5, 1000, 1.0, None, rsi=None)
    verdicts = {v.symbol: (v.action, v.reason) for v in evaluate([hot, cool, unknown], set(), 0, False, EntryRules())}
    assert verdicts == {"HOT": ("skip", "overbought"), "COOL": ("enter", "momentum"), "NEW": ("enter", "momentum")}
