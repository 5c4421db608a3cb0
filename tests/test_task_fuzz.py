"""Hostile task arguments through real Redis to a real worker process change nothing (issue 8, "Tests that must exist").

Hypothesis builds calls of every task — scan_market, evaluate_candidates, enter_position,
monitor_position, exit_position, heartbeat, reconcile — each with at least one hostile argument:
wrong types, bools, NaN and infinities, huge and negative numbers, unicode digits, overlong or
control-character text, another path's client order id, unknown ids, unknown keyword arguments,
missing or surplus arguments. Each batch is published to the test Redis as production does and
consumed by a real ``celery worker`` process (prefork, the production configuration plus a Redis
result backend so each outcome can be read). Seven positions are open (a digit misread as 6 or 7
would close a real one) and one scanned cycle exists.

For every call: it fails with a ``BadInput`` (or a subclass), no business row changes (the
service's error counter, agent logs and lock rows may) and the paper broker's book is untouched;
after all of them the worker is the same process with the same pool children and still works.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from importlib import import_module

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from catalyst.db.engine import session_scope
from catalyst.db.models import Base, ScanResult, Security, ServiceHealth, TradingCycle
from catalyst.core.domain import BadInput
from catalyst.entries import open_position
from catalyst.runtime import get_runtime
from tests.support import environment, query, wait_for, write_replay_csv

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
PRICE = 50.0
HELD = ["HA", "HB", "HC", "HD", "HE", "HF", "HG"]  # positions 1..7
FREE = "FREE"  # known to market data, held by nobody: a valid entry in it would buy
KNOWN = set(HELD) | {FREE}
BATCH, EXAMPLES = 50, 40  # 2,000 calls
MIN_CASES = 1000
# Everything the books and the broker hold. Not here: service_health (error counters), agent_logs, and
# leases (a monitor check of an unknown position takes and releases its lock row).
BUSINESS_TABLES = ["positions", "orders", "decisions", "securities", "trading_cycles", "scan_results",
                   "paper_orders", "paper_positions", "paper_account", "position_monitor_status", "activity_log",
                   "indicator_snapshots", "advisor_usage", "advisor_cycles", "schedule_entries", "trading_state"]


# -- what is valid, and what is hostile ------------------------------------------------------------------------

MAX_ROW_ID = 2**31 - 1
VALID_SLOT = "2025-03-04T14:40:00+00:00"


def is_plain_id(value) -> bool:
    """What a task may accept as a row id (an independent statement of the rule, not the parser)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(re.fullmatch(r"[0-9]{1,10}", value)) and 1 <= int(value) <= MAX_ROW_ID
    return isinstance(value, int) and 1 <= value <= MAX_ROW_ID


def may_be_a_slot(value) -> bool:
    """Generous: anything Python can read as an aware timestamp in a sane year (kept out of the hostile set)."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return parsed.tzinfo is not None and 1970 <= parsed.year < 2200


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12))
containers = st.one_of(st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=6), json_scalars,
                                                                           max_size=3))
huge_ints = st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**400, -(10**400), -(2**31)])
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
unicode_digits = st.text(st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=6)

hostile_id = st.one_of(
    st.booleans(), st.none(), st.floats(allow_nan=True), st.integers(max_value=0), st.integers(min_value=2**31),
    huge_ints, non_finite, unicode_digits, st.integers(min_value=2**31, max_value=10**30).map(str),
    st.sampled_from(["0", "00", "", " 1", "1 ", "+1", "-1", "1e3", "0x1", "1_0", "²", "⑴", "６", "٧", "１２"]),
    st.text(max_size=20), containers,
).filter(lambda v: not is_plain_id(v))
unknown_id = st.sampled_from([424242, MAX_ROW_ID, "999999", 8, "8"])  # well-formed, nothing by that id


def not_none(value) -> bool:
    return value is not None  # an optional argument may be absent: None is valid there


def hostile_number(high: float, low: float = 0.0, inclusive_low: bool = False):
    bad = st.one_of(
        st.booleans(), st.none(), st.text(max_size=12), containers, non_finite, huge_ints,
        st.integers(max_value=0), st.floats(max_value=0.0), st.floats(min_value=high, exclude_min=True),
        st.integers(min_value=int(high) + 1), st.sampled_from(["5", "1e3", "nan", "inf", "true"]),
    )
    if low > 0:
        bad = st.one_of(bad, st.floats(min_value=0.0, max_value=low, exclude_min=True, exclude_max=True))
    return bad


hostile_qty = hostile_number(1e9, low=1e-6)
# Prices also fail against the market: a stop at or above the price, a target at or below it.
hostile_stop = st.one_of(hostile_number(1e7), st.floats(min_value=PRICE, max_value=1e7)).filter(not_none)
hostile_target = st.one_of(hostile_number(1e7), st.floats(min_value=1e-3, max_value=PRICE)).filter(not_none)

hostile_symbol = st.one_of(
    st.booleans(), st.none(), st.integers(), st.floats(allow_nan=True), containers,
    st.text(max_size=40), st.text(st.characters(categories=("Lu", "Ll", "Nd")), min_size=1, max_size=20),
    st.sampled_from(["", " FREE", "FREE ", "FR EE", "ＦＲＥＥ", "fRee\x00", "FREE\n", "A" * 17, "ZZZZ", "../etc"]),
).filter(lambda v: not (isinstance(v, str) and v.upper() in KNOWN))

hostile_reason = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=True), containers,
    st.text(min_size=65, max_size=300), st.just(""), st.sampled_from(["x" * 100, "mo\x00mentum", "\ud800", "a\nb"]),
    st.text(st.characters(categories=("Cc", "Cs", "Co")), min_size=1, max_size=10),
)

other_namespace = st.one_of(
    st.integers(1, 99).map(lambda n: f"exit-p{n}"), st.tuples(st.integers(1, 99), st.integers(2, 10))
    .map(lambda t: f"exit-p{t[0]}-{t[1]}"), st.tuples(st.integers(1, 99), st.integers(1, 9))
    .map(lambda t: f"stop-p{t[0]}-{t[1]}"), st.uuids().map(str),
)
hostile_client_order_id = st.one_of(
    other_namespace, st.integers(), st.booleans(), containers, st.just(""), st.text(min_size=49, max_size=80),
    st.text(max_size=48).filter(lambda t: not re.fullmatch(r"manual-[0-9a-f]{24}|entry-c.*", t)),
    st.integers(900, 999).map(lambda n: f"entry-c{n}-FREE"),  # a cycle entry's id, never this entry's
)

hostile_slot = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=True), containers, st.text(max_size=50), st.just(""),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: no offset
    st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "1900-01-01T00:00:00+00:00",
                     "２０２５-03-04T14:40:00+00:00", "2025-03-04T14:40:00+24:00", VALID_SLOT + " " * 40,
                     "2025-03-04T14:40:00+00:00\x00"]),
).filter(lambda v: not may_be_a_slot(v))


class Param:
    def __init__(self, name: str, valid, hostile, required: bool = False):
        self.name, self.valid, self.hostile, self.required = name, valid, hostile, required


def task_params(cycle_id: int) -> dict[str, list[Param]]:
    slot = Param("slot", st.sampled_from([None, VALID_SLOT]), hostile_slot)
    return {
        "catalyst.scan_market": [slot],
        "catalyst.evaluate_candidates": [Param("cycle_id", st.just(cycle_id), st.one_of(hostile_id, unknown_id), True)],
        "catalyst.enter_position": [
            Param("symbol", st.sampled_from([FREE, FREE.lower()]), hostile_symbol, True),
            Param("qty", st.one_of(st.integers(1, 100), st.floats(0.5, 100)), hostile_qty, True),
            Param("stop", st.sampled_from([None, 40.0, 45]), hostile_stop),
            Param("target", st.sampled_from([None, 60.0, 55]), hostile_target),
            Param("cycle_id", st.sampled_from([None, cycle_id]), st.one_of(hostile_id, st.just(424242)).filter(not_none)),
            Param("client_order_id", st.none(), hostile_client_order_id),
            Param("reason", st.sampled_from(["manual", "momentum"]), hostile_reason),
        ],
        "catalyst.monitor_position": [Param("position_id", st.integers(1, 7), st.one_of(hostile_id, unknown_id), True),
                                      slot],
        "catalyst.exit_position": [Param("position_id", st.integers(1, 7), st.one_of(hostile_id, unknown_id), True)],
        "catalyst.heartbeat": [],
        "catalyst.reconcile": [slot],
    }


@st.composite
def hostile_call(draw, params: dict[str, list[Param]]):
    """(task, args, kwargs, what is hostile) with at least one hostile argument or shape."""
    # enter_position has seven arguments and the most to lose: it gets a larger share of the cases
    name = draw(st.sampled_from(sorted(params) + ["catalyst.enter_position"] * 3 + ["catalyst.monitor_position"]))
    spec = params[name]
    shapes = ["unknown_kwarg", "too_many_args"]
    if spec:
        shapes += ["duplicate"]
    if any(p.required for p in spec):
        shapes += ["missing"]
    if spec and draw(st.integers(0, 3)):  # mostly hostile values, sometimes with a hostile shape on top
        hostile = draw(st.sets(st.sampled_from([p.name for p in spec]), min_size=1, max_size=3))
        if not draw(st.integers(0, 4)):
            hostile.add(draw(st.sampled_from(shapes)))
    else:
        hostile = {draw(st.sampled_from(shapes))}
    values = {}
    for p in spec:
        if p.name in hostile:
            values[p.name] = draw(p.hostile)
        elif p.required or draw(st.booleans()):
            values[p.name] = draw(p.valid)
    if "missing" in hostile:
        values.pop(draw(st.sampled_from([p.name for p in spec if p.required])))
        return name, [], values, sorted(hostile)
    if "too_many_args" in hostile:
        extra = draw(st.lists(json_scalars, min_size=1, max_size=3))
        return name, [values.get(p.name) for p in spec] + extra, {}, sorted(hostile)
    # the first `n` parameters positionally (only a prefix of the signature can be positional)
    prefix = 0
    while prefix < len(spec) and spec[prefix].name in values:
        prefix += 1
    n = draw(st.integers(0, prefix))
    args = [values[p.name] for p in spec[:n]]
    kwargs = {k: v for k, v in values.items() if k not in {p.name for p in spec[:n]}}
    if "duplicate" in hostile:  # the first parameter both by position and by name
        first = spec[0]
        value = values[first.name] if first.name in values else draw(first.valid)
        if n == 0:
            args = [value]
        kwargs[first.name] = value
    if "unknown_kwarg" in hostile:
        known = {p.name for p in spec}
        key = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in known))
        kwargs[key] = draw(json_scalars)
    return name, args, kwargs, sorted(hostile)


# -- the stack ----------------------------------------------------------------------------------------------

def snapshot() -> dict[str, list[tuple]]:
    def read(s):
        out = {}
        for name in BUSINESS_TABLES:
            table = Base.metadata.tables[name]
            out[name] = sorted((tuple(row) for row in s.execute(select(table)).all()), key=repr)
        return out

    return query(read)


def broker_book() -> dict[str, float]:
    from catalyst.db.models import PaperPosition

    return query(lambda s: {p.symbol: p.qty for p in s.scalars(select(PaperPosition)) if p.qty})


def pool_children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def bounded(value, limit: int = 160) -> str:
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


@pytest.fixture
def fuzz_stack(pg_url, redis_url, tmp_path, stack):
    paths = [str(write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, [PRICE] * 240)) for s in sorted(KNOWN)]
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_MARKET_DATA": "replay:" + ",".join(paths),
           "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=5)).isoformat()}@1",
           "CATALYST_HEARTBEAT_INTERVAL": "5",
           "CATALYST_MAX_POSITIONS": "20"}  # seven held by hand: hostile arguments, not the limit, are refused
    with environment(env):
        rt = get_runtime()
        ids = [open_position(rt, symbol=s, qty=10, client_order_id=f"manual-{i:024x}").id
               for i, s in enumerate(HELD, 1)]
        assert ids == list(range(1, 8))
        now = rt.clock.now()
        with session_scope() as s:
            cycle = TradingCycle(slot_at=now, market="US", status="scanned", candidates=1, started_at=now)
            s.add(cycle)
            s.flush()
            security = Security(symbol=FREE, exchange="XNYS", created_at=now)
            s.add(security)
            s.flush()
            s.add(ScanResult(cycle_id=cycle.id, security_id=security.id, symbol=FREE, rank=1, score=9.0, price=PRICE,
                             change_pct=5.0, volume=1e6, relative_volume=2.0, rsi=50.0, created_at=now))
            cycle_id = cycle.id
        worker = stack.worker("fuzz", env_extra={"CELERY_RESULT_BACKEND": redis_url})
        import celeryconfig

        client = Celery("catalyst-fuzz-client", set_as_current=False)
        client.config_from_object(celeryconfig)
        client.conf.update(broker_url=redis_url, broker_transport=None, result_backend=redis_url,
                           broker_transport_options={"visibility_timeout": 600})
        try:
            wait_for(lambda: query(lambda s: s.scalar(select(ServiceHealth.status).where(
                ServiceHealth.kind == "worker"))) == "online", 120, what="the worker to come online")
            assert call(client, "catalyst.heartbeat").get(timeout=60)
            yield client, worker, cycle_id, redis.Redis.from_url(redis_url)
        finally:
            client.close()


def call(client: Celery, name: str, args=None, kwargs=None):
    return client.send_task(name, args=args or [], kwargs=kwargs or {}, ignore_result=False)


def test_hostile_arguments_to_every_task_are_refused_as_bad_input_and_change_nothing(fuzz_stack):
    client, worker, cycle_id, results = fuzz_stack
    params = task_params(cycle_id)
    children = pool_children(worker.popen.pid)
    assert children, "a prefork worker has pool processes"
    before, book = snapshot(), broker_book()
    assert book == {s: 10.0 for s in HELD}
    sent = []
    seen_tasks = set()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(st.lists(hostile_call(params), min_size=BATCH, max_size=BATCH))
    def batch(calls):
        pending = [(c, call(client, c[0], c[1], c[2])) for c in calls]
        for (name, args, kwargs, hostile), result in pending:
            what = f"{name}(*{bounded(args)}, **{bounded(kwargs)}) [hostile: {', '.join(hostile)}]"
            result.get(timeout=120, propagate=False)
            meta = json.loads(results.get(f"celery-task-meta-{result.id}"))
            assert meta["status"] == "FAILURE", f"{what} was {meta['status']}: {bounded(meta['result'])}"
            error = meta["result"]
            cls = getattr(import_module(error["exc_module"]), error["exc_type"].split(".")[-1], None)
            assert isinstance(cls, type) and issubclass(cls, BadInput), \
                f"{what} failed with {error['exc_module']}.{error['exc_type']}: {bounded(error['exc_message'], 400)}"
            seen_tasks.add(name)
        assert snapshot() == before, f"a rejected call changed a business row (batch of {len(calls)})"
        sent.extend(calls)

    batch()

    assert len(sent) >= MIN_CASES
    assert seen_tasks == set(params)
    kinds = {kind for c in sent for kind in c[3]}
    assert kinds >= {p.name for spec in params.values() for p in spec} | {"unknown_kwarg", "too_many_args", "missing"}
    assert broker_book() == book, "no order reached the broker"
    assert worker.alive(), worker.log_text()[-3000:]
    assert pool_children(worker.popen.pid) == children, "a pool process died and was replaced"
    log = worker.log_text()
    for fatal in ("Unrecoverable error", "WorkerLostError", "exited prematurely", "Traceback"):
        assert fatal not in log, f"{fatal!r} in the worker log:\n{log[-3000:]}"
    # and it still does its job: a real check of a real position
    assert call(client, "catalyst.monitor_position", [1], {"slot": VALID_SLOT}).get(timeout=60) == "hold"
