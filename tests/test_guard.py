"""The daily-loss guard on real PostgreSQL (issue 9): catalyst.guard against the paper broker.

Prices are replayed flat at 50; a position's loss is set the way the monitor sets it, through its
last price (``positions.last_price``), and a realized loss through a position closed today. The
limit is 1,000 USD with the warning at 75 % (750 USD). Exits run in-process through the same
``execute_exit`` the exit task runs. Races use real threads released together, many rounds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from catalyst import guard
from catalyst.core.risk import TradingState
from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, Order, PaperOrder, Position, Security
from catalyst.db.models import TradingState as StateRow
from catalyst.entries import EntryRefused, open_position
from catalyst.positions import execute_exit
from catalyst.runtime import get_runtime
from tests.support import environment, query, race, rows, write_replay_csv

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


@pytest.fixture
def alerts(monkeypatch):
    sent = []
    monkeypatch.setattr(guard, "notify", lambda event, severity, title, text, **kw: sent.append(
        (event, severity, kw.get("dedupe_key"))))
    return sent


def enter(symbol: str, qty: float = QTY, **kw) -> Position:
    return open_position(get_runtime(), symbol=symbol, qty=qty, client_order_id=f"manual-{uuid.uuid4().hex[:24]}",
                         **kw)


def mark(position_id: int, price: float) -> None:
    """The monitor's mark: what today's unrealized P&L is computed from."""
    with session_scope() as s:
        s.execute(update(Position).where(Position.id == position_id).values(last_price=price))


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
        assert risk_decisions() == [] and alerts == []
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
        assert alerts == [("daily_loss_warning", "warning", "daily_loss_warning:2025-03-04")]
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
        assert alerts == [("emergency_stop", "critical", "emergency_stop:2025-03-04")]
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


def admitted_before_halt(monkeypatch) -> list[int]:
    """The highest entry order id at the moment each HALTED/REDUCING state was written (same transaction)."""
    marks: list[int] = []
    write = guard._write

    def probe(s, state, **kw):
        if state is not TradingState.ACTIVE:
            marks.append(s.scalar(select(func.coalesce(func.max(Order.id), 0)).where(Order.purpose == "entry")))
        return write(s, state, **kw)

    monkeypatch.setattr(guard, "_write", probe)
    return marks


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
    after HALTED commits, every position is closed, and none is sold twice."""
    marks = admitted_before_halt(monkeypatch)
    with market(**loose()):
        rt = get_runtime()
        for rnd in range(ROUNDS):
            reset_to_active()
            before = len(marks)
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
            check()  # the next scheduled check closes what filled after the stop
            assert rows(Position, Position.status == "open") == []
            for p in rows(Position, Position.status == "closing"):
                execute_exit(rt, p.id)
            assert {p.exit_reason for p in rows(Position, Position.id.in_([h.id for h in held]))} == {"emergency_stop"}
        counts = sells_per_position()
        assert counts and set(counts.values()) == {1}, counts
        assert len(counts) == len(rows(Position))


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
    data = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, [100.0 + 0.01 * (i % 2) for i in range(390)])
    positions = tmp_path / "p.csv"
    positions.write_text("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\n"
                         "TEST,10,2025-03-04T09:45:00-05:00,100,,\n")
    return str(data), str(positions)


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
