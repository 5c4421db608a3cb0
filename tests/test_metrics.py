"""Catalyst's own Prometheus metrics (issue 10): every series equals what PostgreSQL and Redis say at scrape
time, a source that cannot be read is reported instead of failing the scrape, and `catalyst metrics` serves
them behind basic auth next to real worker and beat processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis
from click.testing import CliRunner
from kombu import Connection, Exchange, Queue
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from structlog.testing import capture_logs

from catalyst.cli import main
from catalyst.cli_metrics import authorized, parse_credentials, read_credentials
from catalyst.clock import ManualClock
from catalyst.db.engine import session_scope
from catalyst.db.models import (AdvisorUsage, Decision, Position, PositionMonitorStatus, ServiceHealth,
                                TradingState)
import catalyst.metrics as metrics_module
from catalyst.metrics import EXIT_REASONS, QUEUES, SOURCES, CatalystCollector, build_registry, redis_queue_keys
from catalyst.records import security_id
from catalyst.settings import get_settings
from tests.support import environment, query, rows, wait_for, write_replay_csv

NY = ZoneInfo("America/New_York")
MARKET_NOW = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)  # 10:00 in New York, a Tuesday session
WALL_NOW = datetime(2026, 1, 6, 12, 0, tzinfo=UTC)
AUTH = ("ops", "s3cret:with-colon")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels), as Prometheus parses it."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def labelled(found: dict, name: str, label: str) -> dict[str, float]:
    return {dict(key[1])[label]: v for key, v in found.items() if key[0] == name}


def scrape(collector: CatalystCollector) -> dict:
    return samples(generate_latest(build_registry(collector)).decode())


@pytest.fixture
def stores(pg_url, redis_url):
    with environment({"DATABASE_URL": pg_url, "REDIS_URL": redis_url}) as env:
        yield env


# -- seeded rows ------------------------------------------------------------------------------------------------
def _position(s, symbol: str, status: str, opened_at: datetime, *, closed_at: datetime | None = None,
              reason: str | None = None, pnl: float | None = None, checked_at: datetime | None = None,
              written_ago: float = 3600.0) -> int:
    p = Position(security_id=security_id(s, symbol, "XNYS"), symbol=symbol, qty=10, status=status, entry_price=100.0,
                 high_watermark=100.0, max_hold_seconds=86400, opened_at=opened_at, updated_at=opened_at,
                 closed_at=closed_at, exit_reason=reason, realized_pnl=pnl,
                 exit_price=None if pnl is None else 100 + pnl / 10)
    s.add(p)
    s.flush()
    if checked_at is not None:
        s.add(PositionMonitorStatus(position_id=p.id, symbol=symbol, last_check_at=checked_at, checks=3,
                                    updated_at=WALL_NOW - timedelta(seconds=written_ago)))
    return p.id


def seed() -> None:
    at = lambda h, m: datetime(2025, 3, 4, h, m, tzinfo=UTC)  # noqa: E731
    with session_scope() as s:
        _position(s, "AAA", "open", at(14, 0), checked_at=at(14, 55), written_ago=10)  # checked 300 s ago
        _position(s, "BBB", "open", at(14, 50))  # never checked: 600 s since it opened, the oldest
        _position(s, "CCC", "closing", at(12, 0), checked_at=at(13, 0), written_ago=59)  # not open: no part of the lag
        _position(s, "DDD", "closed", at(13, 0), closed_at=at(14, 30), reason="stop_loss", pnl=-50.0)
        _position(s, "EEE", "closed", at(5, 0), closed_at=at(6, 0), reason="stop_loss", pnl=-20.5, checked_at=at(5, 59),
                  written_ago=61)
        _position(s, "FFF", "closed", at(14, 0), closed_at=at(14, 45), reason="take_profit", pnl=120.0)
        # 23:30 on March 3rd in New York: the same UTC date, but yesterday's market day
        _position(s, "GGG", "closed", at(1, 0), closed_at=at(4, 30), reason="manual", pnl=1000.0)
        for seconds, kind in ((10, "monitor"), (30, "monitor"), (59, "monitor"), (61, "monitor"), (5, "evaluate")):
            s.add(Decision(kind=kind, action="hold", decided_at=MARKET_NOW,
                           recorded_at=WALL_NOW - timedelta(seconds=seconds)))
        s.add(ServiceHealth(service_name="worker@h1", kind="worker", status="online", started_at=WALL_NOW,
                            last_heartbeat=WALL_NOW - timedelta(seconds=12.5), checks=9, positions_checked=7,
                            exits_executed=2, advisor_calls=1, errors=1))
        s.add(ServiceHealth(service_name="beat", kind="beat", status="active", started_at=WALL_NOW,
                            last_heartbeat=WALL_NOW - timedelta(seconds=3)))
        # a worker that said goodbye an hour ago (a restart or a deploy): not a heartbeat that is late
        s.add(ServiceHealth(service_name="worker@old-dyno", kind="worker", status="offline", started_at=WALL_NOW,
                            last_heartbeat=WALL_NOW - timedelta(hours=1)))
        s.add(AdvisorUsage(day="2025-03-04", spent_usd=0.0123, reserved_usd=0.001, calls=4, updated_at=WALL_NOW))
        s.add(AdvisorUsage(day="2025-03-03", spent_usd=1.0, reserved_usd=0.0, calls=9, updated_at=WALL_NOW))
        s.add(TradingState(key="halted", value={"state": "REDUCING", "market_day": "2025-03-04", "reason": "loss"},
                           updated_at=WALL_NOW))


def expected_from_database(market_now: datetime) -> dict:
    """The figures straight from the rows, in plain Python (the market's day in New York time)."""
    today = market_now.astimezone(NY).date()
    positions = rows(Position)
    closed_today = [p for p in positions if p.status == "closed" and p.closed_at.astimezone(NY).date() == today]
    status = {m.position_id: m.last_check_at for m in rows(PositionMonitorStatus)}
    held = [status.get(p.id) or p.opened_at for p in positions if p.status == "open"]
    usage = {u.day: u for u in rows(AdvisorUsage)}.get(today.isoformat())
    return {
        "open": Counter(p.status for p in positions if p.status != "closed"),
        "exits_today": Counter(p.exit_reason for p in closed_today),
        "exits_ever": Counter(p.exit_reason for p in positions if p.status == "closed"),
        "realized": sum(p.realized_pnl for p in closed_today),
        "lag": max((market_now - t).total_seconds() for t in held) if held else 0.0,
        "checked": len([m for m in rows(PositionMonitorStatus) if m.updated_at >= WALL_NOW - timedelta(minutes=1)]),
        "ages": {h.service_name: (WALL_NOW - h.last_heartbeat).total_seconds() for h in rows(ServiceHealth)
                 if h.status != "offline"},
        "advisor": (usage.calls, usage.spent_usd) if usage else (0, 0.0),
    }


def test_every_series_equals_what_the_database_says(stores):
    seed()
    clock = ManualClock(MARKET_NOW)
    found = scrape(CatalystCollector(get_settings(), clock=clock, wall=lambda: WALL_NOW))
    db = expected_from_database(MARKET_NOW)

    assert labelled(found, "catalyst_scrape_errors", "source") == dict.fromkeys(SOURCES, 0)
    assert labelled(found, "catalyst_open_positions", "status") == {"open": 2, "closing": 1} == {
        k: db["open"][k] for k in ("open", "closing")}
    exits_today = labelled(found, "catalyst_exits_today", "reason")
    assert set(exits_today) == set(EXIT_REASONS)  # every reason is a series, 0 when none
    assert {r: n for r, n in exits_today.items() if n} == {"stop_loss": 2, "take_profit": 1} == db["exits_today"]
    exits = labelled(found, "catalyst_exits_total", "reason")
    assert {r: n for r, n in exits.items() if n} == {"stop_loss": 2, "take_profit": 1, "manual": 1} == db["exits_ever"]
    assert value(found, "catalyst_realized_pnl_today_usd") == pytest.approx(49.5) == db["realized"]
    assert value(found, "catalyst_monitor_lag_seconds") == 600 == db["lag"]
    assert value(found, "catalyst_positions_checked_per_minute") == 2 == db["checked"]
    ages = labelled(found, "catalyst_heartbeat_age_seconds", "service")
    assert ages == {"worker@h1": 12.5, "beat": 3.0} == db["ages"]
    assert value(found, "catalyst_heartbeat_age_seconds", service="beat", kind="beat") == 3.0
    assert value(found, "catalyst_service_status", service="worker@h1", kind="worker", status="online") == 1
    assert value(found, "catalyst_service_status", service="worker@old-dyno", kind="worker", status="offline") == 1
    assert value(found, "catalyst_service_positions_checked_total", service="worker@h1", kind="worker") == 7
    assert value(found, "catalyst_service_errors_total", service="worker@h1", kind="worker") == 1
    assert (value(found, "catalyst_advisor_calls_today"), value(found, "catalyst_advisor_cost_today_usd")) \
        == (4, 0.0123) == db["advisor"]
    assert labelled(found, "catalyst_trading_state", "state") == {"ACTIVE": 0, "REDUCING": 1, "HALTED": 0}
    assert value(found, "catalyst_market_open") == 1

    # The next market day: today's figures start again and REDUCING has lapsed, as the guard reads it.
    clock.set(MARKET_NOW + timedelta(days=1))
    found = scrape(CatalystCollector(get_settings(), clock=clock, wall=lambda: WALL_NOW))
    assert sum(labelled(found, "catalyst_exits_today", "reason").values()) == 0
    assert value(found, "catalyst_realized_pnl_today_usd") == 0
    assert value(found, "catalyst_advisor_calls_today") == 0
    assert labelled(found, "catalyst_exits_total", "reason")["manual"] == 1  # the counter never goes down
    assert labelled(found, "catalyst_trading_state", "state") == {"ACTIVE": 1, "REDUCING": 0, "HALTED": 0}
    assert value(found, "catalyst_monitor_lag_seconds") == expected_from_database(clock.now())["lag"]


def test_no_open_position_means_no_lag_and_a_halt_is_halted(stores):
    with session_scope() as s:
        s.add(TradingState(key="halted", value={"halted": True, "reason": "operator"}, updated_at=WALL_NOW))
    found = scrape(CatalystCollector(get_settings(), clock=ManualClock(MARKET_NOW), wall=lambda: WALL_NOW))
    assert value(found, "catalyst_monitor_lag_seconds") == 0
    assert labelled(found, "catalyst_trading_state", "state") == {"ACTIVE": 0, "REDUCING": 0, "HALTED": 1}
    assert labelled(found, "catalyst_heartbeat_age_seconds", "service") == {}


def publish(redis_url: str, queue: str, n: int, priority: int = 0) -> None:
    with Connection(redis_url) as conn:
        producer = conn.Producer(serializer="json")
        for i in range(n):
            producer.publish({"n": i}, exchange="", routing_key=queue, priority=priority,
                             declare=[Queue(queue, Exchange(""), routing_key=queue)])


def test_queue_depth_is_every_list_kombu_keeps_for_the_queue(stores, redis_url):
    import celeryconfig

    assert QUEUES == celeryconfig.QUEUES
    publish(redis_url, "monitor", 2)
    publish(redis_url, "monitor", 1, priority=6)  # kombu keeps it in a list of its own
    publish(redis_url, "exit", 1)
    publish(redis_url, "scan", 3)
    client = redis.Redis.from_url(redis_url)
    client.hset("unacked", "some-delivery-tag", "{}")
    found = scrape(CatalystCollector(get_settings(), clock=ManualClock(MARKET_NOW)))

    lists = {q: sum(client.llen(k) for k in redis_queue_keys(q)) for q in QUEUES}
    assert client.llen("monitor") == 2  # the plain list alone would undercount
    assert labelled(found, "catalyst_queue_depth", "queue") == lists == {
        "scan": 3, "evaluate": 0, "monitor": 3, "exit": 1, "maintenance": 0}
    assert value(found, "catalyst_queue_unacked") == 1


def test_a_source_that_cannot_be_read_is_reported_and_the_rest_still_exported(pg_url):
    with environment({"DATABASE_URL": pg_url, "REDIS_URL": "redis://127.0.0.1:1/0"}):  # nothing listens there
        found = scrape(CatalystCollector(get_settings(), clock=ManualClock(MARKET_NOW)))
    assert labelled(found, "catalyst_scrape_errors", "source") == {**dict.fromkeys(SOURCES, 0), "queues": 1}
    assert not labelled(found, "catalyst_queue_depth", "queue")
    assert labelled(found, "catalyst_open_positions", "status") == {"open": 0, "closing": 0}

    missing = pg_url.rsplit("/", 1)[0] + "/catalyst_t_does_not_exist"
    with environment({"DATABASE_URL": missing, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        found = scrape(CatalystCollector(get_settings(), clock=ManualClock(MARKET_NOW)))
    assert labelled(found, "catalyst_scrape_errors", "source") == {**dict.fromkeys(SOURCES, 1), "clock": 0}
    assert not labelled(found, "catalyst_open_positions", "status")
    assert value(found, "catalyst_monitor_check_interval_seconds") == 60  # settings are still exported


DEADLINE = 10.0  # generous: the database parts must answer within it even on a loaded box


def test_a_broker_that_never_answers_cannot_hold_the_scrape(stores, monkeypatch):
    """A Redis that accepts the connection and then says nothing: the scrape ends at its deadline."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    stop = threading.Event()

    def hold():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                pass

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        silent_url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with environment({"DATABASE_URL": stores["DATABASE_URL"], "REDIS_URL": silent_url}):
            collector = CatalystCollector(get_settings(), clock=ManualClock(MARKET_NOW), deadline=DEADLINE)
            collector.moment()  # the calendar and the database connection warm, as in a server after its first scrape
            collector.engine().connect().close()
            monkeypatch.setattr(metrics_module, "REDIS_TIMEOUT", 10 * DEADLINE)  # the broker outlasts the deadline
            with capture_logs() as logs:
                found = scrape(collector)
    finally:
        stop.set()
        holder.join()
        for conn in accepted:
            conn.close()
        silent.close()
    assert value(found, "catalyst_scrape_errors", source="queues") == 1
    assert value(found, "catalyst_scrape_errors", source="positions") == 0
    assert accepted  # it really connected, and got no answer
    failures = [e for e in logs if e["event"] == "metrics_source_failed"]
    assert [(e["source"], e["error"]) for e in failures] == [("queues", f"no answer within {DEADLINE:g}s")]


def test_once_prints_the_exposition(stores):
    seed()
    done = CliRunner().invoke(main, ["metrics", "--once"])
    assert done.exit_code == 0, done.output
    found = samples(done.stdout)
    assert labelled(found, "catalyst_open_positions", "status") == {"open": 2, "closing": 1}
    assert set(labelled(found, "catalyst_queue_depth", "queue")) == set(QUEUES)


# -- credentials --------------------------------------------------------------------------------------------
def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_accepts_only_the_configured_pairs():
    creds = parse_credentials("ops:s3cret:with-colon, viewer:pw2", "CATALYST_METRICS_BASIC_AUTH")
    assert authorized(header("ops", "s3cret:with-colon"), creds)
    assert authorized(header("viewer", "pw2"), creds)
    assert authorized("basic " + header("viewer", "pw2").split()[1], creds)
    for bad in (header("ops", "pw2"), header("viewer", "s3cret:with-colon"), header("ops", ""), "",
                "Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
                "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
        assert not authorized(bad, creds), bad


def test_credentials_come_from_catalysts_variable_else_flowers():
    both = {"CATALYST_METRICS_BASIC_AUTH": "metrics:pw1", "FLOWER_BASIC_AUTH": "flower:pw2"}
    assert read_credentials(both) == (frozenset({("metrics", "pw1")}), "CATALYST_METRICS_BASIC_AUTH")
    assert read_credentials({**both, "CATALYST_METRICS_BASIC_AUTH": " "}) == (frozenset({("flower", "pw2")}),
                                                                              "FLOWER_BASIC_AUTH")
    assert read_credentials({}) is None


@pytest.mark.parametrize("args, env, expected", [
    (["--port", "0"], {}, "CATALYST_METRICS_BASIC_AUTH"),
    (["--port", "0", "--no-auth", "--bind", "0.0.0.0"], {}, "--no-auth is only allowed with a loopback"),
    (["--port", "0"], {"CATALYST_METRICS_BASIC_AUTH": "only-a-name"}, "must be user:password"),
    (["--port", "0"], {"FLOWER_BASIC_AUTH": "hunter2:"}, "FLOWER_BASIC_AUTH must be user:password"),
])
def test_it_refuses_to_serve_without_usable_credentials(tmp_path, args, env, expected):
    with environment({"CATALYST_VAR_DIR": str(tmp_path)}):
        done = CliRunner().invoke(main, ["metrics", *args],
                                  env={"CATALYST_METRICS_BASIC_AUTH": None, "FLOWER_BASIC_AUTH": None, **env})
    assert done.exit_code != 0
    assert expected in done.output
    for secret in ("only-a-name", "hunter2"):
        assert secret not in done.output  # a malformed value is never echoed


# -- end to end: real worker, beat and `catalyst metrics` ------------------------------------------------------
EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)


def cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "catalyst.cli", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"catalyst {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, headers={"Authorization": header(*auth)} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@pytest.fixture
def session_env(pg_url, redis_url, tmp_path):
    """PostgreSQL, Redis, a simulated session at 30x and two flat replayed symbols, for every process."""
    flat = [100.0 + 0.01 * (i % 2) for i in range(390)]
    data = [write_replay_csv(tmp_path / f"{s}.csv", s, SESSION_OPEN, flat) for s in ("TEST", "MORE")]
    start = SESSION_OPEN + timedelta(minutes=1)
    with environment({"DATABASE_URL": pg_url, "REDIS_URL": redis_url,
                      "CATALYST_MARKET_DATA": "replay:" + ",".join(map(str, data)),
                      "CATALYST_CLOCK": f"sim:{start.isoformat()}@30", "MONITOR_CHECK_INTERVAL": "60",
                      "CATALYST_AUTO_ENTRIES": "false", "CATALYST_HEARTBEAT_INTERVAL": "2"}) as env:
        yield env


@pytest.fixture
def metrics_server(session_env):
    """`catalyst metrics` as its own process (port chosen by the system, read from its first line)."""
    env = {**os.environ, "CATALYST_METRICS_BASIC_AUTH": ":".join(AUTH), "FLOWER_BASIC_AUTH": "other:pw"}
    proc = subprocess.Popen([sys.executable, "-m", "catalyst.cli", "metrics", "--port", "0", "--bind", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    line = ""
    try:
        line = proc.stdout.readline()
        assert "serving Catalyst metrics on http://127.0.0.1:" in line, line + proc.stdout.read()
        assert "CATALYST_METRICS_BASIC_AUTH" in line
        yield line.split(" on ", 1)[1].split()[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
        assert AUTH[1] not in (line + out)  # the password is never printed or logged


@pytest.mark.e2e
def test_scraped_after_a_short_session_with_real_worker_and_beat(session_env, stack, metrics_server):
    url = metrics_server
    stack.worker()
    stack.beat()
    wait_for(lambda: query(lambda s: s.scalar(select(func.count()).select_from(ServiceHealth)
                                              .where(ServiceHealth.status.in_(("online", "active"))))) >= 2,
             60, what="worker and beat heartbeats")
    ids = [json.loads(cli("open", symbol, "--qty", "10", "--stop", "90", "--target", "120", "--json").stdout)["id"]
           for symbol in ("TEST", "MORE")]
    wait_for(lambda: query(lambda s: s.scalar(select(func.count()).select_from(PositionMonitorStatus)
                                              .where(PositionMonitorStatus.position_id.in_(ids)))) == 2,
             90, what="both positions checked by the worker")

    assert get(url)[0] == 401
    status, headers, _ = get(url, ("ops", "wrong"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    status, _, text = get(url, AUTH)
    assert status == 200
    found = samples(text)
    services = query(lambda s: s.execute(select(ServiceHealth.service_name, ServiceHealth.kind)).all())
    assert labelled(found, "catalyst_scrape_errors", "source") == dict.fromkeys(SOURCES, 0)
    assert value(found, "catalyst_open_positions", status="open") == len(rows(Position, Position.status == "open")) == 2
    assert value(found, "catalyst_positions_checked_per_minute") > 0
    assert value(found, "catalyst_monitor_lag_seconds") >= 0
    assert {(dict(k[1])["service"], dict(k[1])["kind"]) for k in found if k[0] == "catalyst_heartbeat_age_seconds"} \
        == set(services) and {kind for _, kind in services} == {"worker", "beat"}
    assert set(labelled(found, "catalyst_queue_depth", "queue")) == set(QUEUES)
    assert value(found, "catalyst_trading_state", state="ACTIVE") == 1
    assert value(found, "catalyst_advisor_calls_today") == 0  # no advisor key: the rules decide, nothing is spent

    cli("close", str(ids[0]))
    status, _, text = get(url, AUTH)
    found = samples(text)
    closed = query(lambda s: s.get(Position, ids[0]))
    assert closed.status == "closed" and closed.exit_reason == "manual"
    assert value(found, "catalyst_open_positions", status="open") == 1
    assert value(found, "catalyst_exits_today", reason="manual") == 1 == value(found, "catalyst_exits_total",
                                                                                reason="manual")
    assert value(found, "catalyst_realized_pnl_today_usd") == pytest.approx(closed.realized_pnl)
    assert get(url.replace("/metrics", "/other"), AUTH)[0] == 404


def test_scrapes_are_read_only_with_a_timeout_and_keep_the_urls_own_options(pg_url):
    """The limits are set per transaction, so options in DATABASE_URL (a search_path) still apply."""
    from catalyst.metrics import DB_STATEMENT_TIMEOUT_MS, metrics_engine

    url = pg_url.replace("postgresql://", "postgresql+psycopg://") + "?options=-csearch_path%3Dcatalyst_ops,public"
    engine = metrics_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW search_path").scalar().replace(" ", "") == "catalyst_ops,public"
            assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == f"{DB_STATEMENT_TIMEOUT_MS // 1000}s"
            with pytest.raises(Exception, match="read-only transaction"):
                conn.exec_driver_sql("CREATE TABLE scrape_wrote_this (id int)")
    finally:
        engine.dispose()
