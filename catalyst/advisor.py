"""The exit advisor: Claude decides on MODERATE signals, within a per-cycle and a daily USD budget.

``build_advisor(settings)`` gives a :class:`ClaudeAdvisor` when ``ANTHROPIC_API_KEY`` is set and
a :class:`RulesAdvisor` otherwise. Either way ``advise(request)`` always returns an
:class:`Advice` and never raises for API trouble: a refused gate, a timeout, a 429, a server
error or an unparseable answer all become the configured rules fallback ("hold" or "exit"),
recorded with its cause. The SDK is built with ``max_retries=0`` so one consult costs at most
one request and at most ``advisor_timeout`` seconds; a 429 is never retried blindly.

The API key lives only inside the SDK client: it is not in ``Advice``, its ``as_dict()``, the
prompt or any log event.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import anthropic
import structlog

from catalyst import advisor_budget

log = structlog.get_logger("catalyst.advisor")

FallbackCause = Literal["no_key", "cycle_limit", "over_budget", "timeout", "rate_limited", "api_error",
                        "malformed_answer"]
FallbackMode = Literal["hold", "exit"]

TOOL_NAME = "exit_decision"
TOOL = {
    "name": TOOL_NAME,
    "description": "Record the decision for this long position: exit=true sells the whole position now, "
                   "exit=false keeps holding it. reason: one short sentence naming the deciding factors.",
    "strict": True,
    "input_schema": {
        "type": "object",
        "properties": {"exit": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["exit", "reason"],
        "additionalProperties": False,
    },
}
SYSTEM_PROMPT = (
    "You are the risk manager of an automated intraday US equity trading system. It holds a LONG "
    "position and one or more MODERATE exit signals have fired (strong signals exit without asking "
    "you). Weigh the signals against the P&L, the trend in the indicators and the original entry "
    "thesis, then decide: exit now (sell the whole position) or keep holding. Protecting capital "
    "matters more than squeezing the last gain. Answer only by calling exit_decision."
)
# Anthropic adds a hidden system prompt for tool use (a few hundred tokens); count it in the reservation.
TOOL_OVERHEAD_TOKENS = 400
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class AdviceRequest:
    position_id: int
    symbol: str
    qty: float
    entry_price: float
    price: float
    pnl_pct: float
    high_watermark: float
    opened_at: datetime
    held_minutes: float
    entry_reason: str | None
    signals: list[dict[str, Any]]  # name, strength, value, threshold, detail
    indicators: dict[str, float | None]
    slot_at: datetime  # the monitor cycle: consults are limited per slot
    market_day: str  # YYYY-MM-DD in exchange time: the budget's day


@dataclass(frozen=True)
class Advice:
    exit: bool
    reason: str
    source: Literal["advisor", "fallback"]
    fallback_cause: FallbackCause | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values for a ``decisions`` row."""
        return asdict(self)


class Advisor(Protocol):
    def advise(self, request: AdviceRequest) -> Advice: ...


def fallback_advice(cause: FallbackCause, mode: FallbackMode, **extra: Any) -> Advice:
    verb = "exit" if mode == "exit" else "hold"
    return Advice(exit=mode == "exit", reason=f"advisor unavailable ({cause}); rules fallback: {verb}",
                  source="fallback", fallback_cause=cause, **extra)


class RulesAdvisor:
    """No API key configured: every consult is the rules fallback, recorded as ``no_key``."""

    def __init__(self, fallback: FallbackMode = "hold"):
        if fallback not in ("hold", "exit"):
            raise ValueError("fallback must be 'hold' or 'exit'")
        self.fallback = fallback

    def advise(self, request: AdviceRequest) -> Advice:
        advice = fallback_advice("no_key", self.fallback)
        log.info("advisor_fallback", position_id=request.position_id, symbol=request.symbol, cause="no_key",
                 exit=advice.exit)
        return advice


def num_text(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{round(value, digits)}"
    return str(value)


def build_prompt(req: AdviceRequest) -> str:
    """The user message: position, P&L, every signal with its numbers, indicators, entry reason."""
    drawdown = (req.price / req.high_watermark - 1) * 100 if req.price and req.high_watermark else None
    pnl = f"{req.pnl_pct:+.2f}%" if req.pnl_pct is not None else "n/a"
    held = f"{req.held_minutes:.0f} min" if req.held_minutes is not None else "n/a"
    lines = [
        f"Position #{req.position_id}: LONG {num_text(req.qty)} {req.symbol}",
        f"Entry {num_text(req.entry_price)} at {req.opened_at.isoformat()} (held {held})",
        f"Now {num_text(req.price)}; P&L {pnl}; high-watermark {num_text(req.high_watermark)}"
        + (f" ({drawdown:+.2f}% from high)" if drawdown is not None else ""),
        f"Entry reason: {req.entry_reason or 'not recorded'}",
        "Signals fired:",
    ]
    for sig in req.signals or [{"name": "none"}]:
        detail = f" — {sig['detail']}" if sig.get("detail") else ""
        lines.append(f"- {sig.get('name')} [{sig.get('strength', '?')}]: value {num_text(sig.get('value'))}, "
                     f"threshold {num_text(sig.get('threshold'))}{detail}")
    shown = ", ".join(f"{k}={num_text(v)}" for k, v in sorted(req.indicators.items())) or "none"
    lines += [f"Indicators: {shown}", "Exit now or hold? Call exit_decision."]
    return "\n".join(lines)


@dataclass
class _Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Consulted:
    """One gated consult: the forced tool's input, or why there is none, and what it cost.

    ``answer`` is the ``input`` of exactly one ``tool_use`` block of the forced tool (a dict), or
    ``None`` with a ``cause``. Checking the answer's fields is the caller's job: a malformed
    answer is still charged. ``spend`` is empty when no request was sent.
    """

    answer: dict | None
    cause: FallbackCause | None = None
    detail: str | None = None
    spend: dict[str, Any] = field(default_factory=dict)

    @property
    def called(self) -> bool:
        """A request went out (and is counted in the day's calls)."""
        return bool(self.spend)


class ClaudeConsultant:
    """Forced-tool requests to Claude through the real SDK, behind a consult cap and the daily budget.

    Shared by the exit advisor and the entry review: one SDK client (``max_retries=0``, the
    advisor timeout), the per-gate consult cap, reserve-then-settle budget accounting and the
    cost of each call from the API's reported usage.
    """

    def __init__(self, api_key: str, *, model: str = "claude-haiku-4-5", base_url: str | None = None,
                 timeout: float = 15.0, max_tokens: int = 300, daily_budget_usd: float = 5.0,
                 max_consults_per_cycle: int = 5, input_usd_per_mtok: float = 1.0, output_usd_per_mtok: float = 5.0,
                 db_url: str | None = None):
        if not api_key:
            raise ValueError("Claude needs an API key (use the rules fallback without one)")
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.model, self.timeout, self.max_tokens = model, timeout, max_tokens
        self.daily_budget_usd, self.max_consults_per_cycle = daily_budget_usd, max_consults_per_cycle
        self.input_usd_per_mtok, self.output_usd_per_mtok = input_usd_per_mtok, output_usd_per_mtok
        self.db_url = db_url

    def __repr__(self) -> str:  # never the key
        return f"ClaudeConsultant(model={self.model!r}, timeout={self.timeout})"

    @property
    def secret(self) -> str:
        """The key, for scrubbing text that might echo it (never for printing)."""
        return self._client.api_key or ""

    # -- money ---------------------------------------------------------------------------------------

    def estimate_cost(self, system: str, prompt: str, tool: dict) -> float:
        """Worst case of one call: prompt chars / 4 input tokens (+ tool overhead) and max_tokens output."""
        chars = len(system) + len(prompt) + len(json.dumps(tool))
        input_tokens = chars / 4 + TOOL_OVERHEAD_TOKENS
        return (input_tokens * self.input_usd_per_mtok + self.max_tokens * self.output_usd_per_mtok) / 1e6

    def usage_cost(self, usage: Any) -> _Usage:
        """Tokens and USD from ``response.usage``; cache writes bill at 1.25x input, cache reads at 0.1x."""
        if usage is None:
            return _Usage()
        fresh = int(getattr(usage, "input_tokens", 0) or 0)
        written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        out = int(getattr(usage, "output_tokens", 0) or 0)
        cost = ((fresh + 1.25 * written + 0.1 * read) * self.input_usd_per_mtok + out * self.output_usd_per_mtok) / 1e6
        return _Usage(fresh + written + read, out, round(cost, 8))

    # -- the consult ---------------------------------------------------------------------------------

    def consult(self, *, gate: "datetime | advisor_budget.EntryGate", day: str, system: str, prompt: str, tool: dict) -> Consulted:
        """Ask once, forcing ``tool``; never raises for API trouble (the gate's database errors do raise)."""
        if not advisor_budget.grant_consult(gate, self.max_consults_per_cycle, self.db_url):
            return Consulted(None, "cycle_limit", f"limit {self.max_consults_per_cycle}")
        estimate = self.estimate_cost(system, prompt, tool)
        if not advisor_budget.reserve(day, estimate, self.daily_budget_usd, self.db_url):
            return Consulted(None, "over_budget", f"budget {self.daily_budget_usd} USD, estimate {estimate:.6f} USD")

        usage, cause, detail, response = _Usage(), None, None, None
        started = time.perf_counter()
        try:
            response = self._client.messages.create(
                model=self.model, max_tokens=self.max_tokens, system=system,
                messages=[{"role": "user", "content": prompt}],
                tools=[tool], tool_choice={"type": "tool", "name": tool["name"]},
            )
            usage = self.usage_cost(getattr(response, "usage", None))
        except anthropic.APITimeoutError:
            cause = "timeout"
        except anthropic.RateLimitError as exc:
            cause, detail = "rate_limited", self._describe(exc)
        except anthropic.APIError as exc:  # other status errors, connection errors, response validation
            cause, detail = "api_error", self._describe(exc)
        except Exception as exc:  # noqa: BLE001 - the caller must get an answer whatever the SDK does
            cause, detail = "api_error", self._describe(exc)
        latency_ms = (time.perf_counter() - started) * 1000
        self._settle(day, estimate, usage)

        spend = {"model": self.model if response is None else getattr(response, "model", None) or self.model,
                 "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                 "cost_usd": usage.cost_usd, "latency_ms": round(latency_ms, 1)}
        if cause is not None:
            return Consulted(None, cause, detail, spend)
        answer = tool_input(response, tool["name"])
        if answer is None:
            return Consulted(None, "malformed_answer", "no single call of the forced tool", spend)
        return Consulted(answer, None, None, spend)

    def _settle(self, day: str, reserved: float, usage: _Usage) -> None:
        try:
            advisor_budget.settle(day, reserved, usage.cost_usd, self.db_url)
        except Exception as exc:  # noqa: BLE001 - keeping the reservation only errs towards spending less
            log.error("advisor_settle_failed", day=day, error=type(exc).__name__)

    def _describe(self, exc: Exception) -> str:
        """Error class, status and a short message, with the key scrubbed in case anything echoes it."""
        status = getattr(exc, "status_code", None)
        text = f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {str(exc)[:200]}"
        key = self.secret
        return text.replace(key, "***") if key else text


def tool_input(response: Any, name: str) -> dict | None:
    """The ``input`` of exactly one ``tool_use`` block named ``name``, or None if the answer is not that."""
    calls = [b for b in getattr(response, "content", None) or []
             if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == name]
    if len(calls) != 1:
        return None
    args = getattr(calls[0], "input", None)
    return args if isinstance(args, dict) else None


def parse_decision(response: Any) -> tuple[bool, str] | None:
    """The (exit, reason) of exactly one ``exit_decision`` tool call, or None if the answer is not that."""
    args = tool_input(response, TOOL_NAME)
    return None if args is None else decision_of(args)


def decision_of(args: dict) -> tuple[bool, str] | None:
    """(exit, reason) from the tool input when it is exactly ``{exit: bool, reason: non-blank str}``."""
    if set(args) != {"exit", "reason"}:
        return None
    decision, reason = args["exit"], args["reason"]
    if not isinstance(decision, bool) or not isinstance(reason, str) or not reason.strip():
        return None
    return decision, reason.strip()[:MAX_REASON_CHARS]


class ClaudeAdvisor:
    """Claude via the real SDK, behind the cycle gate and the daily budget."""

    def __init__(self, api_key: str, *, model: str = "claude-haiku-4-5", base_url: str | None = None,
                 timeout: float = 15.0, max_tokens: int = 300, daily_budget_usd: float = 5.0,
                 max_consults_per_cycle: int = 5, fallback: FallbackMode = "hold",
                 input_usd_per_mtok: float = 1.0, output_usd_per_mtok: float = 5.0, db_url: str | None = None):
        if not api_key:
            raise ValueError("ClaudeAdvisor needs an API key (use RulesAdvisor without one)")
        if fallback not in ("hold", "exit"):
            raise ValueError("fallback must be 'hold' or 'exit'")
        self.claude = ClaudeConsultant(api_key, model=model, base_url=base_url, timeout=timeout,
                                       max_tokens=max_tokens, daily_budget_usd=daily_budget_usd,
                                       max_consults_per_cycle=max_consults_per_cycle,
                                       input_usd_per_mtok=input_usd_per_mtok,
                                       output_usd_per_mtok=output_usd_per_mtok, db_url=db_url)
        self.model, self.timeout, self.fallback = model, timeout, fallback

    def __repr__(self) -> str:  # never the key
        return f"ClaudeAdvisor(model={self.model!r}, timeout={self.timeout}, fallback={self.fallback!r})"

    @classmethod
    def from_settings(cls, settings, db_url: str | None = None) -> ClaudeAdvisor:
        return cls(settings.anthropic_api_key, model=settings.advisor_model, base_url=settings.anthropic_base_url,
                   timeout=settings.advisor_timeout, max_tokens=settings.advisor_max_tokens,
                   daily_budget_usd=settings.ai_daily_budget_usd,
                   max_consults_per_cycle=settings.advisor_max_consults_per_cycle, fallback=settings.advisor_fallback,
                   input_usd_per_mtok=settings.advisor_input_usd_per_mtok,
                   output_usd_per_mtok=settings.advisor_output_usd_per_mtok, db_url=db_url)

    def advise(self, request: AdviceRequest) -> Advice:
        ctx = {"position_id": request.position_id, "symbol": request.symbol}
        got = self.claude.consult(gate=request.slot_at, day=request.market_day, system=SYSTEM_PROMPT,
                                  prompt=build_prompt(request), tool=TOOL)
        decision = decision_of(got.answer) if got.answer is not None else None
        cause = got.cause or (None if decision is not None else "malformed_answer")
        if cause is not None:
            return self._fallback(cause, ctx, got.spend, detail=got.detail)
        advice = Advice(exit=decision[0], reason=decision[1], source="advisor", **got.spend)
        log.info("advisor_consulted", **ctx, exit=advice.exit, reason=advice.reason, **loggable(got.spend))
        return advice

    def _fallback(self, cause: FallbackCause, ctx: dict, spend: dict | None = None, **info: Any) -> Advice:
        advice = fallback_advice(cause, self.fallback, **(spend or {}))
        log.warning("advisor_fallback", **ctx, cause=cause, exit=advice.exit,
                    **{k: v for k, v in info.items() if v is not None}, **loggable(spend or {}))
        return advice


def loggable(spend: dict) -> dict:
    """Spend fields for a log event; ``*_tokens`` would be masked by the secret redactor, so rename them."""
    return {k.replace("_tokens", "_tok"): v for k, v in spend.items()}


def build_advisor(settings) -> Advisor:
    """Claude when a key is configured, else the rules fallback."""
    if settings.anthropic_api_key:
        return ClaudeAdvisor.from_settings(settings)
    return RulesAdvisor(settings.advisor_fallback)
