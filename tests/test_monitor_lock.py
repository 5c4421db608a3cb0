"""One check of a position at a time: threads racing the task body, processes racing the lock, a worker killed
while it holds the lock, and what the lock costs PostgreSQL.

The critical section is instrumented, not the lock: a stand-in ``check_position`` records how many checks of the
position are inside it at once and, while inside, waits for every other contender to be turned away, so a lock
that lets two in is seen (max concurrency > 1) rather than merely made unlikely.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from sqlalchemy import event

from tests.support import environment, race, seed_position, wait_for

ROUNDS, CONTENDERS = 30, 6
ROOT = Path(__file__).resolve().parents[1]


class Occupancy:
    """A stand-in check that measures overlap: who is inside, the most ever inside at once, how many got in."""

    def __init__(self, contenders: int):
        self.contenders = contenders
        self.cond = threading.Condition()
        self.inside = self.max_inside = self.entries = self.turned_away = 0

    def new_round(self) -> None:
        with self.cond:
            self.turned_away = 0

    def skipped(self) -> None:
        with self.cond:
            self.turned_away += 1
            self.cond.notify_all()

    def check(self, rt, position_id, worker=None, slot=None, **_):
        with self.cond:
            self.inside += 1
            self.entries += 1
            self.max_inside = max(self.max_inside, self.inside)
            # Hold the section until every other contender of this round was refused (or someone else got in).
            self.cond.wait_for(lambda: self.turned_away >= self.contenders - 1 or self.max_inside > 1, timeout=10)
            self.inside -= 1
        return SimpleNamespace(action="hold", needs_exit_task=False)


def race_the_task(monkeypatch, rounds: int = ROUNDS, contenders: int = CONTENDERS) -> tuple[Occupancy, list[list]]:
    """``rounds`` times, ``contenders`` threads run ``monitor_position`` for one position at once."""
    import tasks.monitoring
    from catalyst.runtime import get_runtime

    get_runtime()  # built once, before the threads share it
    pid = seed_position("TEST", 100.0, datetime(2025, 3, 4, 15, 0, tzinfo=UTC))
    occupancy = Occupancy(contenders)
    monkeypatch.setattr(tasks.monitoring, "check_position", occupancy.check)

    def contender(_i):
        result = tasks.monitoring.monitor_position.apply(args=[pid])
        assert result.successful(), result.traceback
        if result.result == "skipped":
            occupancy.skipped()
        return result.result

    # Celery sets a task's request stack up lazily, which is not thread-safe: once alone, before the races.
    assert tasks.monitoring.monitor_position.apply(args=[pid]).result == "hold"
    occupancy.entries = occupancy.max_inside = 0
    results = []
    for _ in range(rounds):
        occupancy.new_round()
        results.append(race(contenders, contender))
    return occupancy, results


def assert_one_runner_per_round(occupancy: Occupancy, results: list[list]) -> None:
    assert occupancy.max_inside == 1, f"{occupancy.max_inside} checks of one position ran at once"
    for n, got in enumerate(results):
        assert sorted(map(str, got)) == ["hold"] + ["skipped"] * (CONTENDERS - 1), f"round {n}: {got}"
    assert occupancy.entries == len(results)


def test_threads_racing_one_position_on_postgresql_never_overlap(pg_url, tmp_path, monkeypatch):
    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var")}):
        occupancy, results = race_the_task(monkeypatch)
    assert_one_runner_per_round(occupancy, results)


def test_threads_racing_one_position_on_embedded_sqlite_never_overlap(tmp_path, monkeypatch):
    from catalyst.db.engine import upgrade
    from catalyst.settings import get_settings

    with environment({"CATALYST_VAR_DIR": str(tmp_path / "var")}):
        upgrade(get_settings().sqlalchemy_url)
        occupancy, results = race_the_task(monkeypatch, rounds=10)
    assert occupancy.max_inside == 1
    for got in results:
        assert sorted(map(str, got)) == ["hold"] + ["skipped"] * (CONTENDERS - 1), got


# -- the lock itself, across processes --------------------------------------------------------------------------

def _contend(url: str, key: int, marker: str, overlaps: str, attempts: int, start) -> int:
    """One process: ``attempts`` tries at the lock; inside, claim an exclusive marker file (an overlap if taken)."""
    import time

    os.environ["DATABASE_URL"] = url
    from catalyst.monitor_lock import check_lock

    start.wait(30)
    got = 0
    for _ in range(attempts):
        with check_lock(key) as held:
            if not held:
                continue
            got += 1
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                with open(overlaps, "a") as f:
                    f.write(f"{os.getpid()}\n")
                continue
            time.sleep(0.002)
            os.close(fd)
            os.unlink(marker)
    return got


def test_processes_racing_the_lock_never_overlap(pg_url, tmp_path):
    marker, overlaps = tmp_path / "inside", tmp_path / "overlaps"
    ctx = multiprocessing.get_context("spawn")
    with environment({"DATABASE_URL": pg_url}):
        manager = ctx.Manager()
        start = manager.Event()
        with ctx.Pool(3) as pool:
            pending = [pool.apply_async(_contend, (pg_url, 4242, str(marker), str(overlaps), 150, start))
                       for _ in range(3)]
            start.set()
            acquired = [p.get(timeout=120) for p in pending]
        manager.shutdown()
    assert not overlaps.exists(), f"overlaps by pids: {overlaps.read_text()}"
    assert sum(acquired) > 0 and not marker.exists()


# -- a worker killed mid-check ----------------------------------------------------------------------------------

HOLDER = """
import sys, time
from catalyst.monitor_lock import check_lock
with check_lock(int(sys.argv[1])) as held:
    print("held" if held else "refused", flush=True)
    time.sleep(600)
"""


def test_a_worker_killed_while_checking_releases_the_position_at_once(pg_url):
    from catalyst.monitor_lock import check_lock

    with environment({"DATABASE_URL": pg_url}):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, "77"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                env=dict(os.environ))
        try:
            assert proc.stdout.readline().strip() == "held"
            with check_lock(77) as held:
                assert held is None  # the other process's check is still running
            with check_lock(78) as held:
                assert held is not None  # another position is not blocked by it
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

        def free() -> bool:
            with check_lock(77) as got:
                return got

        # No TTL to wait out: PostgreSQL ends the dead session's lock as soon as its connection drops.
        wait_for(free, timeout=30, what="the killed holder's lock to be released")


# -- what it costs ----------------------------------------------------------------------------------------------

def test_the_lock_costs_two_statements_and_no_transaction_on_postgresql(pg_url):
    from catalyst.monitor_lock import check_lock, lock_engine

    with environment({"DATABASE_URL": pg_url}):
        with check_lock(1):
            pass  # warm the pool: the connect itself is not a per-check cost
        engine = lock_engine()
        statements = []
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        with check_lock(5) as held:
            assert held is not None
            inside = list(statements)
            # PostgreSQL's view of the holder: the lock is a session's, with no transaction open.
            with psycopg.connect(pg_url, autocommit=True) as admin:
                states = admin.execute(
                    "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.objid = 5 AND l.granted").fetchall()
            assert states == [("idle",)]
        assert len(inside) == 1 and "pg_try_advisory_lock" in inside[0]
        assert len(statements) == 2 and "pg_advisory_unlock" in statements[1]
        assert all(s.lstrip().upper().startswith("SELECT") for s in statements)


def test_a_held_lock_is_released_even_when_the_check_fails(pg_url):
    from catalyst.monitor_lock import check_lock

    with environment({"DATABASE_URL": pg_url}):
        with pytest.raises(RuntimeError):
            with check_lock(9) as held:
                assert held
                raise RuntimeError("check blew up")
        with check_lock(9) as held:
            assert held is not None


def held_by_anyone(pg_url: str, key: int) -> bool:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        return bool(admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                                  "AND granted", (key,)).fetchone()[0])


def test_the_server_notices_a_dead_worker_host_within_seconds_not_hours(pg_url):
    """PostgreSQL's own keepalive (about two hours by default) would keep a vanished host's session, and its
    lock: every check of that position would be skipped meanwhile. Lock sessions set the server side too."""
    from catalyst.monitor_lock import SERVER_KEEPALIVE, check_lock, lock_engine

    with environment({"DATABASE_URL": pg_url}):
        with check_lock(3) as held:
            assert held
            with lock_engine().connect() as conn:
                shown = [conn.exec_driver_sql(f"SHOW {name}").scalar() for name in
                         ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
                          "synchronous_commit")]
    assert shown[:4] == [str(v) for v in SERVER_KEEPALIVE] == ["10", "5", "3", "30000"]
    assert shown[4] == "off"  # a quiet hold's write does not wait for its WAL flush (rewritten by the next check)


def test_an_interrupt_right_after_the_lock_was_granted_ends_the_session_and_the_lock(pg_url, monkeypatch):
    """A time limit or an interrupt that lands once the server granted the lock must not leave it held by a
    pooled connection (returning a connection to the pool does not release a session's advisory locks)."""
    from sqlalchemy.engine import Connection

    from catalyst.monitor_lock import check_lock

    real_execute = Connection.exec_driver_sql

    def execute_then_interrupt(self, statement, *args, **kwargs):
        result = real_execute(self, statement, *args, **kwargs)
        if "pg_try_advisory_lock" in str(statement):
            raise KeyboardInterrupt  # after the server said yes
        return result

    with environment({"DATABASE_URL": pg_url}):
        monkeypatch.setattr(Connection, "exec_driver_sql", execute_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            with check_lock(7):
                pass
        monkeypatch.setattr(Connection, "exec_driver_sql", real_execute)
        wait_for(lambda: not held_by_anyone(pg_url, 7), 30, what="the interrupted lock to end with its session")
        with check_lock(7) as held:
            assert held is not None


@pytest.mark.parametrize("moment", ["before the check begins", "while it hands the connection back"])
def test_an_interrupt_between_the_grant_and_the_check_leaves_no_lock_on_a_pooled_connection(pg_url, monkeypatch,
                                                                                             moment):
    """A soft time limit lands in the few steps after ``_take`` returned the granted lock and before anything
    guards it (or while the check's end returns the connection): the connection is dropped unclosed, and the
    pool takes it back. Returning it must end the lock, or every later check of the position is skipped until
    the connection is recycled (30 minutes)."""
    import gc

    import catalyst.monitor_lock as monitor_lock
    from celery.exceptions import SoftTimeLimitExceeded

    def interrupted(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    with environment({"DATABASE_URL": pg_url}):
        with monitor_lock.check_lock(11):
            pass  # a warm pool: the interrupted connection is a pooled one, kept for the next check
        if moment == "before the check begins":
            monkeypatch.setattr(monitor_lock, "CheckDB", interrupted)
        else:
            monkeypatch.setattr(monitor_lock, "_give_back", interrupted)
        with pytest.raises(SoftTimeLimitExceeded):
            with monitor_lock.check_lock(11):
                pass
        monkeypatch.undo()
        gc.collect()
        assert not held_by_anyone(pg_url, 11), "the lock went back to the pool with its connection"
        with check_lock_from_another_process(pg_url, 11) as held:
            assert held, "another worker checks the position at once"


@contextmanager
def check_lock_from_another_process(pg_url: str, position_id: int):
    """Whether a fresh process gets the position's lock (a worker's other pool child, say)."""
    code = ("import sys\nfrom catalyst.monitor_lock import check_lock\n"
            f"with check_lock({position_id}) as held:\n    sys.exit(0 if held is not None else 3)\n")
    env = {**os.environ, "DATABASE_URL": pg_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (0, 3), done.stderr
    yield done.returncode == 0


def test_lock_sessions_read_committed_whatever_the_databases_default(pg_url):
    """The position's read goes with the lock in one query string: only per-statement snapshots (read committed)
    make it see what the previous holder committed before giving the lock back."""
    from catalyst.db.engine import dispose_all
    from catalyst.monitor_lock import check_lock

    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_isolation = \'repeatable read\'')
    dispose_all()
    with environment({"DATABASE_URL": pg_url}):
        with check_lock(4) as held:
            assert held
            shown = held.connection.exec_driver_sql("SHOW default_transaction_isolation").scalar()
    assert shown == "read committed"
