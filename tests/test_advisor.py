"""The Claude exit advisor: the real ``anthropic`` SDK against a local fake Messages API, and the
consult/budget gate in a real PostgreSQL database (plus the gate's concurrency on SQLite).

Every failure mode must become the configured rules fallback with its cause, cost at most one
request and ``advisor_timeout`` seconds, and settle the budget (release the reservation, charge
what the API reported). The API key never shows up in advice, logs or output.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from structlog.testing import capture_logs

from catalyst import advisor_budget
from catalyst.advisor import (
    TOOL_NAME,
    Advice,
    AdviceRequest,
    ClaudeAdvisor,
    RulesAdvisor,
    build_advisor,
)
from catalyst.db.engine import dispose_all, session_scope, upgrade
from catalyst.db.models import AdvisorUsage
from catalyst.settings import load_settings
from tests.fake_anthropic import FakeAnthropic, fake_anthropic  # noqa: F401 - the fixture
from tests.support import environment

pytestmark = pytest.mark.postgres

KEY = "sk-ant-api03-TEST-" + "k3yMaterial" * 4
SLOT = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)
DAY = "2025-03-04"
USAGE_COST = (412 * 1.0 + 37 * 5.0) / 1e6  # the fake's default usage at the default prices


@pytest.fixture
def db(pg_url):
    with environment({"DATABASE_URL": pg_url}):
        yield pg_url


def make_advisor(api: FakeAnthropic | None, **overrides):
    settings = {"anthropic_api_key": KEY, "anthropic_base_url": api.base_url if api else None,
                "advisor_timeout": 5.0, **overrides}
    return build_advisor(load_settings(**settings))


def request(position_id: int = 7, slot: datetime = SLOT, day: str = DAY) -> AdviceRequest:
    opened = SLOT - timedelta(minutes=95)
    return AdviceRequest(
        position_id=position_id, symbol="NVDA", qty=10, entry_price=120.0, price=127.9, pnl_pct=6.58,
        high_watermark=131.2, opened_at=opened, held_minutes=95.0, entry_reason="earnings beat, volume 4.2x",
        signals=[{"name": "take_profit", "strength": "MODERATE", "value": 6.58, "threshold": 6.0,
                  "detail": "P&L above +6%"},
                 {"name": "rsi_overbought", "strength": "MODERATE", "value": 77.3, "threshold": 75.0, "detail": None}],
        indicators={"rsi": 77.3, "macd_hist": -0.12, "vwap": 126.4, "atr": 1.9, "volume_ratio": 0.55, "macd": None},
        slot_at=slot, market_day=day)


def usage_row(day: str = DAY):
    with session_scope() as s:
        return s.get(AdvisorUsage, day)


# -- answers -----------------------------------------------------------------------------------------

def test_an_exit_answer_is_advice_with_tokens_cost_and_latency(db, fake_anthropic):
    fake_anthropic.script("exit")
    advisor = make_advisor(fake_anthropic)
    assert isinstance(advisor, ClaudeAdvisor)

    advice = advisor.advise(request())

    assert advice.exit is True and advice.source == "advisor" and advice.fallback_cause is None
    assert "VWAP" in advice.reason
    assert advice.model == "claude-haiku-4-5"
    assert (advice.input_tokens, advice.output_tokens) == (412, 37)
    assert advice.cost_usd == pytest.approx(USAGE_COST)
    assert advice.latency_ms > 0
    row = usage_row()
    assert row.spent_usd == pytest.approx(USAGE_COST) and row.reserved_usd == 0 and row.calls == 1
    assert advisor_budget.spent_today(DAY) == pytest.approx(USAGE_COST)

    (sent,) = fake_anthropic.requests
    assert sent.path == "/v1/messages" and sent.api_key == KEY
    body = sent.body
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 300 and body["system"]
    assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    (tool,) = body["tools"]
    assert tool["name"] == TOOL_NAME and tool["strict"] is True
    assert tool["input_schema"] == {"type": "object", "properties": {"exit": {"type": "boolean"},
                                                                    "reason": {"type": "string"}},
                                    "required": ["exit", "reason"], "additionalProperties": False}
    (message,) = body["messages"]
    prompt = message["content"]
    assert message["role"] == "user" and "LONG" in prompt
    for fact in ("NVDA", "120.0", "127.9", "+6.58%", "131.2", "earnings beat, volume 4.2x", "take_profit",
                 "MODERATE", "6.0", "rsi_overbought", "77.3", "75.0", "macd_hist=-0.12", "vwap=126.4", "macd=n/a",
                 "95 min"):
        assert fact in prompt, fact
    assert KEY not in json.dumps(body)


def test_the_exit_tool_is_already_in_the_form_strict_mode_accepts():
    from anthropic.lib._parse._transform import transform_schema

    from catalyst.advisor import TOOL

    assert transform_schema(TOOL["input_schema"]) == TOOL["input_schema"]


def test_a_hold_answer_is_advice_not_to_exit(db, fake_anthropic):
    fake_anthropic.script("hold")
    advice = make_advisor(fake_anthropic).advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause) == (False, "advisor", None)
    assert advice.reason.startswith("Signals are moderate")


@pytest.mark.parametrize("answer", ["missing_reason", "text_only", {"exit": "yes", "reason": "string, not bool"},
                                    {"exit": True, "reason": "  "}, {"exit": True, "reason": "x", "extra": 1}],
                         ids=["missing-reason", "text-only", "exit-not-bool", "blank-reason", "extra-field"])
def test_a_malformed_answer_falls_back_to_hold_but_is_still_charged(db, fake_anthropic, answer):
    fake_anthropic.script(answer)
    advice = make_advisor(fake_anthropic).advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause) == (False, "fallback", "malformed_answer")
    assert (advice.input_tokens, advice.output_tokens) == (412, 37)
    row = usage_row()
    assert row.spent_usd == pytest.approx(USAGE_COST) and row.reserved_usd == 0
    assert fake_anthropic.calls == 1


# -- API failures ------------------------------------------------------------------------------------

def test_a_429_is_rate_limited_and_never_retried(db, fake_anthropic):
    fake_anthropic.script("rate_limit", "exit")
    advisor = make_advisor(fake_anthropic)
    advice = advisor.advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause) == (False, "fallback", "rate_limited")
    # One request: the SDK did not honour retry-after and send again (a retry would have been
    # answered "exit" and come back as advice, not as the rate-limited fallback).
    assert fake_anthropic.calls == 1
    row = usage_row()
    assert row.spent_usd == 0 and row.reserved_usd == 0 and row.calls == 1
    # The scripted "exit" was still waiting for a request: the next consult is the one that gets it.
    nxt = advisor.advise(request(position_id=8))
    assert (nxt.exit, nxt.source) == (True, "advisor") and fake_anthropic.calls == 2


def test_a_slow_api_times_out_within_the_timeout(db, fake_anthropic):
    # The fake answers after 10x the configured 0.5 s, and well before the 15 s default timeout or
    # the SDK's own 600 s: a timeout fallback (rather than the fake's "hold" answer) shows the 0.5 s
    # was the one applied, without timing the call.
    fake_anthropic.slow_seconds = 5.0
    fake_anthropic.script("slow")
    advisor = make_advisor(fake_anthropic, advisor_timeout=0.5)
    advice = advisor.advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause) == (False, "fallback", "timeout")
    assert advice.latency_ms >= 400                # it did wait for the answer before giving up
    assert fake_anthropic.calls == 1               # and did not try again
    assert usage_row().reserved_usd == 0 and usage_row().spent_usd == 0


def test_a_server_error_is_an_api_error_without_retry(db, fake_anthropic):
    fake_anthropic.script("server_error", "exit")
    advice = make_advisor(fake_anthropic).advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause) == (False, "fallback", "api_error")
    assert fake_anthropic.calls == 1
    assert usage_row().reserved_usd == 0


def test_an_unreachable_api_is_an_api_error(db):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    advisor = build_advisor(load_settings(anthropic_api_key=KEY, anthropic_base_url=f"http://127.0.0.1:{port}"))
    advice = advisor.advise(request())
    assert (advice.source, advice.fallback_cause) == ("fallback", "api_error")
    assert usage_row().reserved_usd == 0


# -- gates -------------------------------------------------------------------------------------------

def test_a_budget_too_small_for_one_call_sends_nothing(db, fake_anthropic):
    advice = make_advisor(fake_anthropic, ai_daily_budget_usd=0.0001).advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause) == (False, "fallback", "over_budget")
    assert fake_anthropic.calls == 0
    assert usage_row().reserved_usd == 0


def test_a_spent_day_sends_nothing_and_the_next_day_has_budget_again(db, fake_anthropic):
    with session_scope() as s:
        s.add(AdvisorUsage(day=DAY, spent_usd=4.9999, reserved_usd=0.0, calls=900, updated_at=SLOT))
    advisor = make_advisor(fake_anthropic, ai_daily_budget_usd=5.0)
    advice = advisor.advise(request())
    assert advice.fallback_cause == "over_budget" and fake_anthropic.calls == 0
    assert advisor_budget.spent_today(DAY) == pytest.approx(4.9999)

    fake_anthropic.script("exit")
    tomorrow = advisor.advise(request(slot=SLOT + timedelta(days=1), day="2025-03-05"))
    assert tomorrow.source == "advisor" and fake_anthropic.calls == 1


def test_the_sixth_consult_in_a_cycle_is_refused_and_a_new_cycle_gets_consults_again(db, fake_anthropic):
    advisor = make_advisor(fake_anthropic)
    answers = [advisor.advise(request(position_id=i)) for i in range(6)]
    assert [a.source for a in answers] == ["advisor"] * 5 + ["fallback"]
    assert answers[-1].fallback_cause == "cycle_limit"
    assert fake_anthropic.calls == 5
    assert usage_row().calls == 5

    nxt = advisor.advise(request(position_id=99, slot=SLOT + timedelta(minutes=1)))
    assert nxt.source == "advisor" and fake_anthropic.calls == 6


def test_ten_threads_in_one_cycle_get_exactly_five_consults(db, fake_anthropic):
    advisor = make_advisor(fake_anthropic)
    start = threading.Barrier(10)

    def consult(i: int) -> Advice:
        start.wait()
        return advisor.advise(request(position_id=i))

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(consult, range(10)))
    assert sorted(a.source for a in answers) == ["advisor"] * 5 + ["fallback"] * 5
    assert {a.fallback_cause for a in answers if a.source == "fallback"} == {"cycle_limit"}
    assert fake_anthropic.calls == 5
    row = usage_row()
    assert row.calls == 5 and row.reserved_usd == 0 and row.spent_usd == pytest.approx(5 * USAGE_COST)


def _race(fn, n: int = 10) -> list:
    start = threading.Barrier(n)

    def run(_):
        start.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_the_gate_is_atomic_under_concurrency_on_postgresql(db):
    assert sum(_race(lambda: advisor_budget.grant_consult(SLOT, 5))) == 5
    assert sum(_race(lambda: advisor_budget.reserve(DAY, 1.0, 3.0))) == 3
    assert advisor_budget.reserved_today(DAY) == pytest.approx(3.0)
    advisor_budget.settle(DAY, 1.0, 0.25)
    assert (advisor_budget.reserved_today(DAY), advisor_budget.spent_today(DAY)) == (pytest.approx(2.0), 0.25)
    assert advisor_budget.reserve(DAY, 0.75, 3.0) and not advisor_budget.reserve(DAY, 0.01, 3.0)


def test_the_gate_is_atomic_under_concurrency_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'gate.sqlite'}"
    upgrade(url)
    try:
        assert sum(_race(lambda: advisor_budget.grant_consult(SLOT, 5, url))) == 5
        assert sum(_race(lambda: advisor_budget.reserve(DAY, 1.0, 3.0, url))) == 3
        advisor_budget.settle(DAY, 1.0, 0.5, url)
        assert advisor_budget.spent_today(DAY, url) == 0.5
        assert advisor_budget.reserved_today(DAY, url) == pytest.approx(2.0)
    finally:
        dispose_all()


# -- no key, fallback mode, secrets ------------------------------------------------------------------

def test_without_a_key_the_rules_advisor_falls_back_without_any_request(fake_anthropic):
    advisor = build_advisor(load_settings(anthropic_api_key=None, anthropic_base_url=fake_anthropic.base_url))
    assert isinstance(advisor, RulesAdvisor)
    advice = advisor.advise(request())
    assert (advice.exit, advice.source, advice.fallback_cause, advice.model) == (False, "fallback", "no_key", None)
    assert fake_anthropic.calls == 0
    exiting = build_advisor(load_settings(anthropic_api_key=None, advisor_fallback="exit")).advise(request())
    assert (exiting.exit, exiting.fallback_cause) == (True, "no_key")


def test_the_exit_fallback_setting_makes_every_fallback_exit(db, fake_anthropic):
    fake_anthropic.script("server_error", "text_only")
    advisor = make_advisor(fake_anthropic, advisor_fallback="exit", advisor_max_consults_per_cycle=2)
    causes = [advisor.advise(request(position_id=i)) for i in range(3)]
    assert [(a.exit, a.fallback_cause) for a in causes] == [(True, "api_error"), (True, "malformed_answer"),
                                                            (True, "cycle_limit")]
    over = make_advisor(fake_anthropic, advisor_fallback="exit", ai_daily_budget_usd=0).advise(
        request(slot=SLOT + timedelta(minutes=5)))
    assert (over.exit, over.fallback_cause) == (True, "over_budget")
    fake_anthropic.script("hold")  # a real answer still wins over the fallback mode
    held = advisor.advise(request(slot=SLOT + timedelta(minutes=10)))
    assert (held.exit, held.source) == (False, "advisor")


def test_the_api_key_never_reaches_advice_logs_or_output(db, fake_anthropic, capfd, caplog):
    from catalyst.logs import configure_logging

    fake_anthropic.script("exit", "missing_reason", "rate_limit", "server_error", "slow")
    fake_anthropic.slow_seconds = 5.0  # 10x the timeout: the "slow" request always ends as a timeout
    advisor = make_advisor(fake_anthropic, advisor_timeout=0.5)
    assert KEY not in repr(advisor) and KEY not in str(advisor)
    caplog.set_level(logging.DEBUG)  # the SDK's own stdlib logging, at its chattiest
    answers = []
    with capture_logs() as events:
        answers += [advisor.advise(request(position_id=i)) for i in range(6)]
    configure_logging("DEBUG", "worker", persist=False)  # the JSON renderer a worker uses
    try:
        answers += [advisor.advise(request(position_id=10 + i, slot=SLOT + timedelta(minutes=1))) for i in range(2)]
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    out, err = capfd.readouterr()
    assert "Request options" in caplog.text  # the SDK really logged at DEBUG

    assert [a.fallback_cause for a in answers[:6]] == [None, "malformed_answer", "rate_limited", "api_error",
                                                      "timeout", "cycle_limit"]
    assert [e["event"] for e in events] == ["advisor_consulted"] + ["advisor_fallback"] * 5
    assert "advisor_consulted" in err + out and "advisor_fallback" not in err + out  # default answer: hold
    for text in [json.dumps([a.as_dict() for a in answers]), repr(answers), repr(events), out, err, caplog.text]:
        assert KEY not in text
        assert KEY[-12:] not in text
    assert all(r.api_key == KEY for r in fake_anthropic.requests)  # it was really sent, only to the API
    assert set(answers[0].as_dict()) == {"exit", "reason", "source", "fallback_cause", "model", "input_tokens",
                                         "output_tokens", "cost_usd", "latency_ms"}
