"""An entry cannot buy what our books don't record, nor take an id another path owns (issue 8, points 3-4).

Real PostgreSQL, the paper broker (its book lives in its own tables, like a remote broker's),
flat replayed prices and a simulated clock. The ``enter_position`` task runs in-process with
``apply`` (the message it would get from the queue). After every refusal the broker's holdings
must equal our open positions, symbol by symbol ("broker 19 shares, books 15" must never happen).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from catalyst.db.engine import session_scope
from catalyst.db.models import Decision, Order, PaperOrder, PaperPosition, Position, ScanResult, Security
from catalyst.db.models import TradingCycle
from catalyst.core.domain import BadInput
from catalyst.entries import open_position
from catalyst.positions import execute_exit
from catalyst.runtime import get_runtime
from tests.support import environment, rows, write_replay_csv

pytestmark = pytest.mark.postgres

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
SYMBOLS = ["AAA", "BBB", "CCC"]
PRICE = 50.0


@pytest.fixture
def market(pg_url, tmp_path):
    """This process on the test database, flat prices in three symbols, five minutes into the session."""
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [PRICE] * 240)) for s in SYMBOLS]
    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                      "CATALYST_MARKET_DATA": "replay:" + ",".join(paths),
                      "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=5)).isoformat()}@1"}):
        yield pg_url


def broker_holdings() -> dict[str, float]:
    return {p.symbol: p.qty for p in rows(PaperPosition) if p.qty}


def book_holdings() -> dict[str, float]:
    held = defaultdict(float)
    for p in rows(Position, Position.status != "closed"):
        held[p.symbol] += p.qty
    return dict(held)


def enter_task(**kwargs):
    from tasks.trading import enter_position

    return enter_position.apply(kwargs=kwargs)


def manual_id() -> str:
    return f"manual-{uuid.uuid4().hex[:24]}"  # the form `catalyst open` sends


def a_cycle() -> int:
    """A scanned cycle (one AAA candidate), as the scanner leaves it."""
    now = get_runtime().clock.now()
    with session_scope() as s:
        cycle = TradingCycle(slot_at=now, market="US", status="scanned", candidates=1, started_at=now)
        s.add(cycle)
        s.flush()
        security = Security(symbol="AAA", exchange="XNYS", created_at=now)
        s.add(security)
        s.flush()
        s.add(ScanResult(cycle_id=cycle.id, security_id=security.id, symbol="AAA", rank=1, score=9.0, price=PRICE,
                         change_pct=5.0, volume=1e6, relative_volume=2.0, rsi=50.0, created_at=now))
        return cycle.id


def assert_refused(result, *fragments: str) -> None:
    assert result.failed(), f"expected a refusal, got {result.result!r}"
    assert isinstance(result.result, BadInput), f"{type(result.result).__name__}: {result.result}"
    for fragment in fragments:
        assert fragment in str(result.result), f"{fragment!r} not in {result.result}"


# -- point 3: nothing is bought that our books do not record ---------------------------------------------

@pytest.mark.parametrize("with_id", [True, False], ids=["its-derived-id", "no-id"])
def test_an_entry_for_a_cycle_that_does_not_exist_is_refused_before_anything_is_sent(market, with_id):
    open_position(get_runtime(), symbol="AAA", qty=15, client_order_id=manual_id())
    kwargs = {"symbol": "BBB", "qty": 4, "cycle_id": 777, "reason": "momentum"}
    if with_id:
        kwargs["client_order_id"] = "entry-c777-BBB"

    assert_refused(enter_task(**kwargs), "cycle", "777")

    assert broker_holdings() == book_holdings() == {"AAA": 15}
    assert [o.symbol for o in rows(PaperOrder)] == ["AAA"]
    assert [o.symbol for o in rows(Order)] == ["AAA"], "no intent row is written for a refused entry"
    assert [d.reason for d in rows(Decision)] == ["manual"], "a refusal of bad input is not a trading decision"


def test_an_overlong_reason_is_refused_before_anything_is_sent(market):
    open_position(get_runtime(), symbol="AAA", qty=15, client_order_id=manual_id())

    assert_refused(enter_task(symbol="BBB", qty=4, reason="r" * 100), "reason", "64")

    assert broker_holdings() == book_holdings() == {"AAA": 15}
    assert [o.symbol for o in rows(PaperOrder)] == ["AAA"]
    assert [o.symbol for o in rows(Order)] == ["AAA"]


def test_open_position_refuses_an_overlong_reason_before_anything_is_sent(market):
    """The core refuses it too: reconciliation and the CLI reach ``open_position`` without the task."""
    with pytest.raises(BadInput, match="reason"):
        open_position(get_runtime(), symbol="BBB", qty=4, client_order_id=manual_id(), reason="r" * 65)
    assert rows(PaperOrder) == [] and rows(Order) == []


FAILURES_AFTER_THE_FILL = {
    # an integrity error that is not "another run opened this position": a CHECK on the activity log
    "integrity": ("ALTER TABLE activity_log ADD CONSTRAINT drill_no_opening CHECK (event <> 'position_opened')",
                  "ALTER TABLE activity_log DROP CONSTRAINT drill_no_opening"),
    # any other database error in the same transaction (a trigger raising)
    "other": ("CREATE FUNCTION drill_refuse() RETURNS trigger LANGUAGE plpgsql AS "
              "$$ BEGIN RAISE EXCEPTION 'drill: positions are read-only'; END $$; "
              "CREATE TRIGGER drill_refuse BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION drill_refuse()",
              "DROP TRIGGER drill_refuse ON positions; DROP FUNCTION drill_refuse()"),
}


def admin(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.mark.parametrize("failure", sorted(FAILURES_AFTER_THE_FILL))
def test_a_failure_after_the_fill_leaves_the_entry_retrying_and_the_retry_records_the_position(market, failure):
    from tasks.trading import enter_position

    break_sql, mend_sql = FAILURES_AFTER_THE_FILL[failure]
    client_order_id = manual_id()
    admin(market, break_sql)
    try:
        with pytest.raises(Exception) as raised:
            open_position(get_runtime(), symbol="AAA", qty=19, client_order_id=client_order_id)
    finally:
        admin(market, mend_sql)
    assert isinstance(raised.value, enter_position.autoretry_for), \
        f"the task must retry, not fail for good: {type(raised.value).__name__}: {raised.value}"
    assert broker_holdings() == {"AAA": 19}, "the broker did fill: that is the point of the drill"
    (intent,) = rows(Order, Order.client_order_id == client_order_id)
    assert intent.position_id is None and intent.filled_qty == 19

    position = open_position(get_runtime(), symbol="AAA", qty=19, client_order_id=client_order_id)  # the retry

    assert position is not None and position.qty == 19
    assert broker_holdings() == book_holdings() == {"AAA": 19}
    assert len(rows(PaperOrder)) == 1, "the retry adopts the filled order, it never buys twice"


def test_a_second_run_adopts_the_position_the_first_run_opened(market):
    client_order_id = manual_id()
    first = open_position(get_runtime(), symbol="AAA", qty=10, client_order_id=client_order_id)
    again = open_position(get_runtime(), symbol="AAA", qty=10, client_order_id=client_order_id)
    assert again.id == first.id
    assert broker_holdings() == book_holdings() == {"AAA": 10}


class NotYetSent:
    """The paper broker as a second delivery saw it: asked about the order just before the first delivery sent it."""

    def __init__(self, broker):
        self.inner, self.name, self.supports_legs = broker, broker.name, broker.supports_legs
        self.asked = 0

    def get_order(self, client_order_id: str):
        self.asked += 1
        return None if self.asked == 1 else self.inner.get_order(client_order_id)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_delivery_that_finds_its_entry_filled_by_a_concurrent_one_adopts_it(market, monkeypatch):
    """Two deliveries of one entry: the second read the intent unsent and asked the broker before the first sent it;
    by the time it holds the gate the first has filled. It adopts that fill, never calls it 'retired'."""
    import catalyst.entries as entries

    client_order_id = manual_id()
    rt = get_runtime()
    entries.admit_entry(rt, client_order_id=client_order_id, symbol="AAA", qty=10, price=PRICE, stop=45.0, target=60.0,
                        cycle_id=None, worker=None)
    seen_unsent = entries._recorded_intent(client_order_id)  # what the second delivery read
    first = open_position(rt, symbol="AAA", qty=10, client_order_id=client_order_id)

    reads = iter([seen_unsent])
    monkeypatch.setattr(entries, "_recorded_intent", lambda cid: next(reads, None) or _intent(cid))
    monkeypatch.setattr(rt, "broker", NotYetSent(rt.broker))
    second = open_position(rt, symbol="AAA", qty=10, client_order_id=client_order_id)

    assert second.id == first.id
    assert [d.reason for d in rows(Decision)] == ["manual"], "no 'retired' refusal is recorded"
    assert broker_holdings() == book_holdings() == {"AAA": 10}
    assert len(rows(PaperOrder)) == 1


def _intent(client_order_id: str):
    (order,) = rows(Order, Order.client_order_id == client_order_id)
    return order


# -- point 4: an entry cannot take an id another path owns --------------------------------------------------

def test_an_entry_cannot_take_another_positions_exit_id_and_that_position_still_sells(market):
    held = open_position(get_runtime(), symbol="AAA", qty=15, client_order_id=manual_id())

    assert_refused(enter_task(symbol="BBB", qty=4, client_order_id=f"exit-p{held.id}"), "client_order_id")
    assert rows(Order, Order.client_order_id == f"exit-p{held.id}") == []

    closed = execute_exit(get_runtime(), held.id)
    assert closed.status == "closed"
    assert broker_holdings() == book_holdings() == {}, "the exit sold AAA instead of adopting a buy of BBB"


FOREIGN_IDS = {
    "exit": "exit-p1",
    "exit-follow-up": "exit-p1-2",
    "standalone-stop": "stop-p1-1",
    "broker-leg": "7f0d1c4e-3f5b-4c41-9d0e-2a1b3c4d5e6f",
    "cycle-entry-without-cycle": "entry-c1-AAA",
    "other-symbol": "entry-c1-BBB",
    "other-cycle": "entry-c2-AAA",
    "manual-not-hex": "manual-zzzzzzzzzzzzzzzzzzzzzzzz",
    "manual-short": "manual-abc",
    "manual-upper": "manual-" + "A" * 24,
    "manual-trailing-space": manual_id() + " ",
    "free-text": "my-own-order",
    "empty": "",
    "overlong": "manual-" + "a" * 60,
    "not-text": 12345,
}


@pytest.mark.parametrize("label", sorted(FOREIGN_IDS))
def test_a_client_order_id_outside_the_entrys_own_namespace_is_refused_and_writes_nothing(market, label):
    cycle_id = a_cycle()
    with_cycle = label in ("other-symbol", "other-cycle")
    result = enter_task(symbol="AAA", qty=4, client_order_id=FOREIGN_IDS[label],
                        **({"cycle_id": cycle_id, "reason": "momentum"} if with_cycle else {}))
    assert_refused(result, "client_order_id")
    assert rows(Order) == [] and rows(PaperOrder) == [] and rows(Position) == [] and rows(Decision) == []


def test_entries_under_their_own_ids_are_accepted(market):
    """Controls: the scanner's derived id, the CLI's manual id, and no id at all (derived from the task)."""
    cycle_id = a_cycle()
    scanned = enter_task(symbol="AAA", qty=4, cycle_id=cycle_id, client_order_id=f"entry-c{cycle_id}-AAA",
                         reason="momentum")
    assert scanned.successful(), scanned.traceback
    manual = enter_task(symbol="BBB", qty=4, client_order_id=manual_id())
    assert manual.successful(), manual.traceback
    derived = enter_task(symbol="CCC", qty=4)
    assert derived.successful(), derived.traceback
    (ccc,) = rows(Order, Order.symbol == "CCC")
    assert ccc.client_order_id.startswith("manual-")
    assert broker_holdings() == book_holdings() == {"AAA": 4, "BBB": 4, "CCC": 4}


def test_an_exit_never_adopts_an_order_of_another_kind_under_its_id(market):
    """Defence in depth behind the task's check: a buy recorded under exit-p<id> (a row written by hand, or by
    an older version) is not adopted by that position's exit."""
    from catalyst.orders import ensure_order

    held = open_position(get_runtime(), symbol="AAA", qty=15, client_order_id=manual_id())
    now = get_runtime().clock.now()
    ensure_order(f"exit-p{held.id}", symbol="BBB", side="buy", purpose="entry", qty=4, now=now)
    with pytest.raises(Exception, match="not adopted"):
        execute_exit(get_runtime(), held.id)
    assert broker_holdings() == {"AAA": 15}
