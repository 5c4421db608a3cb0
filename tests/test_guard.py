"""The daily-loss guard on real PostgreSQL (issue 9): catalyst.guard against the paper broker.

Prices are replayed flat at 50; a position's loss is set the way the monitor sets it, through its
last price (``positions.last_price``), and a realized loss through a position closed today. The
limit is 1,000 USD with the warning at 75 % (750 USD). Exits run in-process through the same
``execute_exit`` the exit task runs. Races use real threads released together, many rounds.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import and_, func, not_, select, update

from catalyst import guard
from catalyst.core.risk import TradingState
from catalyst.db.engine import session_scope
from catalyst.clock import ManualClock
from catalyst.db.models import Decision, Notification, Order, PaperOrder, Position, PositionMonitorStatus, Security
from catalyst.db.models import TradingState as StateRow
from catalyst.entries import EntryRefused, open_position
from catalyst.positions import execute_exit
from catalyst.runtime import build_runtime, get_runtime, use_runtime
from catalyst.settings import get_settings
from tests.support import environment, query, quiet_day_files, race, rows, write_replay_csv

pytestmark = pytest.mark.postgres

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
NEXT_SESSION = datetime(2025, 3, 5, 9, 30, tzinfo=EST)
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH"]
PRICE = 50.0
QTY = 10
LIMIT = {"CATALYST_MAX_DAILY_LOSS_USD": "1000", "CATALYST_DAILY_LOSS_WARNING_PCT": "0.75"}


@pytest.fixture
def market(pg_url, tmp_path):
    """``market(start=..., **env)``: this process on the test database with flat replayed prices."""
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [PRICE] * 240)) for s in SYMBOLS]
    paths += [str(write_replay_csv(tmp_path / f"{s}2.csv", s, NEXT_SESSION, [PRICE] * 240)) for s in SYMBOLS[:1]]

    def _enter(start: datetime = SESSION_OPEN + timedelta(minutes=5), **extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_MARKET_DATA": "replay:" + ",".join(paths),
                            "CATALYST_CLOCK": f"sim:{start.isoformat()}@1", **LIMIT, **extra})

    return _enter


GUARD_EVENTS = ("emergency_stop", "daily_loss_warning", "trading_halted", "trading_resumed")


@pytest.fixture
def alerts():
    """``alerts()``: the guard's alerts recorded so far (event, severity, dedupe key), oldest first."""
    def recorded() -> list[tuple[str, str, str]]:
        return [(n.event, n.severity, n.dedupe_key) for n in sorted(
            rows(Notification, Notification.event.in_(GUARD_EVENTS)), key=lambda n: n.id)]

    return recorded


def one_alert_per_write(recorded, *expected: tuple[str, str, str]) -> None:
    """Each alert names its market day and the state write it announces (``event:day:<write's time>``)."""
    assert [(e, sev) for e, sev, _ in recorded] == [(e, sev) for e, sev, _ in expected], recorded
    for (_, _, key), (_, _, prefix) in zip(recorded, expected):
        assert key.startswith(prefix + ":") and datetime.fromisoformat(key[len(prefix) + 1:]).tzinfo, key


def enter(symbol: str, qty: float = QTY, **kw) -> Position:
    return open_position(get_runtime(), symbol=symbol, qty=qty, client_order_id=f"manual-{uuid.uuid4().hex[:24]}",
                         **kw)


def mark(position_id: int, price: float) -> None:
    """The monitor's mark, as a check now records it: what today's unrealized P&L is computed from (the
    replayed market's quotes are no newer, so the guard keeps it)."""
    now = get_runtime().clock.now()
    with session_scope() as s:
        s.execute(update(Position).where(Position.id == position_id).values(last_price=price))
        status = s.get(PositionMonitorStatus, position_id)
        if status is None:
            symbol = s.get(Position, position_id).symbol
            s.add(PositionMonitorStatus(position_id=position_id, symbol=symbol, last_check_at=now, price=price,
                                        checks=1, updated_at=datetime.now(UTC)))
        else:
            status.last_check_at, status.price = now, price


def realized_today(amount: float) -> None:
    """A position closed earlier today with this realized P&L."""
    now = get_runtime().clock.now()
    with session_scope() as s:
        security = s.scalar(select(Security).where(Security.symbol == "OLD"))
        if security is None:
            security = Security(symbol="OLD", exchange="XNYS", created_at=now)
            s.add(security)
            s.flush()
        s.add(Position(security_id=security.id, symbol="OLD", qty=100, status="closed", entry_price=PRICE,
                       high_watermark=PRICE, stop_loss_price=40.0, take_profit_price=60.0, max_hold_seconds=3600,
                       opened_at=now - timedelta(minutes=4), closed_at=now - timedelta(minutes=1),
                       exit_price=PRICE + amount / 100, exit_reason="stop_loss", realized_pnl=amount, updated_at=now))


def in_flight_entry(symbol: str = "HHH") -> str:
    """An entry admitted before the stop and not yet at the broker (its task has not sent it yet)."""
    cid = f"manual-{uuid.uuid4().hex[:24]}"
    now = get_runtime().clock.now()
    with session_scope() as s:
        s.add(Order(client_order_id=cid, symbol=symbol, side="buy", purpose="entry", qty=1, reference_price=PRICE,
                    stop_loss_price=47.5, take_profit_price=57.5, status="pending_submit", created_at=now,
                    updated_at=now))
    return cid


def run_exits(position_id: int) -> None:
    execute_exit(get_runtime(), position_id)


def check():
    return guard.check_risk(get_runtime(), dispatch=run_exits, worker="test")


def state() -> dict:
    return query(lambda s: dict(s.get(StateRow, "halted").value))


def risk_decisions() -> list[Decision]:
    return query(lambda s: s.scalars(select(Decision).where(Decision.kind == "risk").order_by(Decision.id)).all())


def sells_per_position() -> dict[int, int]:
    """Sells the broker received per position (exit client ids are ``exit-p<id>[-n]``)."""
    counts: dict[int, int] = {}
    for o in rows(PaperOrder, PaperOrder.side == "sell"):
        pid = int(o.client_order_id.split("-")[1][1:])
        counts[pid] = counts.get(pid, 0) + 1
    return counts


def loose(**extra):
    """Entries that the other pre-trade limits never refuse in these tests (only the state does)."""
    return {"CATALYST_MAX_POSITIONS": "50", "CATALYST_MIN_REWARD_RISK": "0", **extra}


# -- thresholds ------------------------------------------------------------------------------------------

def test_below_the_warning_nothing_changes_and_nothing_is_recorded(market, alerts):
    with market(**loose()):
        p = enter("AAA", qty=100)
        mark(p.id, PRICE - 7.4999)  # 749.99 lost: a cent short of 75 %
        result = check()
        assert result.state is TradingState.ACTIVE and result.change is None
        assert round(result.pnl.unrealized, 2) == -749.99
        assert risk_decisions() == [] and alerts() == []
        assert query(lambda s: s.get(StateRow, "halted")) is None


def test_exactly_75_percent_reduces_entries_are_refused_with_a_reason_and_exits_continue(market, alerts):
    with market(**loose()):
        a, b = enter("AAA", qty=100), enter("BBB")
        mark(a.id, PRICE - 7.5)  # exactly 750 lost
        result = check()
        assert (result.state, result.change) == (TradingState.REDUCING, "reduce")
        stored = state()
        assert stored["state"] == "REDUCING" and stored["by"] == "risk_monitor"
        assert stored["market_day"] == "2025-03-04" and stored["daily_pnl"]["total"] == -750.0
        assert "daily loss warning" in stored["reason"]
        with pytest.raises(EntryRefused) as refused:
            enter("CCC")
        assert refused.value.reason == "reducing"
        skip = query(lambda s: s.scalars(select(Decision).where(Decision.kind == "entry", Decision.action == "skip"))
                     .one())
        assert skip.reason == "reducing" and skip.symbol == "CCC"
        assert execute_exit(get_runtime(), b.id).status == "closed"  # exits continue
        assert check().change is None  # a second check changes nothing, records nothing
        assert [(d.action, d.reason) for d in risk_decisions()] == [("reduce", "daily_loss_warning")]
        one_alert_per_write(alerts(), ("daily_loss_warning", "warning", "daily_loss_warning:2025-03-04"))
        mark(a.id, PRICE)  # the loss recovers: REDUCING still lasts for the rest of the day
        assert check().state is TradingState.REDUCING


def test_exactly_100_percent_is_an_emergency_stop_every_position_closed_once(market, alerts):
    with market(**loose()):
        realized_today(-400.0)
        held = [enter("AAA", qty=100), enter("BBB"), enter("CCC")]
        mark(held[0].id, PRICE - 6.0)  # 400 realized + 600 unrealized = exactly 1,000
        for p in held[1:]:
            mark(p.id, PRICE)
        closing = held[2]
        from catalyst.positions import request_exit

        request_exit(get_runtime(), closing.id, "take_profit")  # already leaving: left to its own exit
        cid = in_flight_entry()
        result = check()
        assert (result.state, result.change) == (TradingState.HALTED, "halt")
        assert result.stop.closing == [held[0].id, held[1].id] and result.stop.already_closing == [closing.id]
        assert result.stop.cancelled == [cid]
        stored = state()
        assert stored["halted"] is True and stored["state"] == "HALTED" and stored["by"] == "risk_monitor"
        assert stored["flatten"] is True and stored["daily_pnl"]["total"] == -1000.0
        assert "daily loss limit reached" in stored["reason"] and stored["at"]
        closed = {p.id: p for p in rows(Position, Position.symbol != "OLD")}
        assert {closed[p.id].exit_reason for p in held[:2]} == {"emergency_stop"}
        assert all(closed[p.id].status == "closed" for p in held[:2])
        assert closed[closing.id].status == "closing" and closed[closing.id].exit_reason == "take_profit"
        execute_exit(get_runtime(), closing.id)
        assert query(lambda s: s.scalar(select(Order.status).where(Order.client_order_id == cid))) == "canceled"
        assert rows(PaperOrder, PaperOrder.client_order_id == cid) == []  # never sent
        for _ in range(3):  # later checks while HALTED: nothing more to sell, nothing recorded
            assert check().stop.closing == []
        assert sells_per_position() == {held[0].id: 1, held[1].id: 1, closing.id: 1}
        assert [(d.action, d.reason) for d in risk_decisions()] == [("halt", "daily_loss_limit")]
        one_alert_per_write(alerts(), ("emergency_stop", "critical", "emergency_stop:2025-03-04"))
        with pytest.raises(EntryRefused) as refused:
            enter("DDD")
        assert refused.value.reason == "halted"


def test_an_intent_retired_by_the_stop_is_never_sent_when_its_task_runs(market, alerts):
    with market(**loose()):
        realized_today(-1000.0)
        cid = in_flight_entry("AAA")
        check()
        with pytest.raises(EntryRefused):
            open_position(get_runtime(), symbol="AAA", qty=1, client_order_id=cid)
        assert rows(PaperOrder) == []


def test_a_position_from_a_late_fill_is_closed_by_the_next_check_while_halted(market, alerts):
    with market(**loose()):
        guard.halt(get_runtime(), reason="manual", by="ops@desk", close_positions=True, dispatch=run_exits)
        halted = state()
        with session_scope() as s:  # an entry the broker filled after the stop (our books adopt it late)
            s.get(StateRow, "halted").value = {"halted": False}
        late = enter("AAA")
        with session_scope() as s:
            s.get(StateRow, "halted").value = halted
        result = check()
        assert result.change is None and result.stop.closing == [late.id]
        assert query(lambda s: s.get(Position, late.id)).exit_reason == "emergency_stop"
        check()
        assert sells_per_position() == {late.id: 1}


def test_a_halt_that_kept_positions_becomes_an_emergency_stop_at_the_limit(market, alerts):
    with market(**loose()):
        p = enter("AAA", qty=100)
        report = guard.halt(get_runtime(), reason="checking a feed", by="ops@desk", close_positions=False,
                            dispatch=run_exits)
        assert report.closing == [] and query(lambda s: s.get(Position, p.id)).status == "open"
        mark(p.id, PRICE - 5.0)  # 500 lost: under the limit, HALTED stays and nothing closes
        assert check().stop.closing == []
        mark(p.id, PRICE - 10.0)  # 1,000 lost
        result = check()
        assert (result.state, result.change, result.stop.closing) == (TradingState.HALTED, "flatten", [p.id])
        assert query(lambda s: s.get(Position, p.id)).exit_reason == "emergency_stop"
        assert [d.action for d in risk_decisions()] == ["halt", "flatten"]


def test_the_monitor_never_lowers_a_halt(market, alerts):
    with market(**loose()):
        guard.halt(get_runtime(), reason="manual", by="ops@desk", close_positions=True, dispatch=run_exits)
        for _ in range(3):
            assert check().state is TradingState.HALTED
        assert state()["by"] == "ops@desk" and state()["reason"] == "manual"
    with market(start=NEXT_SESSION + timedelta(minutes=5), **loose()):  # nor does a new market day
        assert check().state is TradingState.HALTED
        with pytest.raises(EntryRefused):
            enter("AAA")
        before, _ = guard.resume(get_runtime(), by="ops@desk")
        assert before.state is TradingState.HALTED
        assert state()["resumed_by"] == "ops@desk" and state()["state"] == "ACTIVE"
        assert enter("AAA").status == "open"
        assert [d.action for d in risk_decisions()] == ["halt", "resume"]


def test_reducing_lifts_on_the_next_market_day(market, alerts):
    with market(**loose()):
        realized_today(-800.0)
        assert check().state is TradingState.REDUCING
        with pytest.raises(EntryRefused):
            enter("AAA")
    with market(start=NEXT_SESSION + timedelta(minutes=5), **loose()):
        from catalyst.entries import trading_state
        from catalyst.core.risk import market_day

        rt = get_runtime()
        # entries see it lifted at once, before any check has run
        assert query(lambda s: trading_state(s, market_day(rt.clock.now(), rt.calendar.tz)))[0] is TradingState.ACTIVE
        assert enter("AAA").status == "open"
        result = check()
        assert (result.state, result.change) == (TradingState.ACTIVE, "lift")
        assert [(d.action, d.reason) for d in risk_decisions()] == [("reduce", "daily_loss_warning"),
                                                                   ("lift", "new_market_day")]
        assert check().change is None


def test_bad_figures_never_crash_the_check(market, alerts):
    with market(**loose()):
        p = enter("AAA", qty=100)
        mark(p.id, float("nan"))
        realized_today(-800.0)
        result = check()
        assert result.pnl.unpriced == ("AAA",) and result.state is TradingState.REDUCING


# -- races: checks, an operator's halt and entries at once ---------------------------------------------------

ROUNDS = 20


def admitted_before_halt(monkeypatch, claimed: list[set[str]] | None = None) -> list[int]:
    """The highest entry order id at the moment each HALTED/REDUCING state was written (same transaction);
    with ``claimed``, also the entries already claimed for sending (or sent) at that moment."""
    marks: list[int] = []
    write = guard._write

    def probe(s, state, **kw):
        if state is not TradingState.ACTIVE:
            marks.append(s.scalar(select(func.coalesce(func.max(Order.id), 0)).where(Order.purpose == "entry")))
            if claimed is not None:
                claimed.append(set(s.scalars(select(Order.client_order_id).where(
                    Order.purpose == "entry", Order.status != "pending_submit",
                    not_(and_(Order.status == "canceled", Order.broker_order_id.is_(None)))))))
        return write(s, state, **kw)

    monkeypatch.setattr(guard, "_write", probe)
    return marks


def buys_arriving(monkeypatch, rt) -> list[tuple[str, bool]]:
    """Every buy the (paper) broker receives: (client order id, was HALTED committed when it arrived)."""
    arrivals: list[tuple[str, bool]] = []
    real_submit = rt.broker.submit_order

    def submit(request):
        if request.side == "buy":
            time.sleep(random.uniform(0, 0.004))  # the network between a claimed send and the broker
        report = real_submit(request)
        if request.side == "buy":  # read once the broker holds it: HALTED committed by then counts as after
            halted = query(lambda s: bool((s.get(StateRow, "halted").value or {}).get("halted"))
                           if s.get(StateRow, "halted") is not None else False)
            arrivals.append((request.client_order_id, halted))
        return report

    monkeypatch.setattr(rt.broker, "submit_order", submit)
    return arrivals


def reset_to_active() -> None:
    with session_scope() as s:
        row = s.get(StateRow, "halted")
        if row is not None:
            row.value, row.updated_at = {"halted": False, "state": "ACTIVE"}, datetime.now(UTC)


def test_race_no_entry_is_admitted_after_the_warning_is_committed(market, alerts, monkeypatch):
    """6 entries and 3 risk checks at once, 20 rounds: the day is at 76 % before the round starts."""
    marks = admitted_before_halt(monkeypatch)
    with market(**loose()):
        realized_today(-760.0)
        for rnd in range(ROUNDS):
            reset_to_active()
            before = len(marks)
            symbols = SYMBOLS[:6]
            results = race(9, lambda i: check() if i >= 6 else enter(symbols[i]))
            assert all(not isinstance(r, Exception) or isinstance(r, EntryRefused) for r in results), results
            assert len(marks) == before + 1, f"round {rnd}: one check wrote REDUCING"
            entries = query(lambda s: s.scalars(select(Order.id).where(Order.purpose == "entry")).all())
            assert all(i <= marks[-1] for i in entries), f"round {rnd}: an entry was admitted after REDUCING"
            refused = [r for r in results[:6] if isinstance(r, EntryRefused)]
            assert all(r.reason == "reducing" for r in refused)
            for p in rows(Position, Position.status == "open"):
                execute_exit(get_runtime(), p.id)


def test_race_halt_checks_and_entries_never_two_sells_for_one_position(market, alerts, monkeypatch):
    """An operator's emergency stop, 2 risk checks and 6 entries at once, 20 rounds: nothing is admitted
    after HALTED commits; no buy reaches the broker unless it was claimed for sending before HALTED
    committed (a send claimed earlier may land just after: the stop never calls it cancelled, and the
    next check closes what it bought); every position is closed, none sold twice, no fill unrecorded."""
    claimed: list[set[str]] = []
    marks = admitted_before_halt(monkeypatch, claimed)
    late_total = 0
    with market(**loose()):
        rt = get_runtime()
        arrivals = buys_arriving(monkeypatch, rt)
        for rnd in range(ROUNDS):
            reset_to_active()
            before, arrived_before = len(marks), len(arrivals)
            held = [enter(s) for s in SYMBOLS[6:8]]  # open before the round: closed by whoever wins them

            def actor(i):
                if i == 0:
                    return guard.halt(rt, reason=f"round {rnd}", by="ops@desk", close_positions=True,
                                      dispatch=run_exits)
                if i <= 2:
                    return check()
                return enter(SYMBOLS[i - 3])

            results = race(9, actor)
            assert all(not isinstance(r, Exception) or isinstance(r, EntryRefused) for r in results), results
            halted_at = marks[before]
            entries = query(lambda s: s.scalars(select(Order.id).where(Order.purpose == "entry")).all())
            assert all(i <= halted_at for i in entries), f"round {rnd}: an entry was admitted after HALTED"
            late = {cid for cid, halted in arrivals[arrived_before:] if halted}
            assert late <= claimed[before], (f"round {rnd}: a buy reached the broker after HALTED committed without "
                                             f"a send claimed before it: {late - claimed[before]}")
            late_total += len(late)
            stops = [results[0]] + [r.stop for r in results[1:3] if r.stop is not None]
            cancelled = set().union(*(set(s.cancelled) for s in stops))
            bought = {o.client_order_id for o in rows(PaperOrder, PaperOrder.side == "buy")}
            assert not cancelled & bought, f"round {rnd}: reported cancelled but bought: {cancelled & bought}"
            check()  # the next scheduled check closes what filled after the stop
            assert rows(Position, Position.status == "open") == []
            for p in rows(Position, Position.status == "closing"):
                execute_exit(rt, p.id)
            assert {p.exit_reason for p in rows(Position, Position.id.in_([h.id for h in held]))} == {"emergency_stop"}
        counts = sells_per_position()
        assert counts and set(counts.values()) == {1}, counts
        assert len(counts) == len(rows(Position))
        unrecorded = rows(Order, Order.purpose == "entry", Order.filled_qty > 0, Order.position_id.is_(None))
        assert unrecorded == [], "a filled entry has no position"
        assert len(rows(PaperOrder, PaperOrder.side == "buy")) == len(rows(Position))
    print(f"halt race: {late_total} buys claimed before HALTED landed after it in {ROUNDS} rounds")


def test_race_two_deliveries_of_one_entry_and_a_halt_never_buy_twice_nor_report_a_bought_entry_cancelled(
        market, alerts, monkeypatch):
    """A redelivered entry task runs beside its first delivery while the operator's emergency stop runs, 20 rounds:
    at most one buy per entry; an entry the stop calls cancelled was never bought; whatever was bought is recorded
    and closed by the next check."""
    from catalyst.orders import OrderPending

    with market(**loose()):
        rt = get_runtime()
        buys_arriving(monkeypatch, rt)  # with the network's jitter
        for rnd in range(ROUNDS):
            reset_to_active()
            cid = f"manual-{uuid.uuid4().hex[:24]}"

            def actor(i):
                if i == 0:
                    return guard.halt(rt, reason=f"round {rnd}", by="ops@desk", close_positions=True,
                                      dispatch=run_exits)
                return open_position(rt, symbol=SYMBOLS[rnd % 6], qty=1, client_order_id=cid)

            results = race(3, actor)
            assert all(not isinstance(r, Exception) or isinstance(r, (EntryRefused, OrderPending)) for r in results), \
                results
            bought = rows(PaperOrder, PaperOrder.client_order_id == cid)
            assert len(bought) <= 1
            assert not (bought and cid in results[0].cancelled), f"round {rnd}: reported cancelled, but bought"
            check()
            assert rows(Position, Position.status == "open") == []
            if bought:
                (order,) = rows(Order, Order.client_order_id == cid)
                assert order.position_id is not None and order.status == "filled"
            for p in rows(Position, Position.status == "closing"):
                execute_exit(rt, p.id)
        counts = sells_per_position()
        assert set(counts.values()) <= {1} and len(counts) == len(rows(Position))


# -- max hold per strategy, and the close at the market's close ------------------------------------------------

HOLDS = {"CATALYST_MAX_HOLD_MINUTES": '{"opening_range_breakout": 30}', "CATALYST_MAX_HOLD_HOURS": "24"}


def test_a_positions_max_hold_comes_from_its_strategy_and_the_monitor_closes_it_then(market):
    from catalyst.monitor import check_position

    with market(**loose(**HOLDS)):
        orb = enter("AAA", reason="opening_range_breakout")
        other = enter("BBB", reason="momentum")
        assert orb.max_hold_seconds == 30 * 60 and orb.entry_reason == "opening_range_breakout"
        assert other.max_hold_seconds == 24 * 3600  # no minutes for momentum: the default hours
        assert check_position(get_runtime(), orb.id).action == "hold"  # 0 minutes held
    with market(start=SESSION_OPEN + timedelta(minutes=36), **loose(**HOLDS)):  # 31 minutes later
        outcome = check_position(get_runtime(), orb.id)
        assert (outcome.action, outcome.reason) == ("exit", "max_hold_time")
        assert check_position(get_runtime(), other.id).action == "hold"


@pytest.fixture
def quiet_day(tmp_path):
    """A whole flat session and one position bought at 09:45 (the replay CLI's positions file)."""
    return quiet_day_files(tmp_path)


@pytest.mark.parametrize("auto_close", [True, False])
def test_seed_003s_auto_close_at_market_close_closes_before_the_close_or_keeps_the_position(quiet_day, tmp_path,
                                                                                          auto_close):
    from catalyst.replay import run_replay

    config = tmp_path / "catalyst.yaml"
    config.write_text(f"trading_session:\n  auto_close_at_market_close: {str(auto_close).lower()}\n")
    (report,) = run_replay(*quiet_day, settings_env={"CATALYST_CONFIG": str(config)})
    if auto_close:
        assert (report["status"], report["exit_reason"]) == ("closed", "near_close")
        closed = datetime.fromisoformat(report["closed_at"])
        assert datetime(2025, 3, 4, 15, 45, tzinfo=EST) <= closed < datetime(2025, 3, 4, 16, 0, tzinfo=EST)
    else:
        assert report["status"] == "open" and report["exit_reason"] is None


# -- review findings: the send is claimed under the gate (H1), the stop closes first and survives a bad entry
# (H2), every stop is announced (M1), and the alert commits with the state it announces (M2) ------------------

def entry_status(cid: str) -> str:
    return query(lambda s: s.scalar(select(Order.status).where(Order.client_order_id == cid)))


def test_a_stop_between_the_entrys_admission_and_its_send_retires_it_and_no_buy_is_sent(market, alerts, monkeypatch):
    """The task re-read its intent (unsent) and is about to send it when the operator's emergency stop runs: the
    stop retires it ("cancelled"), so the send is refused: nothing reaches the broker, nothing opens."""
    import catalyst.entries as entries

    with market(**loose()):
        rt = get_runtime()
        real_read, stops, reads = entries._recorded_intent, [], []

        def read_then_halt(cid):
            intent = real_read(cid)
            reads.append(intent)
            if len(reads) == 2:  # the re-read after admission: the stop lands between it and the send
                stops.append(guard.halt(rt, reason="drill", by="ops@desk", close_positions=True, dispatch=run_exits))
            return intent

        monkeypatch.setattr(entries, "_recorded_intent", read_then_halt)
        cid = f"manual-{uuid.uuid4().hex[:24]}"
        with pytest.raises(EntryRefused) as refused:
            open_position(rt, symbol="AAA", qty=10, client_order_id=cid)
        assert refused.value.reason == "retired"
        assert reads[1].status == "pending_submit" and stops[0].cancelled == [cid]
        assert rows(PaperOrder, PaperOrder.side == "buy") == [] and rows(Position) == []
        assert entry_status(cid) == "canceled"


def test_a_send_claimed_before_the_stop_is_never_reported_cancelled_and_what_it_bought_is_closed(market, alerts):
    """The reviewer's case: the stop runs while the claimed send is on its way to the broker (here: inside the
    broker call). The stop cannot retire it and says so (unresolved, not cancelled); the fill becomes a recorded
    position (never 'canceled' with shares held), and the next check closes it once with emergency_stop."""
    with market(**loose()):
        rt = get_runtime()
        real_submit = rt.broker.submit_order
        stops = []

        def submit_after_a_halt(request):
            if request.side == "buy" and not stops:
                stops.append(guard.halt(rt, reason="drill", by="ops@desk", close_positions=True,
                                        dispatch=run_exits))
            return real_submit(request)

        rt.broker.submit_order = submit_after_a_halt
        cid = f"manual-{uuid.uuid4().hex[:24]}"
        position = open_position(rt, symbol="AAA", qty=10, client_order_id=cid)
        assert stops[0].cancelled == [] and stops[0].unresolved == [cid]
        assert entry_status(cid) == "filled" and position.status == "open"
        result = check()
        assert result.stop.closing == [position.id]
        assert query(lambda s: s.get(Position, position.id)).exit_reason == "emergency_stop"
        check()
        assert sells_per_position() == {position.id: 1}
        with pytest.raises(EntryRefused):
            enter("BBB")


class WorkerLost(Exception):
    """The process died here (the broker call never happened)."""


def crash_before_the_send(monkeypatch, rt) -> list[str]:
    """The next buy dies between its claim and the broker call; returns the ids that died."""
    real_submit, died = rt.broker.submit_order, []

    def submit(request):
        if request.side == "buy" and not died:
            died.append(request.client_order_id)
            raise WorkerLost(request.client_order_id)
        return real_submit(request)

    monkeypatch.setattr(rt.broker, "submit_order", submit)
    return died


def claimed_then_died(monkeypatch, rt) -> str:
    """An entry whose task claimed the send and died before the broker heard of it; its client order id."""
    crash_before_the_send(monkeypatch, rt)
    cid = f"manual-{uuid.uuid4().hex[:24]}"
    with pytest.raises(WorkerLost):
        open_position(rt, symbol="AAA", qty=10, client_order_id=cid)
    return cid


def test_a_task_retried_after_dying_between_claim_and_send_sends_once(market, alerts, monkeypatch):
    with market(**loose()):
        rt = get_runtime()
        cid = claimed_then_died(monkeypatch, rt)
        assert entry_status(cid) == "submitting"  # claimed: it may be at the broker, nobody may retire it
        position = open_position(rt, symbol="AAA", qty=10, client_order_id=cid)  # the retry resolves by client id
        again = open_position(rt, symbol="AAA", qty=10, client_order_id=cid)  # a redelivery adopts it
        assert again.id == position.id and entry_status(cid) == "filled"
        assert len(rows(PaperOrder, PaperOrder.side == "buy")) == 1


def test_a_claimed_entry_the_broker_never_got_is_left_to_its_task_and_retired_only_once_its_send_is_dead(
        market, alerts, monkeypatch):
    """HALTED lands after the claim, and the sender died: the stop cannot know the send is dead, so it reports
    the entry unresolved every check and never retires it. The task's retry does not send under HALTED; while the
    claim is fresh (a send may still be under way) it retries later, after the send grace it retires it."""
    from catalyst.entries import SEND_GRACE
    from catalyst.orders import OrderPending

    with market(**loose()):
        rt = get_runtime()
        cid = claimed_then_died(monkeypatch, rt)
        stop = guard.halt(rt, reason="drill", by="ops@desk", close_positions=True, dispatch=run_exits)
        assert (stop.cancelled, stop.unresolved) == ([], [cid])
        assert check().stop.unresolved == [cid] and entry_status(cid) == "submitting"
        with pytest.raises(OrderPending):
            open_position(rt, symbol="AAA", qty=10, client_order_id=cid)
        with session_scope() as s:  # the claim is older than any send can take
            s.execute(update(Order).where(Order.client_order_id == cid).values(
                submitted_at=rt.clock.now() - SEND_GRACE - timedelta(seconds=1)))
        with pytest.raises(EntryRefused) as refused:
            open_position(rt, symbol="AAA", qty=10, client_order_id=cid)
        assert refused.value.reason == "halted" and entry_status(cid) == "canceled"
        assert rows(PaperOrder, PaperOrder.side == "buy") == []
        assert check().stop.unresolved == []


def test_a_claimed_entry_sent_before_its_task_died_is_found_filled_by_the_stop_and_closed_at_once(
        market, alerts, monkeypatch):
    """The buy reached the broker and filled, then the task died before recording it: the stop finds it by
    client id, records the position (filled first) and closes it in the same stop; the task's retry adopts it."""
    from catalyst import orders

    with market(**loose()):
        rt = get_runtime()
        cid = f"manual-{uuid.uuid4().hex[:24]}"
        real_submit = orders.submit

        def submit_then_die(*args, **kwargs):
            real_submit(*args, **kwargs)
            raise WorkerLost("after the send")

        monkeypatch.setattr(orders, "submit", submit_then_die)
        with pytest.raises(WorkerLost):
            open_position(rt, symbol="AAA", qty=10, client_order_id=cid)
        monkeypatch.setattr(orders, "submit", real_submit)
        assert rows(Position) == [] and len(rows(PaperOrder, PaperOrder.side == "buy")) == 1
        stop = guard.halt(rt, reason="drill", by="ops@desk", close_positions=True, dispatch=run_exits)
        (position,) = rows(Position)
        assert stop.filled_first == [cid] and stop.closing == [position.id] and stop.cancelled == []
        assert query(lambda s: s.get(Position, position.id)).status == "closed"
        assert open_position(rt, symbol="AAA", qty=10, client_order_id=cid).id == position.id  # the retry adopts
        assert sells_per_position() == {position.id: 1}
        assert len(rows(PaperOrder, PaperOrder.side == "buy")) == 1


def test_a_retired_entry_the_broker_filled_anyway_is_recorded_loudly_and_closed(market, alerts):
    """Defence in depth: a report that contradicts a retirement (a sender stalled past every grace) is the
    broker's word: the fill is recorded as a position, loudly, and the next check closes it."""
    from structlog.testing import capture_logs

    from catalyst import orders
    from catalyst.brokers.base import OrderRequest
    from catalyst.entries import open_from_fill

    with market(**loose()):
        rt = get_runtime()
        cid = in_flight_entry("AAA")
        assert guard.halt(rt, reason="drill", by="ops@desk", close_positions=True,
                          dispatch=run_exits).cancelled == [cid]
        with capture_logs() as logs:
            report = orders.submit(rt, OrderRequest(cid, "AAA", "buy", 1), accept_partial=True)
            position = open_from_fill(rt, cid, report)
        revived = [e for e in logs if e["event"] == "retired_entry_filled_at_broker"]
        assert revived and revived[0]["client_order_id"] == cid and revived[0]["log_level"] == "error"
        assert entry_status(cid) == "filled" and position.status == "open"
        assert check().stop.closing == [position.id]
        assert sells_per_position() == {position.id: 1}


def test_one_entry_the_broker_cannot_describe_does_not_stop_the_positions_closing(market, alerts):
    """The reviewer's case: one entry whose lookup fails in an unexpected way (a parser meeting an unexpected
    payload) must not abort the stop: the positions close at the first check, the entry is left unresolved."""
    with market(**loose()):
        rt = get_runtime()
        held = enter("AAA", qty=100)
        mark(held.id, PRICE - 10.0)  # 1,000 lost: the limit
        cid = in_flight_entry("BBB")
        real_get = rt.broker.get_order

        def get_order(client_order_id):
            if client_order_id == cid:
                raise KeyError("filled_avg_price")
            return real_get(client_order_id)

        rt.broker.get_order = get_order
        result = check()
        assert result.change == "halt" and result.stop.closing == [held.id] and result.stop.unresolved == [cid]
        assert query(lambda s: s.get(Position, held.id)).status == "closed"
        assert check().stop.unresolved == [cid]  # retried every check, never crashing it


def test_a_fill_reported_without_a_price_does_not_stop_the_positions_closing(market, alerts):
    """A filled entry reported without its average price (open_from_fill cannot use it): the positions close anyway."""
    from dataclasses import replace

    from catalyst.brokers.base import OrderRequest

    with market(**loose()):
        rt = get_runtime()
        held = enter("AAA", qty=100)
        cid = in_flight_entry("BBB")
        rt.broker.submit_order(OrderRequest(cid, "BBB", "buy", 1))  # it reached the broker and filled
        real_get = rt.broker.get_order
        rt.broker.get_order = lambda c: replace(real_get(c), filled_avg_price=None) if c == cid else real_get(c)
        stop = guard.halt(rt, reason="drill", by="ops@desk", close_positions=True, dispatch=run_exits)
        assert stop.closing == [held.id] and stop.unresolved == [cid]
        assert query(lambda s: s.get(Position, held.id)).status == "closed"


def test_the_stop_sends_every_position_to_its_exit_before_it_waits_on_any_entry_cancel(market, alerts):
    """Cancelling a working entry waits for the broker (up to 2 s each): the exits go first."""
    from catalyst.brokers.base import BrokerOrderReport

    with market(**loose()):
        rt = get_runtime()
        held = [enter("AAA"), enter("BBB")]
        entries = [in_flight_entry(s) for s in ("CCC", "DDD")]
        events = []
        working = {cid: BrokerOrderReport(f"b-{cid}", cid, "CCC", "buy", 1, "new") for cid in entries}
        real_get, real_by_id = rt.broker.get_order, rt.broker.get_order_by_id
        rt.broker.get_order = lambda c: working.get(c) or real_get(c)
        rt.broker.get_order_by_id = lambda b: next((r for r in working.values() if r.broker_order_id == b), None) \
            or real_by_id(b)

        def cancel(broker_order_id):
            events.append(("cancel", broker_order_id))
            return None

        rt.broker.cancel_order = cancel

        def dispatch(position_id):
            events.append(("exit", position_id))
            run_exits(position_id)

        stop = guard.halt(rt, reason="drill", by="ops@desk", close_positions=True, dispatch=dispatch)
        assert [kind for kind, _ in events] == ["exit", "exit", "cancel", "cancel"], events
        assert stop.closing == [p.id for p in held] and stop.unresolved == entries


def test_a_second_emergency_stop_on_the_same_day_is_announced(market, alerts):
    """The limit is hit, the operator raises max_daily_loss_usd and resumes, and the day's loss reaches the new
    limit: the second emergency stop is announced too (one alert per state write)."""
    with market(**loose()):
        realized_today(-1000.0)
        assert check().change == "halt"
    with market(**loose(CATALYST_MAX_DAILY_LOSS_USD="3000")):
        guard.resume(get_runtime(), by="ops@desk")
        p = enter("AAA", qty=100)
        mark(p.id, PRICE - 20.0)  # 1,000 realized + 2,000 unrealized = the new limit
        second = check()
        assert second.change == "halt" and second.stop.closing == [p.id]
        assert check().change is None
        assert [e for e, _, _ in alerts()] == ["emergency_stop", "trading_resumed", "emergency_stop"]
        assert len({k for _, _, k in alerts()}) == 3


def test_a_second_warning_on_the_same_day_is_announced(market, alerts):
    with market(**loose()):
        realized_today(-800.0)
        assert check().change == "reduce"
        guard.resume(get_runtime(), by="ops@desk")
        assert check().change == "reduce"
        assert [e for e, _, _ in alerts()] == ["daily_loss_warning", "trading_resumed", "daily_loss_warning"]


@pytest.fixture
def alerts_when_the_state_commits(alerts):
    """The guard's alerts as committed at the instant each transaction that wrote the trading state commits:
    what survives a worker that dies right then (before anything after the commit runs)."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    seen: list[list[tuple[str, str, str]]] = []

    def before(session, *_):
        if any(isinstance(o, StateRow) and o.key == "halted" for o in (*session.new, *session.dirty)):
            session.info["state_written"] = True

    def after(session):
        if session.get_nested_transaction() is not None:
            return  # a savepoint released: the outer transaction has not committed yet
        if session.info.pop("state_written", False):
            seen.append(alerts())  # a fresh session: only what is committed

    event.listen(Session, "before_flush", before)
    event.listen(Session, "after_commit", after)
    yield seen
    event.remove(Session, "before_flush", before)
    event.remove(Session, "after_commit", after)


@pytest.mark.parametrize("act", ["check", "halt", "resume"])
def test_the_alert_commits_with_the_state_it_announces(market, alerts, alerts_when_the_state_commits, monkeypatch,
                                                       act):
    """A worker that dies right after the state commits has still recorded its alert (pending, for the minute's
    sweep to deliver): it was written in the same transaction as the state."""
    from catalyst import notify

    queued = []
    with market(**loose(CATALYST_WEBHOOK_URL="http://127.0.0.1:9/hook")):
        rt = get_runtime()
        if act == "resume":
            with session_scope() as s:
                s.add(StateRow(key="halted", value={"halted": True, "state": "HALTED", "reason": "drill"},
                               updated_at=rt.clock.now()))
            alerts_when_the_state_commits.clear()
        realized_today(-1000.0)
        monkeypatch.setattr(notify, "enqueue_delivery", lambda nid, countdown=None: queued.append(nid))
        if act == "check":
            check()
        elif act == "halt":
            guard.halt(rt, reason="drill", by="ops@desk", close_positions=False, dispatch=run_exits)
        else:
            guard.resume(rt, by="ops@desk")
        event = {"check": "emergency_stop", "halt": "trading_halted", "resume": "trading_resumed"}[act]
        assert [[e for e, _, _ in seen] for seen in alerts_when_the_state_commits] == [[event]]
        (row,) = rows(Notification, Notification.event == event)
        assert row.status == "pending"
        notify.flush()
        assert queued == [row.id]  # queued once, after the commit


def test_a_state_write_that_rolls_back_leaves_no_alert(market, alerts, monkeypatch):
    with market(**loose()):
        realized_today(-1000.0)

        def fail(*a, **kw):
            raise RuntimeError("the decision could not be written")

        monkeypatch.setattr(guard, "record_decision", fail)
        with pytest.raises(RuntimeError):
            check()
        assert alerts() == [] and query(lambda s: s.get(StateRow, "halted")) is None


def test_an_alert_that_cannot_be_recorded_never_blocks_the_stop(market, alerts, monkeypatch):
    """The outbox write fails (after inserting part of its rows): rolled back to its savepoint, HALTED commits."""
    from catalyst import notify

    real_insert = notify._insert

    def insert_then_fail(s, alert, pending):
        real_insert(s, alert, pending)
        raise RuntimeError("the notifications table refused it")

    monkeypatch.setattr(notify, "_insert", insert_then_fail)
    with market(**loose()):
        p = enter("AAA")
        stop = guard.halt(get_runtime(), reason="drill", by="ops@desk", close_positions=True, dispatch=run_exits)
        assert state()["state"] == "HALTED" and stop.closing == [p.id]
        assert alerts() == [] and [d.action for d in risk_decisions()] == ["halt"]


def test_the_guard_judges_the_market_as_it_is_now_not_as_the_last_check_saw_it(pg_url, tmp_path):
    """A flash crash between two monitor checks: the guard halts on the current quote, without waiting for the
    position's next check to mark it down."""
    closes = [PRICE] * 10 + [PRICE * 0.7] * 30  # 30 % down from 09:40
    path = write_replay_csv(tmp_path / "DROP.csv", "DROP", SESSION_OPEN, closes)
    env = {"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"), "CATALYST_MARKET_DATA": f"replay:{path}",
           **LIMIT, "CATALYST_MAX_POSITION_VALUE_USD": "100000", "CATALYST_MAX_DAILY_LOSS_USD": "10000",
           "CATALYST_STOP_LOSS_PCT": "0.15", "CATALYST_TAKE_PROFIT_PCT": "0.3"}
    with environment(env):
        clock = ManualClock(SESSION_OPEN + timedelta(minutes=5))
        use_runtime(build_runtime(get_settings(), clock))
        position = enter("DROP", qty=1000)  # 50,000 USD, 7,500 at risk to its stop: inside the 10,000 limit
        clock.set(SESSION_OPEN + timedelta(minutes=9, seconds=30))
        with session_scope() as s:  # the monitor's last check, at 09:39:30, saw 50
            s.add(PositionMonitorStatus(position_id=position.id, symbol="DROP", last_check_at=clock.now(),
                                        price=PRICE, checks=1, updated_at=datetime.now(UTC)))
            s.execute(update(Position).where(Position.id == position.id).values(last_price=PRICE))
        clock.set(SESSION_OPEN + timedelta(minutes=11, seconds=5))  # 09:41:05: the 09:40 bar closed at 35
        result = check()
        assert result.state is TradingState.HALTED, "a 15,000 USD loss on the current quote breaks the limit"
        assert query(lambda s: s.get(Position, position.id).status) == "closed"
        assert state()["daily_pnl"]["unrealized"] == pytest.approx(-15_000.0)
