"""Operating by hand (issue 10): tasks from the package, `catalyst shell`, clear database errors, `close --all`."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from catalyst.cli import main
from catalyst.db.models import ActivityLog, Decision, PaperOrder, Position
from catalyst.guard import operator
from catalyst.positions import execute_exit, request_exit
from catalyst.runtime import get_runtime
from tests.support import query, race, rows
from tests.test_guard import enter, loose, market  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
CATALYST = str(Path(sys.executable).with_name("catalyst"))
TASKS = ("scan_market", "evaluate_candidates", "enter_position", "monitor_position", "exit_position", "check_risk",
         "reconcile", "heartbeat", "deliver_notification", "daily_summary", "prune")


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def run(args: list[str], stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env})


# -- tasks from the package --------------------------------------------------------------------------------

def test_every_task_imports_from_the_package_in_a_fresh_process():
    names = ", ".join(TASKS)
    code = f"from tasks import {names}\nprint(' '.join(t.name for t in ({names},)))"
    done = run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"catalyst.{t}" for t in TASKS]


@pytest.mark.parametrize("first", ["catalyst.celery", "tasks.base", "tasks.monitoring", "celeryconfig"])
def test_no_import_order_makes_a_cycle(first):
    code = (f"import {first}\nimport tasks\nfrom catalyst.celery import app\n"
            "names = {getattr(tasks, n).name for n in tasks.__all__}\n"
            "print(tasks.exit_position.name, len(names), names <= set(app.tasks))")
    done = run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"catalyst.exit_position {len(TASKS)} True"


def test_an_unknown_name_is_an_attribute_error():
    import tasks

    with pytest.raises(ImportError):
        exec("from tasks import no_such_task", {})
    assert set(TASKS) <= set(dir(tasks))


# -- catalyst shell ----------------------------------------------------------------------------------------

def test_shell_runs_piped_code_with_app_runtime_tasks_and_models(market):
    with market():
        p = enter("AAA")
        script = "\n".join([
            "print(scan_market.name, rt.settings.broker)",
            "print(app.send_task.__name__, exit_position.name, daily_summary.name)",
            "with session_scope() as s:",
            "    print('open', s.scalar(select(func.count()).select_from(Position).where(Position.status == 'open')))",
            "print(sorted(n for n in ('Position', 'Order', 'Decision', 'ServiceHealth') if n in globals()))",
        ]) + "\n"
        done = run([CATALYST, "shell"], stdin=script)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "catalyst.scan_market paper", "send_task catalyst.exit_position catalyst.daily_summary", "open 1",
            "['Decision', 'Order', 'Position', 'ServiceHealth']"]
        assert query(lambda s: s.get(Position, p.id)).status == "open"  # looking changes nothing


def test_shell_command_option_and_a_failing_script(market):
    with market():
        done = run([CATALYST, "shell", "-c", "print(heartbeat.name, type(rt).__name__)"])
        assert (done.returncode, done.stdout.strip()) == (0, "catalyst.heartbeat Runtime"), done.stderr
        failed = run([CATALYST, "shell"], stdin="print('before')\nraise RuntimeError('boom')\n")
        assert failed.returncode == 1 and failed.stdout.strip() == "before"
        assert "RuntimeError: boom" in failed.stderr


def test_interactive_shell_has_a_banner_that_says_what_is_loaded(market, monkeypatch, capsys):
    from catalyst import shell

    class Keyboard(io.StringIO):
        def isatty(self) -> bool:
            return True

    with market():
        monkeypatch.setattr(sys, "stdin", Keyboard("print(enter_position.name, 'typed')\n"))
        assert shell.run(plain=True) == 0
        out = capsys.readouterr()
        assert "catalyst.enter_position typed" in out.out
        for name in ("app", "rt, settings", "session_scope", *TASKS, "Position", "ServiceHealth", "broker paper"):
            assert name in out.err  # code.interact writes its banner where Python's prompt does


# -- the database cannot be used ---------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55"
UNREACHABLE = f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x"


def assert_one_clear_line(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and all(e in lines[0] for e in expected), lines[0]
    assert PASSWORD not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_unreachable_database_is_one_line_without_the_password():
    done = run([CATALYST, "status"], DATABASE_URL=UNREACHABLE)
    assert_one_clear_line(done, "nobody:***@127.0.0.1:1/x", "Connection refused", "DATABASE_URL")


def test_malformed_database_url_is_one_line():
    done = run([CATALYST, "positions"], DATABASE_URL="notaurl")
    assert_one_clear_line(done, "DATABASE_URL is not a database URL")


@pytest.fixture
def database_at(monkeypatch):
    """``database_at(url)``: this process's settings, runtime and engines point at ``url`` (all reset after)."""
    from catalyst.db.engine import dispose_all
    from catalyst.runtime import reset_runtime

    def point(url: str) -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        reset_runtime()
        dispose_all()

    yield point
    monkeypatch.undo()
    reset_runtime()
    dispose_all()


@pytest.mark.parametrize("url, expected", [
    (UNREACHABLE, "cannot use the database at postgresql+psycopg://nobody:***@127.0.0.1:1/x: connection failed"),
    ("notaurl", "DATABASE_URL is not a database URL"),
    (f"http://nobody:{PASSWORD}@host/db", "DATABASE_URL names a database kind Catalyst cannot use (http)"),
    (f"postgresql://nobody:{PASSWORD}@127.0.0.1:5432/catalyst_no_such_db", 'role "nobody" does not exist'),
])
@pytest.mark.parametrize("command", [["status"], ["positions", "--all"], ["db", "upgrade"], ["close", "1"],
                                     ["close", "--all", "--reason", "drill"], ["halt", "--reason", "drill"],
                                     ["resume", "--confirm"], ["reconcile"], ["open", "AAA", "--qty", "1"],
                                     ["shell", "-c", "print(1)"]])
def test_every_command_that_needs_the_database_says_so_in_one_line(url, expected, command, database_at):
    database_at(url)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "DATABASE_URL" in lines[0], result.stderr
    assert expected in lines[0], lines[0]
    assert PASSWORD not in result.output and result.stdout == ""


# -- close --all -------------------------------------------------------------------------------------------

def sells() -> list[PaperOrder]:
    return rows(PaperOrder, PaperOrder.side == "sell")


def operator_notes() -> dict[int, str]:
    return {d.position_id: d.details["note"] for d in rows(Decision, Decision.kind == "operator")}


def test_close_all_closes_every_open_position_once_with_the_operators_reason(market):
    with market(**loose()):
        held = [enter(s) for s in ("AAA", "BBB", "CCC")]
        done_before = cli("close", str(held[0].id))
        assert done_before.exit_code == 0, done_before.output
        result = cli("close", "--all", "--reason", "feed looks wrong", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        rest = [p.id for p in held[1:]]
        assert (data["requested"], data["closed"], data["already_closing"], data["failed"]) == (rest, rest, [], {})
        assert (data["by"], data["reason"], data["exit_reason"]) == (operator(), "feed looks wrong", "manual")
        assert [p["status"] for p in data["positions"]] == ["closed", "closed"]
        assert {p.status for p in rows(Position)} == {"closed"}
        assert {p.exit_reason for p in rows(Position)} == {"manual"}
        assert len(sells()) == 3
        assert operator_notes() == {pid: "feed looks wrong" for pid in rest}
        activity = rows(ActivityLog, ActivityLog.event == "operator_close")
        assert sorted(a.position_id for a in activity) == rest
        assert {(a.details["by"], a.details["note"], a.details["command"]) for a in activity} == {
            (operator(), "feed looks wrong", "close --all")}

        again = cli("close", "--all", "--reason", "once more")
        assert again.exit_code == 0 and again.output.strip() == "no open positions: nothing to close"
        assert len(sells()) == 3 and len(operator_notes()) == 2


def test_close_all_text_says_what_it_did(market):
    with market(**loose()):
        a, b = enter("AAA"), enter("BBB")
        request_exit(get_runtime(), b.id, "stop_loss")  # a monitor's exit already under way: left to it
        result = cli("close", "--all", "--reason", "going home")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == [
            f"closing every open position (manual) by {operator()}: going home",
            f"  position {a.id} AAA: closed at 50.00, P&L 0.00",
            f"already closing (left to their exit): {b.id}",
            "positions closed: 1 of 1"]
        assert query(lambda s: s.get(Position, b.id)).status == "closing" and len(sells()) == 1


@pytest.mark.parametrize("args, message", [
    ([], "give a position ID or --all"),
    (["1", "--all", "--reason", "x"], "give a position ID or --all (not both)"),
    (["--all"], "--all needs --reason TEXT"),
    (["--all", "--reason", "   "], "--all needs --reason TEXT"),
    (["--all", "--reason", "x" * 501], "at most 500 characters"),
])
def test_close_usage_errors_change_nothing(market, args, message):
    with market(**loose()):
        p = enter("AAA")
        result = cli("close", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert query(lambda s: s.get(Position, p.id)).status == "open" and sells() == []


def test_close_one_with_a_reason_records_it(market):
    with market(**loose()):
        p = enter("AAA")
        result = cli("close", str(p.id), "--reason", "earnings tonight")
        assert result.exit_code == 0, result.output
        assert query(lambda s: s.get(Position, p.id)).exit_reason == "manual"
        assert operator_notes() == {p.id: "earnings tonight"}


def test_race_two_close_alls_and_a_monitor_exit_never_sell_a_position_twice(market):
    with market(**loose()):
        for round_ in range(6):
            held = [enter(s) for s in ("AAA", "BBB", "CCC")]
            target = random.choice(held).id
            sold_before = len(sells())

            def actor(i: int):
                if i < 2:
                    return main.main(["close", "--all", "--reason", f"round {round_} op {i}", "--json"],
                                     standalone_mode=False)
                if request_exit(get_runtime(), target, "stop_loss"):
                    return execute_exit(get_runtime(), target)
                return None

            results = race(3, actor)
            assert not [r for r in results if isinstance(r, Exception)], results
            ids = [p.id for p in held]
            closed = query(lambda s: s.scalars(select(Position).where(Position.id.in_(ids))).all())
            assert {p.status for p in closed} == {"closed"}, round_
            assert len(sells()) - sold_before == 3, round_
            notes = query(lambda s: s.execute(select(Decision.position_id, func.count()).where(
                Decision.kind == "operator", Decision.position_id.in_(ids)).group_by(Decision.position_id)).all())
            manual = {p.id for p in closed if p.exit_reason == "manual"}
            assert dict(notes) == {pid: 1 for pid in manual}, round_
            assert len(manual) >= 2  # only the monitor's own position can have gone its way


def test_every_registered_task_can_be_imported_from_the_package():
    import tasks
    from catalyst.celery import app

    for module in {"tasks.trading", "tasks.monitoring", "tasks.maintenance", "tasks.notifications"}:
        __import__(module)
    registered = {name for name in app.tasks if name.startswith("catalyst.")}
    exported = {getattr(tasks, name).name for name in tasks.__all__}
    assert registered == exported
