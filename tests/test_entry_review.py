"""The entry review: Claude may veto the rules' final candidates, through the real ``anthropic`` SDK
against the local fake Messages API, with the advisor's gates in a real PostgreSQL database.

A candidate enters only on ``enter: true`` with enough confidence; every way Claude cannot answer
is the rules verdict (enter) recorded as a fallback with its why; every review is a ``decisions``
row with its cost; entry reviews never take the exit advisor's consults.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from anthropic.lib._parse._transform import transform_schema
from sqlalchemy import select

from catalyst import advisor_budget
from catalyst.advisor import AdviceRequest
from catalyst.db.engine import session_scope
from catalyst.db.models import AdvisorUsage, Decision, ServiceHealth, TradingCycle
from catalyst.entry_review import TOOL, TOOL_NAME, EntryProposal, EntryReview, review_entries
from catalyst.runtime import build_runtime
from catalyst.settings import load_settings
from tests.fake_anthropic import FakeAnthropic, fake_anthropic  # noqa: F401 - the fixture
from tests.support import environment

pytestmark = pytest.mark.postgres

KEY = "sk-ant-api03-TEST-" + "entryReviewKey" * 3
ALPACA_SECRET = "alpaca-secret-" + "s3cr3t" * 4
NOW = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)  # 10:00 in New York
DAY = "2025-03-04"
USAGE_COST = (412 * 1.0 + 37 * 5.0) / 1e6  # the fake's default usage at the default prices
WORKER = "evaluate@test"


@pytest.fixture
def db(pg_url):
    with environment({"DATABASE_URL": pg_url}):
        yield pg_url


def runtime(api: FakeAnthropic | None, **overrides):
    settings = {"anthropic_api_key": KEY, "anthropic_base_url": api.base_url if api else None,
                "advisor_timeout": 5.0, "entry_review": True, "alpaca_secret_key": ALPACA_SECRET, **overrides}
    return build_runtime(load_settings(**settings))


def new_cycle(slot: datetime = NOW) -> int:
    with session_scope() as s:
        cycle = TradingCycle(slot_at=slot, market="US", status="scanned", started_at=slot)
        s.add(cycle)
        s.flush()
        return cycle.id


def proposal(symbol: str = "NVDA", **overrides) -> EntryProposal:
    values = dict(
        symbol=symbol, price=131.42, qty=38, stop=128.15, target=138.0, reward_risk=2.01, score=0.873, rank=1,
        details={"patterns": {"opening_range_breakout": {"score": 0.91, "evidence": {"range_high": 130.8,
                                                                                       "volume_ratio": 3.4}},
                              "vwap_reclaim": {"score": 0.55}},
                 "indicators": {"rsi": 64.2, "macd_hist": 0.31, "vwap": 129.97, "atr": 1.64},
                 "news": {"headline": "NVDA beats on data-center revenue", "age_minutes": 47}},
    )
    values.update(overrides)
    return EntryProposal(**values)


def decisions(cycle_id: int) -> list[Decision]:
    with session_scope() as s:
        return list(s.scalars(select(Decision).where(Decision.cycle_id == cycle_id).order_by(Decision.id)))


def usage_row(day: str = DAY):
    with session_scope() as s:
        return s.get(AdvisorUsage, day)


def by_symbol(actions: dict[str, object]):
    """A responder answering each request by the candidate symbol its prompt names."""
    def respond(body):
        symbol = re.search(r"BUY \d+ (\S+) at", body["messages"][0]["content"]).group(1)
        return actions[symbol]
    return respond


# -- answers -----------------------------------------------------------------------------------------

def test_an_enter_answer_accepts_and_the_request_forces_the_strict_tool_with_the_candidates_numbers(
        db, fake_anthropic):
    fake_anthropic.script("enter")
    rt = runtime(fake_anthropic, advisor_model="claude-haiku-4-5-20251001")
    cycle = new_cycle()

    (review,) = review_entries(rt, cycle, [proposal()], NOW, WORKER)

    assert (review.symbol, review.enter, review.source, review.fallback_why, review.verdict) == (
        "NVDA", True, "advisor", None, "accept")
    assert review.confidence == pytest.approx(0.82) and review.reason.startswith("Clean breakout")
    assert (review.input_tokens, review.output_tokens, review.cost_usd) == (412, 37, pytest.approx(USAGE_COST))
    assert review.model == "claude-haiku-4-5-20251001"

    (sent,) = fake_anthropic.requests
    body = sent.body
    assert body["model"] == "claude-haiku-4-5-20251001" and body["max_tokens"] == 300 and body["system"]
    assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    (tool,) = body["tools"]
    assert tool["name"] == TOOL_NAME and tool["strict"] is True
    schema = tool["input_schema"]
    assert schema["required"] == ["enter", "confidence", "reason"] and schema["additionalProperties"] is False
    assert {k: v["type"] for k, v in schema["properties"].items()} == {"enter": "boolean", "confidence": "number",
                                                                        "reason": "string"}
    assert transform_schema(TOOL["input_schema"]) == TOOL["input_schema"]  # already what strict mode accepts
    prompt = body["messages"][0]["content"]
    for fact in ("BUY 38 NVDA at 131.42", "position 4993.96 USD", "Stop 128.15", "-2.49%", "target 138.0", "+5.01%",
                 "Reward:risk 2.01", "rules score 0.873", "patterns.opening_range_breakout.score: 0.91",
                 "patterns.opening_range_breakout.evidence.range_high: 130.8", "evidence.volume_ratio: 3.4",
                 "indicators.rsi: 64.2", "indicators.vwap: 129.97", "indicators.atr: 1.64",
                 "news.headline: NVDA beats on data-center revenue", "news.age_minutes: 47", "10:00:00-05:00"):
        assert fact in prompt, fact
    assert KEY not in json.dumps(body) and sent.api_key == KEY

    (row,) = decisions(cycle)
    assert (row.kind, row.action, row.symbol, row.cycle_id, row.worker) == ("advisor", "enter", "NVDA", cycle, WORKER)
    assert row.reason == review.reason[:64]
    d = row.details
    assert (d["review"], d["verdict"], d["source"], d["fallback_why"]) == ("entry", "accept", "advisor", None)
    assert d["confidence"] == pytest.approx(0.82) and d["min_confidence"] == 0.6 and d["reason"] == review.reason
    assert (d["input_tokens"], d["output_tokens"], d["cost_usd"]) == (412, 37, pytest.approx(USAGE_COST))
    assert (d["price"], d["qty"], d["stop"], d["target"], d["reward_risk"], d["score"]) == (
        131.42, 38, 128.15, 138.0, 2.01, 0.873)
    row = usage_row()
    assert row.spent_usd == pytest.approx(USAGE_COST) and row.reserved_usd == 0 and row.calls == 1


def test_a_pass_answer_rejects(db, fake_anthropic):
    fake_anthropic.script("pass")
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.verdict, review.fallback_why) == (False, "advisor", "reject", None)
    assert review.reason.startswith("Extended far above VWAP")
    (row,) = decisions(cycle)
    assert (row.kind, row.action, row.details["verdict"], row.details["cost_usd"]) == (
        "advisor", "skip", "reject", pytest.approx(USAGE_COST))


@pytest.mark.parametrize("confidence, enters, verdict", [(0.59, False, "low_confidence"), (0.6, True, "accept"),
                                                         (0.0, False, "low_confidence"), (1, True, "accept")])
def test_an_enter_answer_below_the_minimum_confidence_rejects(db, fake_anthropic, confidence, enters, verdict):
    fake_anthropic.script({"enter": True, "confidence": confidence, "reason": "Decent setup, thin volume."})
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic, entry_review_min_confidence=0.6), cycle, [proposal()], NOW,
                               WORKER)
    assert (review.enter, review.source, review.verdict, review.confidence) == (enters, "advisor", verdict,
                                                                                confidence)
    (row,) = decisions(cycle)
    assert (row.action, row.details["verdict"]) == ("enter" if enters else "skip", verdict)


# Only an answer that is neither yes nor no (no call of the tool, or ``enter`` missing or not a bool) is
# malformed: then the rules verdict stands, recorded as a fallback.
MALFORMED = {
    "text-only": "text_only",
    "other-tool": "wrong_tool",
    "exit-tool-input": "missing_reason",
    "missing-enter": {"confidence": 0.9, "reason": "Looks fine."},
    "enter-string": {"enter": "yes", "confidence": 0.9, "reason": "Fine."},
    "enter-null": {"enter": None, "confidence": 0.9, "reason": "Fine."},
    "enter-number": {"enter": 1, "confidence": 0.9, "reason": "Fine."},
}


@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_answer_falls_back_to_the_rules_verdict_and_is_still_charged(db, fake_anthropic, answer):
    fake_anthropic.script(answer)
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.fallback_why, review.confidence) == (
        True, "fallback", "malformed_answer", None)
    assert (review.input_tokens, review.output_tokens) == (412, 37)
    assert fake_anthropic.calls == 1
    (row,) = decisions(cycle)
    assert (row.kind, row.action, row.details["verdict"], row.details["fallback_why"]) == (
        "advisor", "enter", "fallback", "malformed_answer")
    assert row.details["cost_usd"] == pytest.approx(USAGE_COST)
    assert usage_row().spent_usd == pytest.approx(USAGE_COST) and usage_row().reserved_usd == 0


ODD_VETOES = {  # enter=false is a clear veto whatever the other fields say
    "confidence-percent": ({"enter": False, "confidence": 85, "reason": "Chasing."}, None, "confidence 85"),
    "confidence-just-above-1": ({"enter": False, "confidence": 1.2, "reason": "Chasing."}, None, "confidence 1.2"),
    "confidence-below-0": ({"enter": False, "confidence": -0.1, "reason": "No."}, None, "confidence -0.1"),
    "confidence-string": ({"enter": False, "confidence": "high", "reason": "No."}, None, 'confidence "high"'),
    "confidence-null": ({"enter": False, "confidence": None, "reason": "No."}, None, "confidence null"),
    "missing-confidence": ({"enter": False, "reason": "No."}, None, "no confidence"),
    "blank-reason": ({"enter": False, "confidence": 0.9, "reason": "   "}, 0.9, "no reason"),
    "missing-reason": ({"enter": False, "confidence": 0.9}, 0.9, "no reason"),
    "extra-field": ({"enter": False, "confidence": 0.9, "reason": "No.", "size": 0}, 0.9, "unexpected fields: size"),
}


@pytest.mark.parametrize("answer, confidence, oddity", list(ODD_VETOES.values()), ids=list(ODD_VETOES))
def test_a_clear_veto_is_honoured_whatever_else_the_answer_says(db, fake_anthropic, answer, confidence, oddity):
    fake_anthropic.script(answer)
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.verdict, review.fallback_why, review.confidence) == (
        False, "advisor", "reject", None, confidence)
    assert oddity in review.anomaly
    (row,) = decisions(cycle)
    assert (row.action, row.details["verdict"], row.details["anomaly"]) == ("skip", "reject", review.anomaly)
    assert row.details["cost_usd"] == pytest.approx(USAGE_COST)


@pytest.mark.parametrize("confidence", [85, 1.2])
def test_a_veto_stated_with_a_percentage_confidence_never_becomes_an_entry(db, fake_anthropic, confidence):
    """The reviewer's case: Claude says enter=false but states its confidence as a percentage (85) or slightly
    above 1; the strict schema (no numeric bounds) lets it through."""
    fake_anthropic.confidence = confidence
    fake_anthropic.script("pass")
    (review,) = review_entries(runtime(fake_anthropic), new_cycle(), [proposal()], NOW, WORKER)
    assert review.enter is False, f"{review.verdict} / {review.fallback_why} / {review.reason}"


UNUSABLE_CONFIDENCE = {
    "above-1": 1.5, "percent": 85, "string": "0.9", "bool": True, "null": None, "list": [0.9],
}


@pytest.mark.parametrize("confidence", list(UNUSABLE_CONFIDENCE.values()), ids=list(UNUSABLE_CONFIDENCE))
def test_an_enter_answer_without_a_usable_confidence_is_low_confidence(db, fake_anthropic, confidence):
    fake_anthropic.script({"enter": True, "confidence": confidence, "reason": "Very sure."})
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.verdict, review.fallback_why, review.confidence) == (
        False, "advisor", "low_confidence", None, None)
    assert "confidence" in review.anomaly
    (row,) = decisions(cycle)
    assert (row.action, row.details["verdict"]) == ("skip", "low_confidence")


def test_an_enter_answer_with_no_confidence_at_all_is_low_confidence(db, fake_anthropic):
    fake_anthropic.script({"enter": True, "reason": "Looks fine."})
    (review,) = review_entries(runtime(fake_anthropic), new_cycle(), [proposal()], NOW, WORKER)
    assert (review.enter, review.verdict, review.anomaly) == (False, "low_confidence", "no confidence")


@pytest.mark.parametrize("answer, oddity", [
    ({"enter": True, "confidence": 0.9}, "no reason"),
    ({"enter": True, "confidence": 0.9, "reason": " "}, "no reason"),
    ({"enter": True, "confidence": 0.9, "reason": "Fine.", "size": 100}, "unexpected fields: size"),
], ids=["missing-reason", "blank-reason", "extra-field"])
def test_a_confident_enter_with_an_odd_detail_enters_and_the_oddity_is_recorded(db, fake_anthropic, answer, oddity):
    """What the rules would do anyway (enter), said with enough confidence; the oddity stays on record."""
    fake_anthropic.script(answer)
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.verdict, review.confidence) == (True, "advisor", "accept", 0.9)
    assert review.anomaly == oddity and review.reason
    (row,) = decisions(cycle)
    assert (row.action, row.details["anomaly"]) == ("enter", oddity)


def test_a_database_error_looking_up_an_earlier_review_stops_the_review_instead_of_entering(
        db, fake_anthropic, monkeypatch):
    """Not knowing whether Claude already vetoed this candidate (a retried evaluation) must not become an
    entry: the error reaches the evaluation, nothing is asked, nothing is recorded as entered."""
    from contextlib import contextmanager

    from sqlalchemy.exc import OperationalError

    from catalyst import entry_review

    fake_anthropic.default = "enter"
    cycle = new_cycle()
    fake_anthropic.script("pass")
    (first,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert first.enter is False

    @contextmanager
    def database_away(url=None):
        raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
        yield  # pragma: no cover

    monkeypatch.setattr(entry_review, "session_scope", database_away)
    with pytest.raises(OperationalError):
        review_entries(runtime(fake_anthropic), cycle, [proposal(), proposal("AMD")], NOW, WORKER)
    assert fake_anthropic.calls == 1  # the retry asked nothing: not the vetoed NVDA, not AMD
    monkeypatch.undo()
    assert [(d.symbol, d.action) for d in decisions(cycle)] == [("NVDA", "skip")]


# -- API failures ------------------------------------------------------------------------------------

def test_a_slow_api_times_out_and_the_rules_verdict_stands(db, fake_anthropic):
    # The fake answers after 10x the configured 0.5 s: a timeout fallback shows the advisor timeout applied.
    fake_anthropic.slow_seconds = 5.0
    fake_anthropic.script("slow")
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic, advisor_timeout=0.5), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.fallback_why) == (True, "fallback", "timeout")
    assert fake_anthropic.calls == 1
    assert usage_row().reserved_usd == 0 and usage_row().spent_usd == 0 and usage_row().calls == 1
    (row,) = decisions(cycle)
    assert row.details["fallback_why"] == "timeout" and row.details["cost_usd"] == 0


@pytest.mark.parametrize("failure", ["server_error", "overloaded", "rate_limit"])
def test_an_api_error_is_an_error_fallback_without_retry(db, fake_anthropic, failure):
    fake_anthropic.script(failure, "pass")
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.enter, review.source, review.fallback_why) == (True, "fallback", "error")
    assert fake_anthropic.calls == 1  # the SDK did not retry (a retry would have been answered "pass")
    assert usage_row().reserved_usd == 0 and usage_row().spent_usd == 0
    (row,) = decisions(cycle)
    assert (row.action, row.details["fallback_why"]) == ("enter", "error")


def test_a_request_the_api_refuses_is_an_error_fallback(db, fake_anthropic, monkeypatch):
    # The fake refuses what the real API refuses: a strict schema with numeric bounds is a 400.
    bounded = json.loads(json.dumps(TOOL))
    bounded["input_schema"]["properties"]["confidence"].update(minimum=0, maximum=1)
    monkeypatch.setattr("catalyst.entry_review.TOOL", bounded)
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic), cycle, [proposal()], NOW, WORKER)
    assert (review.source, review.fallback_why) == ("fallback", "error")
    assert fake_anthropic.calls == 1 and usage_row().reserved_usd == 0


# -- gates -------------------------------------------------------------------------------------------

def test_a_budget_too_small_for_one_call_sends_nothing(db, fake_anthropic):
    cycle = new_cycle()
    reviews = review_entries(runtime(fake_anthropic, ai_daily_budget_usd=0.0001), cycle,
                             [proposal("NVDA"), proposal("AMD")], NOW, WORKER)
    assert [(r.enter, r.source, r.fallback_why) for r in reviews] == [(True, "fallback", "over_budget")] * 2
    assert fake_anthropic.calls == 0
    assert usage_row().reserved_usd == 0 and usage_row().calls == 0
    assert {(d.symbol, d.action, d.details["fallback_why"]) for d in decisions(cycle)} == {
        ("NVDA", "enter", "over_budget"), ("AMD", "enter", "over_budget")}


def test_the_exit_advisors_spend_counts_against_the_same_daily_budget(db, fake_anthropic):
    with session_scope() as s:
        s.add(AdvisorUsage(day=DAY, spent_usd=4.9999, reserved_usd=0.0, calls=900, updated_at=NOW))
    cycle = new_cycle()
    (review,) = review_entries(runtime(fake_anthropic, ai_daily_budget_usd=5.0), cycle, [proposal()], NOW, WORKER)
    assert review.fallback_why == "over_budget" and fake_anthropic.calls == 0


def test_the_consult_cap_counts_per_trading_cycle_apart_from_the_exit_advisors_slots(db, fake_anthropic):
    fake_anthropic.default = "enter"
    rt = runtime(fake_anthropic, advisor_max_consults_per_cycle=3)
    cycle = new_cycle()
    reviews = review_entries(rt, cycle, [proposal(s) for s in ("A", "B", "C", "D", "E")], NOW, WORKER)
    assert sorted(r.source for r in reviews) == ["advisor"] * 3 + ["fallback"] * 2
    assert {r.fallback_why for r in reviews if r.source == "fallback"} == {"consult_cap"}
    assert all(r.enter for r in reviews)  # a capped candidate enters as the rules decided
    assert fake_anthropic.calls == 3

    # The exit advisor's monitor slot at the same instant still has all of its consults.
    fake_anthropic.default = "hold"
    exits = [rt.advisor.advise(_advice_request(i)) for i in range(3)]
    assert [a.source for a in exits] == ["advisor"] * 3 and fake_anthropic.calls == 6
    # And the next trading cycle has its own cap.
    fake_anthropic.default = "enter"
    later = review_entries(rt, new_cycle(NOW + timedelta(minutes=30)), [proposal("F")], NOW, WORKER)
    assert later[0].source == "advisor" and fake_anthropic.calls == 7


def test_concurrent_reviews_of_one_cycle_never_send_more_than_the_cap(db, fake_anthropic):
    fake_anthropic.default = "enter"
    rt = runtime(fake_anthropic, advisor_max_consults_per_cycle=3)
    rounds, threads = 20, 4
    for n in range(rounds):
        cycle = new_cycle(NOW + timedelta(minutes=30 * n))
        before = fake_anthropic.calls
        start = threading.Barrier(threads)

        def evaluate(t: int, cycle=cycle, start=start) -> list[EntryReview]:
            start.wait()
            return review_entries(rt, cycle, [proposal(f"S{t}{i}") for i in range(3)], NOW, f"worker-{t}")

        with ThreadPoolExecutor(threads) as pool:
            reviews = [r for batch in pool.map(evaluate, range(threads)) for r in batch]
        assert fake_anthropic.calls - before == 3, f"round {n}"
        assert sorted(r.source for r in reviews) == ["advisor"] * 3 + ["fallback"] * 9, f"round {n}"
        assert {r.fallback_why for r in reviews if r.source == "fallback"} == {"consult_cap"}
        assert len(decisions(cycle)) == 12
    row = usage_row()
    assert row.calls == 3 * rounds and row.reserved_usd == 0
    assert row.spent_usd == pytest.approx(3 * rounds * USAGE_COST)


def test_without_a_key_nothing_is_sent_and_the_rules_verdict_is_recorded(db, fake_anthropic):
    cycle = new_cycle()
    rt = runtime(None, anthropic_api_key=None, anthropic_base_url=fake_anthropic.base_url)
    reviews = review_entries(rt, cycle, [proposal("NVDA"), proposal("AMD")], NOW, WORKER)
    assert [(r.symbol, r.enter, r.source, r.fallback_why) for r in reviews] == [
        ("NVDA", True, "fallback", "no_key"), ("AMD", True, "fallback", "no_key")]
    assert fake_anthropic.calls == 0
    assert [(d.kind, d.action, d.details["fallback_why"], d.details["cost_usd"]) for d in decisions(cycle)] == [
        ("advisor", "enter", "no_key", 0.0)] * 2


def test_when_switched_off_nothing_is_sent_or_recorded(db, fake_anthropic):
    cycle = new_cycle()
    reviews = review_entries(runtime(fake_anthropic, entry_review=False), cycle, [proposal()], NOW, WORKER)
    assert [(r.enter, r.source, r.fallback_why) for r in reviews] == [(True, "fallback", "disabled")]
    assert fake_anthropic.calls == 0 and decisions(cycle) == []


# -- independence, repeats, records, secrets ----------------------------------------------------------

class Unprintable:
    def __str__(self):
        raise RuntimeError("cannot render this detail")


def test_one_candidates_failure_never_affects_another(db, fake_anthropic):
    fake_anthropic.responder = by_symbol({"AAA": "enter", "BBB": "server_error", "CCC": "text_only", "DDD": "pass",
                                          "FFF": {"enter": True, "confidence": 0.95, "reason": "Strong."}})
    cycle = new_cycle()
    proposals = [proposal(s) for s in ("AAA", "BBB", "CCC", "DDD")]
    proposals.insert(2, proposal("EEE", details={"odd": Unprintable()}))  # its prompt cannot even be built
    proposals.append(proposal("FFF"))
    reviews = review_entries(runtime(fake_anthropic), cycle, proposals, NOW, WORKER)
    assert [(r.symbol, r.enter, r.source, r.fallback_why) for r in reviews] == [
        ("AAA", True, "advisor", None), ("BBB", True, "fallback", "error"), ("EEE", True, "fallback", "error"),
        ("CCC", True, "fallback", "malformed_answer"), ("DDD", False, "advisor", None),
        ("FFF", True, "advisor", None)]
    assert fake_anthropic.calls == 5
    assert sorted((d.symbol, d.action) for d in decisions(cycle)) == [
        ("AAA", "enter"), ("BBB", "enter"), ("CCC", "enter"), ("DDD", "skip"), ("EEE", "enter"), ("FFF", "enter")]


def test_reviewing_a_cycle_again_repeats_the_first_answers_without_asking(db, fake_anthropic):
    fake_anthropic.responder = by_symbol({"NVDA": "enter", "AMD": "pass"})
    rt = runtime(fake_anthropic)
    cycle = new_cycle()
    first = review_entries(rt, cycle, [proposal("NVDA"), proposal("AMD")], NOW, WORKER)
    fake_anthropic.responder = by_symbol({"NVDA": "pass", "AMD": "enter"})
    again = review_entries(rt, cycle, [proposal("NVDA"), proposal("AMD")], NOW, WORKER)
    assert again == first and [r.enter for r in again] == [True, False]
    assert fake_anthropic.calls == 2 and len(decisions(cycle)) == 2


def test_decisions_rows_add_up_to_the_days_spend_and_count_the_workers_calls(db, fake_anthropic):
    with session_scope() as s:
        s.add(ServiceHealth(service_name=WORKER, kind="worker", status="ok", started_at=NOW, last_heartbeat=NOW,
                            checks=0, positions_checked=0, exits_executed=0, advisor_calls=0, errors=0))
    fake_anthropic.responder = by_symbol({"AAA": "enter", "BBB": "pass", "CCC": "text_only", "DDD": "server_error"})
    fake_anthropic.usage = {"input_tokens": 800, "output_tokens": 60}
    rt = runtime(fake_anthropic, advisor_max_consults_per_cycle=4)
    cycle = new_cycle()
    review_entries(rt, cycle, [proposal(s) for s in ("AAA", "BBB", "CCC", "DDD", "EEE")], NOW, WORKER)
    rows = decisions(cycle)
    cost = (800 * 1.0 + 60 * 5.0) / 1e6
    assert sorted((d.symbol, d.details["cost_usd"]) for d in rows) == [
        ("AAA", pytest.approx(cost)), ("BBB", pytest.approx(cost)), ("CCC", pytest.approx(cost)), ("DDD", 0.0),
        ("EEE", 0.0)]
    assert sum(d.details["cost_usd"] for d in rows) == pytest.approx(usage_row().spent_usd)
    assert sum(d.details["input_tokens"] for d in rows) == 3 * 800
    with session_scope() as s:
        assert s.get(ServiceHealth, WORKER).advisor_calls == 4  # EEE hit the cap: no call


def test_no_secret_reaches_the_prompt_or_the_records(db, fake_anthropic):
    fake_anthropic.script("enter")
    cycle = new_cycle()
    leaky = proposal(details={"news": {"headline": f"echo {KEY} and {ALPACA_SECRET}"},
                              "api_key": "sk-should-never-be-sent", "indicators": {"rsi": 61.0}})
    (review,) = review_entries(runtime(fake_anthropic), cycle, [leaky], NOW, WORKER)
    assert review.source == "advisor"
    sent = json.dumps(fake_anthropic.requests[0].body)
    for secret in (KEY, ALPACA_SECRET, "sk-should-never-be-sent"):
        assert secret not in sent
        assert secret not in json.dumps([d.details for d in decisions(cycle)])
    assert "indicators.rsi: 61.0" in sent


def test_the_fake_refuses_a_tool_choice_for_a_tool_it_was_not_given(fake_anthropic):
    import anthropic

    client = anthropic.Anthropic(api_key=KEY, base_url=fake_anthropic.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}],
                               tools=[TOOL], tool_choice={"type": "tool", "name": "exit_decision"})
    answer = client.messages.create(model="claude-haiku-4-5", max_tokens=50,
                                    messages=[{"role": "user", "content": "x"}], tools=[TOOL],
                                    tool_choice={"type": "tool", "name": TOOL_NAME})
    (block,) = answer.content
    assert block.type == "tool_use" and block.name == TOOL_NAME and answer.stop_reason == "tool_use"
    assert answer.usage.input_tokens == 412


def _advice_request(position_id: int) -> AdviceRequest:
    return AdviceRequest(position_id=position_id, symbol="NVDA", qty=10, entry_price=120.0, price=127.9, pnl_pct=6.58,
                         high_watermark=131.2, opened_at=NOW - timedelta(minutes=30), held_minutes=30.0,
                         entry_reason="momentum", signals=[], indicators={}, slot_at=NOW, market_day=DAY)


def test_the_entry_gate_keys_are_apart_from_any_monitor_slot(db):
    assert advisor_budget.entry_review_gate(1) != advisor_budget.entry_review_gate(2)
    assert advisor_budget.grant_consult(advisor_budget.entry_review_gate(1), 1)
    assert not advisor_budget.grant_consult(advisor_budget.entry_review_gate(1), 1)
    assert advisor_budget.grant_consult(advisor_budget.entry_review_gate(2), 1), "each cycle has its own cap"
    assert advisor_budget.grant_consult(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), 1), "apart from monitor slots"


# -- wired into evaluate_cycle ---------------------------------------------------------------------

def test_evaluate_cycle_turns_a_veto_into_an_advisor_rejected_skip_and_a_fallback_into_the_rules_entry(
        db, fake_anthropic):
    from catalyst import cycles
    from catalyst.db.models import ScanResult
    from catalyst.records import security_id

    fake_anthropic.responder = by_symbol({"AAA": "enter", "BBB": "pass", "CCC": "server_error"})
    rt = runtime(fake_anthropic)
    cycle = new_cycle()
    with session_scope() as s:
        for rank, symbol in enumerate(("AAA", "BBB", "CCC"), 1):
            s.add(ScanResult(cycle_id=cycle, security_id=security_id(s, symbol, "XNYS"), symbol=symbol, rank=rank,
                             score=5.0 - rank, price=50.0, change_pct=3.0, volume=1e6, relative_volume=2.0, rsi=60.0,
                             catalyst=f"{symbol} wins a contract",
                             details={"patterns": {"vwap_reclaim": {"score": 0.7, "evidence": {"vwap": 49.6}}},
                                      "news": {"headline": f"{symbol} wins a contract", "age_minutes": 12}},
                             created_at=NOW))

    planned = cycles.evaluate_cycle(rt, cycle, WORKER)

    assert [p.symbol for p in planned] == ["AAA", "CCC"]
    rows = decisions(cycle)
    evaluated = {d.symbol: d for d in rows if d.kind == "evaluate"}
    assert (evaluated["AAA"].action, evaluated["BBB"].action, evaluated["CCC"].action) == ("enter", "skip", "enter")
    assert evaluated["BBB"].reason == "advisor_rejected"
    assert evaluated["BBB"].details["review"]["verdict"] == "reject"
    assert evaluated["CCC"].details["review"]["fallback_why"] == "error"
    assert sorted((d.symbol, d.action) for d in rows if d.kind == "advisor") == [
        ("AAA", "enter"), ("BBB", "skip"), ("CCC", "enter")]
    prompts = " ".join(r.body["messages"][0]["content"] for r in fake_anthropic.requests)
    for fact in ("patterns.vwap_reclaim.evidence.vwap: 49.6", "news.age_minutes: 12", "Reward:risk 3.0"):
        assert fact in prompts, fact

    assert cycles.evaluate_cycle(rt, cycle, WORKER) == planned  # the first answer again, nothing asked
    assert fake_anthropic.calls == 3
