"""Bad input gets a clear error, changes nothing, and never takes a process down.

Through the real ``catalyst`` CLI (a subprocess on the embedded SQLite default): bad
quantities, unknown symbols and positions, a malformed CATALYST_CLOCK and replay files with
NaN, zero or negative prices each exit non-zero with one readable line and no traceback,
and the database gains no positions, orders or decisions. At the task level: unknown and
malformed position ids fail the task with a clear message, write nothing, and the process
carries on. A worker started against an unmigrated database refuses to start and says how
to fix it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from catalyst.db.models import (
    ActivityLog,
    Decision,
    Lease,
    Order,
    PaperOrder,
    Position,
    PositionMonitorStatus,
    Security,
    ServiceHealth,
    TradingCycle,
)
from catalyst.core.domain import BadInput
from tests.support import celery_that_must_exit, environment, query, write_replay_csv

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
CLOCK = f"sim:{(SESSION_OPEN + timedelta(minutes=2, seconds=30)).isoformat()}@1"
HEADER = "timestamp,symbol,open,high,low,close,volume"
TABLES = {"positions": Position, "orders": Order, "decisions": Decision, "paper_orders": PaperOrder,
          "activity_log": ActivityLog, "securities": Security, "trading_cycles": TradingCycle,
          "monitor_status": PositionMonitorStatus}
TASK_TABLES = {**TABLES, "leases": Lease, "service_health": ServiceHealth}


def counts(tables=TABLES) -> dict[str, int]:
    return query(lambda s: {name: s.scalar(select(func.count()).select_from(m)) for name, m in tables.items()})


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``catalyst ARGS`` with this process's environment (plus ``env``)."""
    return subprocess.run([sys.executable, "-m", "catalyst.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    text = output(result)
    assert result.returncode != 0, f"expected a refusal, got success:\n{text}"
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """One embedded SQLite database brought to head by `catalyst db upgrade` (copied per test: faster)."""
    var = tmp_path_factory.mktemp("migrated") / "var"
    with environment({"CATALYST_VAR_DIR": str(var)}):
        upgraded = cli("db", "upgrade")
    assert upgraded.returncode == 0, output(upgraded)
    return var


@pytest.fixture
def embedded(tmp_path, migrated):
    """A migrated embedded SQLite database under this test's var dir, replaying one good TEST file."""
    shutil.copytree(migrated, tmp_path / "var")
    good = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, [100.0] * 30)
    env = {"CATALYST_VAR_DIR": str(tmp_path / "var"), "CATALYST_MARKET_DATA": f"replay:{good}",
           "CATALYST_CLOCK": CLOCK}
    with environment(env):
        yield tmp_path


# -- CLI ------------------------------------------------------------------------------------------------

def test_the_embedded_setup_accepts_a_good_command(embedded):
    """Control: the environment the refusals below run in is itself healthy."""
    result = cli("status", "--json")
    assert result.returncode == 0, output(result)
    assert '"open_positions": 0' in result.stdout


@pytest.mark.parametrize("qty", ["0", "-5", "nan", "abc"])
def test_open_with_a_bad_quantity_is_refused_naming_qty_and_writes_nothing(embedded, qty):
    assert_refused(cli("open", "TEST", "--qty", qty), "qty")
    assert set(counts().values()) == {0}


def test_open_of_an_unknown_symbol_says_unknown_symbol_and_writes_nothing(embedded):
    assert_refused(cli("open", "NOPE", "--qty", "1"), "unknown symbol 'NOPE'")
    assert set(counts().values()) == {0}


def test_close_of_an_unknown_position_says_unknown_position_and_writes_nothing(embedded):
    assert_refused(cli("close", "999"), "unknown position id 999")


@pytest.mark.parametrize("position_id", ["99999999999", "６", "٧", "0", "1e3"])
def test_close_of_an_id_that_is_not_plainly_a_row_id_is_refused_by_the_cli_and_writes_nothing(embedded, position_id):
    before = counts()
    assert_refused(cli("close", position_id), "must be a positive integer (1..2147483647)")
    assert counts() == before
    assert set(counts().values()) == {0}


@pytest.mark.parametrize("clock,command", [
    ("garbage", ["status"]), ("garbage", ["open", "TEST", "--qty", "1"]), ("garbage", ["positions"]),
    ("sim:2025-03-04T09:30:00@60", ["status"]), ("sim:2025-03-04T09:30:00-05:00@0", ["status"]),
], ids=["garbage-status", "garbage-open", "garbage-positions", "no-offset-status", "zero-speed-status"])
def test_a_malformed_clock_is_refused_naming_catalyst_clock_without_a_traceback(embedded, clock, command):
    assert_refused(cli(*command, env={"CATALYST_CLOCK": clock}), "CATALYST_CLOCK")
    assert set(counts().values()) == {0}


BAD_ROWS = {
    "nan": "2025-03-04T09:31:00-05:00,TEST,100,100,100,nan,1000",
    "negative": "2025-03-04T09:31:00-05:00,TEST,-5,100,-5,100,1000",
    "zero": "2025-03-04T09:31:00-05:00,TEST,100,100,0,100,1000",
}


@pytest.mark.parametrize("kind,command", [
    ("nan", ["status"]), ("nan", ["open", "TEST", "--qty", "1"]), ("negative", ["status"]),
    ("negative", ["open", "TEST", "--qty", "1"]), ("zero", ["status"]),
], ids=["nan-status", "nan-open", "negative-status", "negative-open", "zero-status"])
def test_a_replay_file_with_an_unusable_price_is_refused_naming_the_file_and_line(embedded, kind, command):
    bad = embedded / f"{kind.upper()}.csv"
    bad.write_text("\n".join([HEADER, "2025-03-04T09:30:00-05:00,TEST,100,100,100,100,1000", BAD_ROWS[kind]]) + "\n")
    result = cli(*command, env={"CATALYST_MARKET_DATA": f"replay:{bad}"})
    assert_refused(result, f"{bad.name} line 3", "must be a finite number above zero")
    assert set(counts().values()) == {0}


def test_a_missing_replay_file_is_refused_naming_it(embedded):
    missing = embedded / "MISSING.csv"
    assert_refused(cli("status", env={"CATALYST_MARKET_DATA": f"replay:{missing}"}), "MISSING.csv", "does not exist")


def test_commands_on_an_unmigrated_database_say_to_run_db_upgrade(tmp_path):
    with environment({"CATALYST_VAR_DIR": str(tmp_path / "fresh")}):
        for command in (["status"], ["close", "1"]):
            assert_refused(cli(*command), "catalyst db upgrade")


# -- tasks --------------------------------------------------------------------------------------------

@pytest.fixture
def tasks_env(pg_url, tmp_path):
    """This process on a fresh PostgreSQL database with one open TEST position."""
    csv = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, [100.0] * 30)
    env = {"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"), "CATALYST_MARKET_DATA": f"replay:{csv}",
           "CATALYST_CLOCK": CLOCK}
    with environment(env):
        from catalyst.entries import open_position
        from catalyst.runtime import get_runtime

        position = open_position(get_runtime(), symbol="TEST", qty=5, client_order_id="entry-bad-input-1")
        yield position.id


def still_works(position_id: int) -> None:
    """The process carries on: a well-formed check of a real position still runs."""
    from tasks.monitoring import monitor_position

    result = monitor_position.apply(args=[position_id])
    assert result.successful(), result.traceback
    assert result.result == "hold"


@pytest.mark.parametrize("task_name", ["monitor_position", "exit_position"])
def test_an_unknown_position_fails_the_task_clearly_and_changes_no_row(tasks_env, task_name):
    import tasks.monitoring

    before = counts(TASK_TABLES)
    result = getattr(tasks.monitoring, task_name).apply(args=[999999])
    assert result.failed()
    assert isinstance(result.result, BadInput)
    assert "unknown position" in str(result.result)
    assert counts(TASK_TABLES) == before
    still_works(tasks_env)


MALFORMED_IDS = ["abc", -1, 0, 2.5, None, True, "", "1; DROP TABLE positions", [1], {"id": 1}]


@pytest.mark.parametrize("task_name", ["monitor_position", "exit_position"])
def test_malformed_position_ids_fail_the_task_clearly_and_the_process_carries_on(tasks_env, task_name):
    import tasks.monitoring

    task = getattr(tasks.monitoring, task_name)
    before = counts(TASK_TABLES)
    for bad in MALFORMED_IDS:
        result = task.apply(args=[bad])
        assert result.failed(), f"{task_name}({bad!r}) did not fail"
        assert isinstance(result.result, BadInput), f"{task_name}({bad!r}): {result.result!r}"
        assert "position_id must be a positive integer" in str(result.result)
        assert repr(bad) in str(result.result)
    assert counts(TASK_TABLES) == before
    (position,) = query(lambda s: s.scalars(select(Position)).all())
    assert position.status == "open"
    still_works(tasks_env)


def test_a_task_called_with_a_missing_argument_fails_naming_it(tasks_env):
    from tasks.monitoring import exit_position, monitor_position

    before = counts(TASK_TABLES)
    for task in (monitor_position, exit_position):
        result = task.apply(args=[])
        assert result.failed()
        assert isinstance(result.result, BadInput), repr(result.result)
        assert "position_id" in str(result.result)
    assert counts(TASK_TABLES) == before
    still_works(tasks_env)


def test_a_rejected_task_is_logged_to_agent_logs_for_the_operator(tasks_env):
    import structlog

    from catalyst.db.models import AgentLog
    from catalyst.logs import configure_logging
    from tasks.monitoring import monitor_position

    configure_logging("INFO", "worker")  # as a worker process does at start-up
    try:
        monitor_position.apply(args=[424242])
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    logged = query(lambda s: s.scalars(select(AgentLog).where(AgentLog.event == "task_rejected")).all())
    assert logged, "a rejected task should leave an ERROR row in agent_logs"
    assert logged[-1].level == "ERROR"
    assert "unknown position id 424242" in logged[-1].context["error"]


# -- worker start-up -------------------------------------------------------------------------------------

def worker_that_must_exit(env: dict[str, str], situation: str) -> tuple[int, str]:
    """Start a real worker with only ``env``'s Catalyst settings; it must exit by itself within 60 s."""
    return celery_that_must_exit("worker", env, situation)


def test_a_worker_on_an_unmigrated_database_exits_and_says_to_run_db_upgrade(tmp_path):
    returncode, out = worker_that_must_exit({"CATALYST_VAR_DIR": str(tmp_path / "unmigrated")},
                                            "on an unmigrated database")
    assert returncode != 0, out
    assert "catalyst db upgrade" in out, out
    assert "not migrated" in out, out
    assert "Traceback" not in out, out


def test_a_worker_pointed_at_a_database_that_does_not_exist_exits_with_one_line_instead_of_waiting(tmp_path, pg_url):
    returncode, out = worker_that_must_exit(
        {"CATALYST_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": pg_url.rsplit("/", 1)[0] + "/no_such_database"},
        "waiting for a database that does not exist")
    assert returncode != 0, out
    assert 'database "no_such_database" does not exist' in out, out
    assert "database_unreachable" not in out, out
    assert "Traceback" not in out, out


def test_ids_and_numbers_that_are_not_plainly_what_they_claim_are_refused_and_touch_nothing(tasks_env, tmp_path):
    """Issue 8 point 5: ids are ASCII digits in PostgreSQL's integer range, numbers are JSON numbers (never bools).

    Positions 1-7 exist, so a full-width '６' or an Arabic-Indic '٧' read as a digit would close a real one;
    ``true`` read as 1 would buy one share of a symbol nobody holds.
    """
    from tests.support import seed_position
    from tasks.monitoring import exit_position, monitor_position
    from tasks.trading import enter_position

    while seed_position("TEST", 100.0, SESSION_OPEN) < 7:
        pass
    before = counts(TASK_TABLES)
    for task in (monitor_position, exit_position):
        for bad in ["６", "٧", "²", "⑴", "１２", 10**400, 2**31, "2147483648", "99999999999", True, 1.0,
                    float("nan"), " 1", "1 ", "+1"]:
            result = task.apply(args=[bad])
            assert result.failed(), f"{task.name}({bad!r:.40}) was accepted"
            assert isinstance(result.result, BadInput), f"{task.name}({bad!r:.40}): {result.result!r}"
            assert "position_id" in str(result.result) and len(str(result.result)) < 200
    free = write_replay_csv(tmp_path / "FREE.csv", "FREE", SESSION_OPEN, [100.0] * 30)
    with environment({**os.environ, "CATALYST_MARKET_DATA": f"{os.environ['CATALYST_MARKET_DATA']},{free}"}):
        for field, bad in [("qty", True), ("qty", "5"), ("qty", 10**400), ("qty", float("inf")), ("qty", 1e12),
                           ("stop", True), ("target", True), ("stop", "90"), ("cycle_id", True), ("cycle_id", "６")]:
            result = enter_position.apply(kwargs={"symbol": "FREE", "qty": 5, **{field: bad}})
            assert result.failed(), f"enter_position({field}={bad!r:.40}) was accepted"
            assert isinstance(result.result, BadInput), f"enter_position({field}={bad!r:.40}): {result.result!r}"
            assert field in str(result.result)
    assert counts(TASK_TABLES) == before
    assert {p.status for p in query(lambda s: s.scalars(select(Position)).all())} == {"open"}
    still_works(tasks_env)
