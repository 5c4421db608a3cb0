"""Shared test helpers: real PostgreSQL/Redis/SQLite environments and real worker/beat processes."""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from catalyst.db.engine import dispose_all, session_scope, upgrade
from catalyst.processes import spawn_beat, spawn_worker
from catalyst.runtime import reset_runtime

PG_ADMIN = os.environ.get("CATALYST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST = os.environ.get("CATALYST_TEST_REDIS", "redis://127.0.0.1:6379/9")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEMPLATE = f"catalyst_tpl_{os.getpid()}"
CATALYST_VARS = ("DATABASE_URL", "REDIS_URL", "CATALYST_VAR_DIR", "CATALYST_BROKER", "CATALYST_MARKET_DATA",
                 "CATALYST_CLOCK", "CATALYST_MARKET", "CATALYST_CONFIG", "MONITOR_CHECK_INTERVAL", "MONITOR_DRY_RUN",
                 "CATALYST_TEST_PAUSE", "CATALYST_MAX_HOLD_HOURS", "CATALYST_SCAN_INTERVAL", "CATALYST_CLOSED_DATES")


def unavailable(what: str) -> None:
    """Skip locally when a server is missing; on CI a missing server is a failure, never a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required on CI")
    pytest.skip(f"{what} not reachable")


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def redis_available() -> bool:
    try:
        return redis.Redis.from_url(REDIS_TEST, socket_connect_timeout=2).ping()
    except redis.RedisError:
        return False


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


_template_ready = False


def fresh_pg_url() -> str:
    """A new, migrated PostgreSQL database (cloned from a migrated template for speed)."""
    global _template_ready
    base = PG_ADMIN.rsplit("/", 1)[0]
    if not _template_ready:
        _admin(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        _admin(f"CREATE DATABASE {TEMPLATE}")
        upgrade(f"{base}/{TEMPLATE}".replace("postgresql://", "postgresql+psycopg://"))
        dispose_all()
        _template_ready = True
    name = f"catalyst_t_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return f"{base}/{name}"


def drop_pg(url: str) -> None:
    dispose_all()
    name = url.rsplit("/", 1)[1]
    try:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except psycopg.Error:
        pass


def drop_template() -> None:
    if _template_ready:
        try:
            _admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        except psycopg.Error:
            pass


@contextmanager
def environment(env: dict[str, str]):
    """Point this process (and processes it spawns) at ``env``; restore everything afterwards."""
    saved = {k: os.environ.get(k) for k in set(CATALYST_VARS) | set(env)}
    for k in CATALYST_VARS:
        os.environ.pop(k, None)
    os.environ.update(env)
    reset_runtime()
    dispose_all()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_runtime()
        dispose_all()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until ``predicate()`` is truthy; returns its value or fails with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def race(n: int, fn):
    """Run ``fn(i)`` for i in range(n) on n threads released together; results (or exceptions) in order."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each thread met
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def rows(model, *where):
    """Every row of ``model`` matching ``where`` (a fresh session, detached)."""
    from sqlalchemy import select

    return query(lambda s: s.scalars(select(model).where(*where)).all())


def query(fn):
    with session_scope() as s:
        return fn(s)


def write_replay_csv(path: Path, symbol: str, start: datetime, closes: list[float], volume: int = 10_000) -> Path:
    """One-minute bars from ``start`` with the given closes (open = previous close)."""
    lines = ["timestamp,symbol,open,high,low,close,volume"]
    previous = closes[0]
    for i, close in enumerate(closes):
        ts = start + timedelta(minutes=i)
        lines.append(f"{ts.isoformat()},{symbol},{previous:.2f},{max(previous, close):.2f},"
                     f"{min(previous, close):.2f},{close:.2f},{volume}")
        previous = close
    path.write_text("\n".join(lines) + "\n")
    return path


def quiet_day_files(tmp_path: Path) -> tuple[str, str]:
    """A whole flat session on 2025-03-04 (nothing but the clock says anything) and a positions file with
    one position bought at 09:45, for the replay CLI."""
    from datetime import timezone

    start = datetime(2025, 3, 4, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    data = write_replay_csv(tmp_path / "TEST.csv", "TEST", start, [100.0 + 0.01 * (i % 2) for i in range(390)])
    positions = tmp_path / "p.csv"
    positions.write_text("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\n"
                         "TEST,10,2025-03-04T09:45:00-05:00,100,,\n")
    return str(data), str(positions)


def celery_that_must_exit(kind: str, env: dict[str, str], situation: str) -> tuple[int, str]:
    """Run ``celery -A catalyst <kind>`` with exactly ``env`` (the rest of this process's environment, less
    its Catalyst settings); it must exit by itself within 60 s. Its exit code and output."""
    import signal
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in CATALYST_VARS and not k.startswith("CATALYST_")}
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "catalyst", kind, "--loglevel=INFO"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**base, **env},
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{kind} was still running after 60 s {situation}:\n{out[-3000:]}")
    return proc.returncode, out


class Stack:
    """Real worker(s) and beat(s) for one test, stopped (or killed) at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs = []

    def worker(self, name: str = "worker", env_extra: dict | None = None, **kw):
        p = spawn_worker(env_extra or {}, self.log_dir, name=name, **kw)
        self.procs.append(p)
        return p

    def beat(self, name: str = "beat"):
        p = spawn_beat({}, self.log_dir, name=name)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            p.stop(timeout=15)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log_text()[-6000:]}" for p in self.procs)


def seed_position(symbol: str, price: float, opened_at: datetime, qty: float = 10, max_hold_hours: float = 240,
                  entry_volume: float | None = 10_000) -> int:
    """Insert an open position directly (as if entered earlier), for tests that only need monitoring."""
    from catalyst.db.models import Position
    from catalyst.records import security_id

    with session_scope() as s:
        p = Position(security_id=security_id(s, symbol, "XNYS"), symbol=symbol, qty=qty, status="open", entry_price=price,
                     entry_volume=entry_volume, high_watermark=price, stop_loss_price=round(price * 0.95, 2),
                     take_profit_price=round(price * 1.15, 2), max_hold_seconds=max_hold_hours * 3600,
                     opened_at=opened_at, updated_at=opened_at)
        s.add(p)
        s.flush()
        return p.id


def scanned_cycle(symbols: list[str], price: float) -> int:
    """A scanned cycle (a slot of its own) whose candidates, ranked in the order given, all pass the scanner's
    screen: what evaluation and admission tests start from."""
    from sqlalchemy import func, select

    from catalyst.db.models import ScanResult, TradingCycle
    from catalyst.records import security_id
    from catalyst.runtime import get_runtime

    now = get_runtime().clock.now()
    with session_scope() as s:
        taken = s.scalar(select(func.count()).select_from(TradingCycle))
        cycle = TradingCycle(slot_at=now + timedelta(microseconds=taken), market="US", status="scanned",
                             candidates=len(symbols), started_at=now)
        s.add(cycle)
        s.flush()
        for rank, symbol in enumerate(symbols, 1):
            s.add(ScanResult(cycle_id=cycle.id, security_id=security_id(s, symbol, "XNYS"), symbol=symbol, rank=rank,
                             score=10.0 - rank, price=price, change_pct=5.0, volume=1e6, relative_volume=2.0, rsi=50.0,
                             created_at=now))
        return cycle.id


def queued_messages(redis_url: str, queue: str) -> list[dict]:
    """Messages waiting in a Redis-backed Celery queue, decoded (nothing is consumed)."""
    import json

    client = redis.Redis.from_url(redis_url)
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


@contextmanager
def producer(redis_url: str):
    """A Celery app to send tasks to real workers on ``redis_url``, routed as in production.

    Never the process-wide ``catalyst.celery.app``: it is configured once, from whatever environment
    the first test that imported it had (possibly the embedded broker under a temporary directory
    that is gone by now)."""
    import celeryconfig
    from celery import Celery

    app = Celery("catalyst-test-producer", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.update(broker_url=redis_url, broker_transport=None, broker_transport_options={"visibility_timeout": 600})
    try:
        yield app
    finally:
        app.close()
