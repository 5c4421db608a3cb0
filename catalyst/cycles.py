"""Trading cycles: run the candidate funnel into ``scan_results``, then evaluate the selection into planned entries.

The funnel (:mod:`catalyst.core.funnel`) is pure; this module is its I/O shell: it picks the universe
(the market data's screener or symbols, the configured watchlist and, in session, today's pre-market
watchlist), measures each symbol, fetches news for the few that reach the news stage (a news outage
never fails a scan), and stores one ``scan_results`` row per universe symbol with the stage it reached,
why it stopped, and the numbers behind every verdict; the cycle keeps the counts per stage.

Evaluation screens each *selected* candidate (trading state, symbol held, momentum, RSI, position limit),
sizes the survivors (:mod:`catalyst.core.sizing`: whole shares, stop and target) and runs the
same pre-trade risk checks admission will run (:mod:`catalyst.core.risk`), against the book plus
the entries already planned in this cycle. With ``settings.entry_review`` Claude then reviews the
entries the rules chose (:mod:`catalyst.entry_review`) and may veto one (``advisor_rejected``).
Every verdict lands in ``decisions``. Admission checks again under the entry gate when each entry
is sent: the plan is advice, the gate is the rule. A pre-market cycle plans no entries: its selection is the day's watchlist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, ScanResult, Security, TradingCycle
from catalyst.entries import book_snapshot, entry_client_order_id, sector_of
from catalyst.records import record_decision, security_id
from catalyst.runtime import Runtime
from catalyst.core import funnel, risk, sizing
from catalyst.core.domain import BadInput, UnknownSymbol
from catalyst.core.indicators import compute as compute_indicators
from catalyst.core.news import NewsItem, by_symbol
from catalyst.core.patterns import NO_PATTERN
from catalyst.monitor import INDICATOR_BARS, RSI_TRUSTED_BARS
from catalyst.core.scanner import Candidate, EntryRules, Snapshot, evaluate

log = structlog.get_logger("catalyst.cycles")
SESSION_MINUTES = 390
# Bars read per symbol in session: today's so far plus the previous sessions relative volume compares with.
HISTORY_SESSIONS = funnel.PREVIOUS_SESSIONS


@dataclass(frozen=True)
class PlannedEntry:
    cycle_id: int
    symbol: str
    qty: int
    stop_loss_price: float
    take_profit_price: float
    client_order_id: str
    reason: str = NO_PATTERN  # the strategy: the best pattern's name, or momentum


def funnel_rules(rt: Runtime) -> funnel.FunnelRules:
    return funnel.FunnelRules.of(rt.settings, rt.profile.overbought_rsi, RSI_TRUSTED_BARS, EntryRules().min_change_pct)


def scan(rt: Runtime, slot_at: datetime) -> int:
    """Run the funnel once for ``slot_at``; a repeated scan of the same slot returns the same cycle.

    A slot inside a session builds a ``session`` cycle; a slot outside one (before the next open) a
    ``premarket`` cycle ranked by the gap and news.
    """
    with session_scope() as s:
        existing = s.scalar(select(TradingCycle.id).where(TradingCycle.slot_at == slot_at))
        if existing is not None:
            return existing
    now = rt.clock.now()
    session = rt.calendar.session_at(slot_at)
    kind = funnel.SESSION if session is not None else funnel.PREMARKET
    rules = funnel_rules(rt)
    symbols = universe(rt, session)
    md = rt.market_data
    if hasattr(md, "prefetch"):
        md.prefetch(symbols, now)  # one batched snapshot call per 100 symbols, not one per symbol
    observations = [observe(rt, symbol, now, session) for symbol in symbols]
    result = funnel.screen(observations, rules, str(rt.calendar.tz), kind)
    news = fetch_news(rt, funnel.news_candidates(result), now)
    with session_scope() as s:
        held = book_snapshot(s, rt, now).symbols
    result = funnel.finish(result, news, held, now, rules)
    try:
        cycle_id = _store(rt, slot_at, kind, result, now)
    except IntegrityError:  # another worker scanned this slot concurrently
        with session_scope() as s:
            return s.scalar(select(TradingCycle.id).where(TradingCycle.slot_at == slot_at))
    log.info("market_scanned", cycle_id=cycle_id, slot_at=slot_at.isoformat(), kind=kind, funnel=result.counts(),
             candidates=[r.symbol for r in result.selected()])
    return cycle_id


def universe(rt: Runtime, session) -> list[str]:
    """The configured watchlist, today's pre-market watchlist (in session), then the source's universe; capped."""
    md = rt.market_data
    source = md.scan_universe() if hasattr(md, "scan_universe") else md.symbols()
    premarket = premarket_watchlist(session, rt.calendar.tz) if session is not None else []
    ordered = list(dict.fromkeys([*rt.settings.watchlist, *premarket, *source]))
    return ordered[:rt.settings.scan_universe_size]


def premarket_watchlist(session, tz) -> list[str]:
    """The selection of this session's pre-market scans (slots the same market day, before the open), best first."""
    day_start = session.open.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    with session_scope() as s:
        return list(s.scalars(
            select(ScanResult.symbol).join(TradingCycle, TradingCycle.id == ScanResult.cycle_id)
            .where(TradingCycle.kind == funnel.PREMARKET, TradingCycle.slot_at >= day_start,
                   TradingCycle.slot_at < session.open, ScanResult.stage == funnel.SELECTED)
            .order_by(TradingCycle.slot_at.desc(), ScanResult.rank)).all())


def observe(rt: Runtime, symbol: str, now: datetime, session) -> funnel.Observation:
    """Price and recent bars of one symbol; a symbol the source does not know is not tradable."""
    md = rt.market_data
    try:
        if session is None:
            quote = md.premarket_quote(symbol, now) if hasattr(md, "premarket_quote") else md.quote(symbol, now)
            history = md.bars(symbol, now, 1)  # the previous close
        else:
            quote = md.quote(symbol, now)
            history = md.bars(symbol, now, max(INDICATOR_BARS, _minutes_since(session.open, now)
                                               + HISTORY_SESSIONS * SESSION_MINUTES))
        previous_close = md.previous_close(symbol, now) if hasattr(md, "previous_close") else None
    except (UnknownSymbol, BadInput) as exc:
        log.info("symbol_not_tradable", symbol=symbol, error=str(exc))
        return funnel.Observation(symbol, None, tradable=False)
    except Exception as exc:  # noqa: BLE001 - one symbol's data error never fails the scan of the others
        log.warning("symbol_unreadable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
        return funnel.Observation(symbol, None, tradable=False)
    return funnel.Observation(symbol, quote.price if quote is not None else None, tuple(history),
                              session.open if session is not None else None, quote is not None, previous_close)


def snapshot(rt: Runtime, symbol: str, now: datetime) -> Snapshot | None:
    """The scanner's figures for one symbol in session (what the funnel's filters and technicals see):
    session volume, the volume it is compared with, RSI. ``None`` outside a session or without bars today."""
    session = rt.calendar.session_at(now)
    if session is None:
        return None
    obs = observe(rt, symbol, now, session)
    values = funnel.measure(obs, rt.calendar.tz)
    if obs.price is None or not values.get("session_bars"):
        return None
    rv = values["relative_volume"] or 0.0
    indicators = compute_indicators(list(obs.history[-INDICATOR_BARS:]), str(rt.calendar.tz))
    rsi = indicators.rsi if indicators.bars >= RSI_TRUSTED_BARS else None
    return Snapshot(symbol, obs.price, values["session_open"], values["volume"],
                    values["volume"] / rv if rv else 0.0, None, rsi)


def _minutes_since(start: datetime, now: datetime) -> int:
    return max(int((now - start).total_seconds() // 60) + 1, 0)


def fetch_news(rt: Runtime, symbols: list[str], now: datetime) -> dict[str, list[NewsItem]] | None:
    """Headlines for the funnel's survivors; ``None`` when the source fails (logged; the scan goes on)."""
    md = rt.market_data
    if not symbols or not hasattr(md, "news"):
        return {}
    since = now - timedelta(hours=rt.settings.news_max_age_hours)
    try:
        return by_symbol(md.news(symbols, since, now), symbols)
    except Exception as exc:  # noqa: BLE001 - news is a boost, never a reason to miss a scan
        log.warning("news_unavailable", source=getattr(md, "name", "?"), symbols=len(symbols),
                    error=f"{type(exc).__name__}: {exc}")
        return None


def _store(rt: Runtime, slot_at: datetime, kind: str, result: funnel.Funnel, now: datetime) -> int:
    selected = result.selected()
    with session_scope() as s:
        cycle = TradingCycle(slot_at=slot_at, market=rt.settings.market, status="scanned", kind=kind,
                             candidates=len(selected), funnel=result.counts(), started_at=now,
                             finished_at=rt.clock.now())
        s.add(cycle)
        s.flush()
        for row in result.rows:
            security = security_id(s, row.symbol, rt.calendar.code, sector_of(rt, row.symbol))
            s.add(ScanResult(cycle_id=cycle.id, security_id=security, symbol=row.symbol, rank=row.rank,
                             stage=row.stage, rejected_reason=row.rejected_reason, details=row.details,
                             score=row.score, price=row.price, change_pct=row.change_pct, volume=row.volume,
                             relative_volume=row.relative_volume, rsi=row.rsi, catalyst=row.catalyst,
                             created_at=now))
        return cycle.id


def funnel_counts(s, cycle_id: int) -> list[tuple[str, int]]:
    """``[(stage, symbols that passed it), ...]`` in funnel order for one cycle (for the demo and the CLI)."""
    cycle = s.get(TradingCycle, cycle_id)
    if cycle is None:
        raise BadInput(f"unknown trading cycle id {cycle_id}")
    stages = funnel.PREMARKET_STAGES if cycle.kind == funnel.PREMARKET else funnel.SESSION_STAGES
    stored = dict(cycle.funnel or {})
    if not stored:  # a cycle scanned before the funnel: count its rows
        reached = dict(s.execute(select(ScanResult.stage, func.count()).where(ScanResult.cycle_id == cycle_id)
                                 .group_by(ScanResult.stage)).all())
        order = funnel.SESSION_STAGES
        stored = {st: sum(n for stage, n in reached.items() if stage in order and order.index(stage) >= order.index(st))
                  for st in stages}
    return [(stage, int(stored.get(stage, 0))) for stage in stages]


@dataclass(frozen=True)
class _Verdict:
    symbol: str
    action: str  # enter | skip
    reason: str
    details: dict


def evaluate_cycle(rt: Runtime, cycle_id: int, worker: str | None = None) -> list[PlannedEntry]:
    """Decide which candidates of a cycle to enter, and how many shares; re-evaluating repeats the first answer."""
    now = rt.clock.now()
    with session_scope() as s:
        cycle = s.get(TradingCycle, cycle_id)
        if cycle is None:
            raise BadInput(f"unknown trading cycle id {cycle_id}")
        kind = cycle.kind
        answer = _previous_answer(s, cycle_id)
        if answer is not None:
            return answer
        rows = s.execute(select(ScanResult, Security.sector).outerjoin(Security, Security.id == ScanResult.security_id)
                         .where(ScanResult.cycle_id == cycle_id, ScanResult.stage == funnel.SELECTED)
                         .order_by(ScanResult.rank)).all()
        candidates = [(Candidate(r.symbol, r.rank, r.score, r.price, r.change_pct, r.volume, r.relative_volume,
                                 r.catalyst, r.rsi), sector_of(rt, r.symbol) or sector,
                       (r.details or {}).get("strategy") or NO_PATTERN) for r, sector in rows]
        evidence = {r.symbol: dict(r.details or {}) for r, _ in rows}  # the funnel's numbers, for the review
        book = book_snapshot(s, rt, now)  # entries still in flight count as held, for every limit
    if kind == funnel.PREMARKET:  # the pre-market selection is the day's watchlist, never an order
        verdicts = [_Verdict(c.symbol, "skip", "premarket_watchlist", {"rank": c.rank, "score": c.score})
                    for c, _, _ in candidates]
    else:
        verdicts = _judge(rt, candidates, book, now)  # equity and ATR are read here, outside any transaction
        if rt.settings.entry_review:
            verdicts = _reviewed(rt, cycle_id, verdicts, [c for c, _, _ in candidates], evidence, now, worker)
    with session_scope() as s:
        answer = _previous_answer(s, cycle_id)
        if answer is not None:  # a concurrent evaluation of this cycle answered first
            return answer
        for v in verdicts:
            record_decision(s, kind="evaluate", action=v.action, reason=v.reason, symbol=v.symbol, cycle_id=cycle_id,
                            decided_at=now, worker=worker, details=v.details)
        s.get(TradingCycle, cycle_id).status = "evaluated"
    planned = [_planned(cycle_id, v.symbol, v.details) for v in verdicts if v.action == "enter"]
    log.info("candidates_evaluated", cycle_id=cycle_id, entries={p.symbol: p.qty for p in planned},
             skipped={v.symbol: v.reason for v in verdicts if v.action == "skip"})
    return planned


def _previous_answer(s, cycle_id: int) -> list[PlannedEntry] | None:
    previous = s.scalars(select(Decision).where(Decision.cycle_id == cycle_id, Decision.kind == "evaluate")
                         .order_by(Decision.id)).all()
    if not previous:
        return None
    return [_planned(cycle_id, d.symbol, d.details) for d in previous if d.action == "enter"]


def _judge(rt: Runtime, candidates: list[tuple[Candidate, str | None, str]], book: risk.Book,
           now: datetime) -> list[_Verdict]:
    """One verdict per candidate, best rank first: screened, sized, then risk-checked against the book
    plus the entries planned before it."""
    settings = rt.settings
    screen = EntryRules(max_positions=settings.max_positions, position_size_usd=settings.position_size_usd,
                        stop_loss_pct=settings.stop_loss_pct, take_profit_pct=settings.take_profit_pct,
                        max_entry_rsi=rt.profile.overbought_rsi)
    rules, limits = sizing.SizingRules.of(settings), risk.Limits.of(settings)
    market = _SizingInputs(rt, now, rules)
    verdicts = []
    for c, sector, strategy in sorted(candidates, key=lambda item: item[0].rank):
        if not settings.auto_entries:
            verdicts.append(_Verdict(c.symbol, "skip", "auto_entries_off", {}))
            continue
        if book.state is not risk.TradingState.ACTIVE:
            verdicts.append(_Verdict(c.symbol, "skip", f"trading_{book.state.value.lower()}",
                                     {"state_reason": book.state_reason}))
            continue
        # The scanner's screen (symbol, momentum, RSI, slots); sizing is ours, so one share always "fits" it.
        (screened,) = evaluate([c], set(book.symbols), book.count, False, replace(screen, position_size_usd=c.price))
        if screened.action != "enter":
            verdicts.append(_Verdict(c.symbol, "skip", screened.reason, {}))
            continue
        plan = sizing.plan(c.symbol, c.price, rules, equity=market.equity(), atr=market.atr(c.symbol))
        if isinstance(plan, risk.Refusal):
            verdicts.append(_Verdict(c.symbol, "skip", plan.reason, {"message": plan.message}))
            continue
        entry = risk.Entry(c.symbol, plan.qty, c.price, plan.stop, plan.target, sector)
        details = {"qty": plan.qty, "stop": plan.stop, "target": plan.target, "price": c.price, "sector": sector,
                   "reward_risk": entry.reward_risk,
                   "sizing": plan.as_dict(), "strategy": strategy}
        refusals = risk.check_entry(entry, book, limits)
        if refusals:
            verdicts.append(_Verdict(c.symbol, "skip", refusals[0].reason, {
                **details, "refusals": [{"reason": r.reason, "message": r.message} for r in refusals]}))
            continue
        verdicts.append(_Verdict(c.symbol, "enter", strategy, details))
        book = book.with_entry(entry)
    return verdicts


def _reviewed(rt: Runtime, cycle_id: int, verdicts: list[_Verdict], candidates: list[Candidate],
              evidence: dict[str, dict], now: datetime, worker: str | None) -> list[_Verdict]:
    """Claude's review of the entries the rules chose: a veto turns the entry into an ``advisor_rejected`` skip.

    A fallback (no key, cap, budget, timeout, error, malformed answer) keeps the rules verdict. The
    review rides along in the verdict's details either way.
    """
    from catalyst.entry_review import review_entries

    by_symbol = {c.symbol: c for c in candidates}
    proposals = [_proposal(v, by_symbol[v.symbol], evidence.get(v.symbol, {})) for v in verdicts
                 if v.action == "enter"]
    if not proposals:
        return verdicts
    reviews = {r.symbol: r for r in review_entries(rt, cycle_id, proposals, now, worker)}
    reviewed = []
    for v in verdicts:
        review = reviews.get(v.symbol) if v.action == "enter" else None
        if review is None:
            reviewed.append(v)
            continue
        details = {**v.details, "review": review.as_dict()}
        reviewed.append(replace(v, details=details) if review.enter
                        else _Verdict(v.symbol, "skip", "advisor_rejected", details))
    return reviewed


def _proposal(v: _Verdict, c: Candidate, evidence: dict):
    """What the reviewer judges: the sized entry, the candidate's numbers and the funnel's stored evidence
    (``scan_results.details``: patterns, indicators, news headline and age)."""
    from catalyst.entry_review import EntryProposal

    d = v.details
    return EntryProposal(symbol=v.symbol, price=d["price"], qty=d["qty"], stop=d["stop"], target=d["target"],
                         reward_risk=d.get("reward_risk"), score=c.score, rank=c.rank,
                         details={"change_pct": c.change_pct, "volume": c.volume, "relative_volume": c.relative_volume,
                                  "rsi": c.rsi, "catalyst": c.catalyst, "sector": d.get("sector"), **evidence})


class _SizingInputs:
    """Broker equity and per-symbol ATR, read only when the sizing rules need them, at most once each.

    A failed read is ``None``: sizing then refuses that entry with the reason, it never guesses.
    """

    def __init__(self, rt: Runtime, now: datetime, rules: sizing.SizingRules):
        self.rt, self.now, self.rules = rt, now, rules
        self._equity: tuple[float | None] | None = None

    def equity(self) -> float | None:
        if not self.rules.needs_equity:
            return None
        if self._equity is None:
            try:
                self._equity = (float(self.rt.broker.equity()),)
            except Exception as exc:  # noqa: BLE001 - no equity, no percent-of-equity entries this cycle
                log.warning("equity_unknown", broker=getattr(self.rt.broker, "name", "?"), error=str(exc))
                self._equity = (None,)
        return self._equity[0]

    def atr(self, symbol: str) -> float | None:
        if not self.rules.needs_atr:
            return None
        try:
            bars = self.rt.market_data.bars(symbol, self.now, INDICATOR_BARS)
            return compute_indicators(bars, str(self.rt.calendar.tz)).atr
        except Exception as exc:  # noqa: BLE001 - no ATR, no ATR-based entry in this symbol
            log.warning("atr_unknown", symbol=symbol, error=str(exc))
            return None


def _planned(cycle_id: int, symbol: str, details: dict) -> PlannedEntry:
    return PlannedEntry(cycle_id, symbol, details["qty"], details["stop"], details["target"],
                        entry_client_order_id(cycle_id, symbol), details.get("strategy") or NO_PATTERN)
