"""Optional Claude review of a cycle's final entry candidates (``settings.entry_review``).

The rules have already screened, sized and risk-checked each candidate; Claude may only veto.
A candidate enters when Claude answers ``enter: true`` with a confidence of at least
``entry_review_min_confidence``. ``enter: false`` is a veto whatever the other fields say (a
confidence of 85 or 1.2, no reason); ``enter: true`` without a usable confidence (outside 0..1,
not a number, missing) is ``low_confidence``, no entry. Such oddities are kept with the review.
Whenever Claude cannot answer — no key, the consult cap, the daily budget, a timeout, an API
error, no call of the tool, or ``enter`` missing or not a boolean — the rules verdict stands (the
candidate enters), recorded as a fallback with its why.

Reviews run under the exit advisor's gates (:class:`catalyst.advisor.ClaudeConsultant`): the
same SDK client, timeout, daily USD budget and cost accounting. The consult cap
(``advisor_max_consults_per_cycle``) counts per trading cycle, apart from the monitor's slots,
so a scan never uses up the consults an exit needs. Each review is one ``decisions`` row
(kind ``advisor``, like the exit advisor's, with the cycle id); a repeated review of a cycle's
symbol returns its first answer instead of asking again. No review can break another: each one
runs on its own and every failure becomes that candidate's fallback — except a database error
looking up that first answer, which is raised: not knowing whether Claude already vetoed the
candidate must never turn into its entry (the evaluation fails and nothing of it enters).
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import select

from catalyst import advisor_budget
from catalyst.advisor import ClaudeAdvisor, ClaudeConsultant, loggable, num_text
from catalyst.db.engine import session_scope
from catalyst.db.models import Decision
from catalyst.records import bump, record_decision

log = structlog.get_logger("catalyst.entry_review")

Verdict = Literal["accept", "reject", "low_confidence", "fallback"]
FallbackWhy = Literal["disabled", "no_key", "over_budget", "consult_cap", "timeout", "error", "malformed_answer"]
# The shared consult's causes, in the entry review's words.
_WHY = {"cycle_limit": "consult_cap", "over_budget": "over_budget", "timeout": "timeout", "rate_limited": "error",
        "api_error": "error", "malformed_answer": "malformed_answer"}
NOT_CALLED = ("disabled", "no_key", "consult_cap", "over_budget")  # these sent no request

TOOL_NAME = "entry_decision"
# Strict tool use cannot express numeric bounds (the API refuses minimum/maximum with strict: true;
# the SDK's transform_schema moves them into the description), so the range is stated in the
# description and checked here: a confidence outside 0..1 cannot let an entry through.
TOOL = {
    "name": TOOL_NAME,
    "description": "Record the review of this long entry candidate: enter=true lets the planned order go, "
                   "enter=false vetoes it. confidence: how sure you are of that call, from 0 to 1. "
                   "reason: one short sentence naming the deciding factors.",
    "strict": True,
    "input_schema": {
        "type": "object",
        "properties": {
            "enter": {"type": "boolean"},
            "confidence": {"type": "number", "description": "0 (a guess) to 1 (certain), inclusive"},
            "reason": {"type": "string"},
        },
        "required": ["enter", "confidence", "reason"],
        "additionalProperties": False,
    },
}
SYSTEM_PROMPT = (
    "You review entries for an automated intraday US equity trading system that only buys (goes LONG). "
    "Its rules have already screened, sized and risk-checked this candidate; you may let the entry go "
    "or veto it. Judge the quality of the setup from the numbers given: the pattern evidence, the "
    "indicators, the news catalyst and its age, the stop and target and the reward:risk. Veto chases, "
    "stale or missing catalysts and weak evidence; protecting capital matters more than taking every "
    "trade. Answer only by calling entry_decision."
)
MAX_REASON_CHARS = 500
MAX_DETAIL_LINES = 60
MAX_TEXT_CHARS = 200
_SECRET_WORDS = ("secret", "password", "api_key", "apikey", "token", "credential", "authorization")


@dataclass(frozen=True)
class EntryProposal:
    """What the model judges: the sized entry and the stored numbers that made it a candidate."""

    symbol: str
    price: float
    qty: int
    stop: float
    target: float
    reward_risk: float | None
    score: float | None  # the rules score
    details: dict[str, Any] = field(default_factory=dict)  # pattern evidence, indicators, news headline and age
    rank: int | None = None


@dataclass(frozen=True)
class EntryReview:
    symbol: str
    enter: bool
    confidence: float | None  # the model's; None when it gave no usable answer
    reason: str
    source: Literal["advisor", "fallback"]
    fallback_why: FallbackWhy | None = None
    verdict: Verdict = "fallback"
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    anomaly: str | None = None  # what was odd about an answer that still decided (a veto said with confidence 85)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values for a ``decisions`` row."""
        return asdict(self)


def review_entries(rt, cycle_id: int, proposals: list[EntryProposal], now: datetime,
                   worker: str | None) -> list[EntryReview]:
    """One review per proposal, in order; each accept and reject is recorded in ``decisions``."""
    settings = rt.settings
    if not proposals:
        return []
    if not settings.entry_review:
        return [_fallback(p, "disabled") for p in proposals]
    advisor = rt.advisor
    claude = advisor.claude if isinstance(advisor, ClaudeAdvisor) else None
    day = now.astimezone(rt.calendar.tz).date().isoformat()
    secrets = _secrets(settings, claude)

    def one(proposal: EntryProposal) -> EntryReview:
        return _review_one(claude, cycle_id, proposal, now, day, settings.entry_review_min_confidence, secrets,
                           worker, rt.calendar.tz)

    workers = max(1, min(len(proposals), settings.advisor_max_consults_per_cycle or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="entry-review") as pool:
        return list(pool.map(one, proposals))


def _review_one(claude: ClaudeConsultant | None, cycle_id: int, proposal: EntryProposal, now: datetime, day: str,
                min_confidence: float, secrets: list[str], worker: str | None, tz) -> EntryReview:
    """Review one candidate; whatever goes wrong becomes this candidate's fallback, except a database
    error looking up an earlier review (raised: it may hold a veto)."""
    previous = _previous_review(cycle_id, proposal.symbol)
    if previous is not None:
        return previous
    try:
        if claude is None:
            review = _fallback(proposal, "no_key")
        else:
            prompt = scrub(build_prompt(proposal, now.astimezone(tz)), secrets)
            got = claude.consult(gate=advisor_budget.entry_review_gate(cycle_id), day=day, system=SYSTEM_PROMPT,
                                 prompt=prompt, tool=TOOL)
            answer = answer_of(got.answer) if got.answer is not None else None
            if got.cause is not None or answer is None:
                review = _fallback(proposal, _WHY.get(got.cause or "malformed_answer", "error"), got.spend,
                                   detail=got.detail)
            else:
                verdict = ("reject" if not answer.enter
                           else "accept" if answer.confidence is not None and answer.confidence >= min_confidence
                           else "low_confidence")
                anomaly = scrub(answer.anomaly, secrets) if answer.anomaly else None
                review = EntryReview(proposal.symbol, verdict == "accept", answer.confidence,
                                     scrub(answer.reason, secrets), "advisor", None, verdict, **got.spend,
                                     anomaly=anomaly)
                if anomaly:
                    log.warning("entry_review_odd_answer", cycle_id=cycle_id, symbol=proposal.symbol,
                                verdict=verdict, anomaly=anomaly)
    except Exception as exc:  # noqa: BLE001 - one candidate's trouble never reaches another's review
        log.error("entry_review_failed", cycle_id=cycle_id, symbol=proposal.symbol, error=type(exc).__name__,
                  message=scrub(str(exc)[:200], secrets))
        review = _fallback(proposal, "error")
    _record(cycle_id, proposal, review, now, min_confidence, worker)
    return review


# -- the question --------------------------------------------------------------------------------------

def build_prompt(p: EntryProposal, now: datetime) -> str:
    """The user message: the sized entry, its risk and reward, the rules score and the stored evidence."""
    risk = p.price - p.stop
    reward = p.target - p.price
    rank = f" #{p.rank}" if p.rank is not None else ""
    lines = [
        f"Entry candidate{rank}: BUY {p.qty} {p.symbol} at {num_text(p.price)} "
        f"(position {num_text(round(p.qty * p.price, 2))} USD) at {now.isoformat()}",
        f"Stop {num_text(p.stop)} ({_pct(-risk, p.price)} from entry); "
        f"target {num_text(p.target)} ({_pct(reward, p.price)})",
        f"Reward:risk {num_text(p.reward_risk)}; rules score {num_text(p.score)}",
        "Evidence:",
    ]
    evidence = list(_flatten(p.details))
    if not evidence:
        evidence = ["(none recorded)"]
    if len(evidence) > MAX_DETAIL_LINES:
        evidence = evidence[:MAX_DETAIL_LINES] + [f"... {len(evidence) - MAX_DETAIL_LINES} more omitted"]
    lines += [f"- {line}" for line in evidence]
    lines.append("Enter or veto? Call entry_decision.")
    return "\n".join(lines)


def _pct(delta: float, base: float) -> str:
    return f"{delta / base * 100:+.2f}%" if base else "n/a"


def _flatten(value: Any, prefix: str = "", depth: int = 0):
    """``key.sub: value`` lines of a details dict (secret-looking keys left out)."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            name = str(key)
            if any(word in name.lower() for word in _SECRET_WORDS):
                continue
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value[key], dict) and depth < 3:
                yield from _flatten(value[key], path, depth + 1)
            else:
                yield f"{path}: {_text(value[key])}"
    else:
        yield f"{prefix or 'value'}: {_text(value)}"


def _text(value: Any) -> str:
    if isinstance(value, float) or value is None:
        return num_text(value)
    if isinstance(value, (list, tuple)):
        text = ", ".join(_text(v) for v in value)
    elif isinstance(value, (dict, str)):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "..."


def _secrets(settings, claude: ClaudeConsultant | None) -> list[str]:
    """Every secret this process knows (settings hidden from repr, the SDK's key), longest first."""
    found = {getattr(settings, name) for name, f in type(settings).model_fields.items() if f.repr is False}
    found.add(claude.secret if claude else None)
    return sorted((s for s in found if isinstance(s, str) and len(s) >= 6), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# -- the answer ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """The model's call. ``confidence`` is None when it gave none usable; ``anomaly`` names what was odd."""

    enter: bool
    confidence: float | None
    reason: str
    anomaly: str | None = None


FIELDS = ("enter", "confidence", "reason")


def answer_of(args: dict) -> Answer | None:
    """The call in the tool input, or None when it is neither yes nor no (``enter`` missing or not a bool).

    Everything else decides anyway, on the safe side: ``enter: false`` is a veto whatever the other
    fields say, and ``enter: true`` needs a confidence from 0 to 1 to be weighed at all.
    """
    if not isinstance(args, dict) or not isinstance(args.get("enter"), bool):
        return None
    enter, odd = args["enter"], []
    extra = sorted(str(k) for k in args if k not in FIELDS)
    if extra:
        odd.append("unexpected fields: " + ", ".join(extra)[:200])
    confidence = args.get("confidence")
    if "confidence" not in args:
        odd.append("no confidence")
        confidence = None
    elif (isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isfinite(confidence)
          or not 0 <= confidence <= 1):
        odd.append(f"confidence {_shown(confidence)} is not a number from 0 to 1")
        confidence = None
    else:
        confidence = float(confidence)
    reason = args.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        odd.append("no reason")
        reason = "vetoed without a reason" if not enter else "entry approved without a reason"
    return Answer(enter, confidence, reason.strip()[:MAX_REASON_CHARS], "; ".join(odd) or None)


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:40] + "..."


def _fallback(p: EntryProposal, why: FallbackWhy, spend: dict | None = None, detail: str | None = None) -> EntryReview:
    review = EntryReview(p.symbol, True, None, f"entry review unavailable ({why}); rules verdict: enter", "fallback",
                         why, "fallback", **(spend or {}))
    if why != "disabled":
        log.warning("entry_review_fallback", symbol=p.symbol, why=why, **({"detail": detail} if detail else {}),
                    **loggable(spend or {}))
    return review


# -- the record ----------------------------------------------------------------------------------------

def _record(cycle_id: int, p: EntryProposal, review: EntryReview, now: datetime, min_confidence: float,
            worker: str | None) -> None:
    """The review as a ``decisions`` row (kind ``advisor``); a failure to record is logged, not raised."""
    if review.fallback_why == "disabled":
        return
    details = {**review.as_dict(), "review": "entry", "min_confidence": min_confidence,
               "price": p.price, "qty": p.qty, "stop": p.stop, "target": p.target, "reward_risk": p.reward_risk,
               "score": p.score}
    try:
        with session_scope() as s:
            record_decision(s, kind="advisor", action="enter" if review.enter else "skip", reason=review.reason[:64],
                            symbol=p.symbol, cycle_id=cycle_id, decided_at=now, worker=worker, details=details)
            bump(s, worker, advisor_calls=int(review.fallback_why not in NOT_CALLED))
    except Exception as exc:  # noqa: BLE001 - the review stands even if the audit row could not be written
        log.error("entry_review_unrecorded", cycle_id=cycle_id, symbol=p.symbol, error=type(exc).__name__)
        return
    spend = {k: v for k, v in review.as_dict().items() if k in ("cost_usd", "input_tokens", "output_tokens")}
    log.info("entry_reviewed", cycle_id=cycle_id, symbol=p.symbol, enter=review.enter, verdict=review.verdict,
             confidence=review.confidence, source=review.source, why=review.fallback_why, reason=review.reason,
             **loggable(spend))


def _previous_review(cycle_id: int, symbol: str) -> EntryReview | None:
    """The first recorded review of ``symbol`` in this cycle (a retried evaluation asks no second time, so a
    veto stays a veto). Database errors are raised, never taken for "no review yet"."""
    with session_scope() as s:
        row = s.scalars(select(Decision).where(Decision.cycle_id == cycle_id, Decision.symbol == symbol,
                                               Decision.kind == "advisor").order_by(Decision.id).limit(1)).first()
        if row is None or (row.details or {}).get("review") != "entry":
            return None
        fields = set(EntryReview.__dataclass_fields__)
        return EntryReview(**{k: v for k, v in row.details.items() if k in fields})
