"""Logs: LOG_FORMAT picks JSON or console for Catalyst's and Celery's/Flower's records alike; every line a task logs
carries its id, name, worker and the position/cycle it concerns; and agent_logs rows are written off the caller's
path, so a slow or stopped database never holds up a log call (nor the task making it)."""

from __future__ import annotations

import base64
import json
import os
import pty
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
import structlog
from sqlalchemy import select

from catalyst import logs
from catalyst.db.models import AgentLog
from tests.private_servers import free_port
from tests.support import environment, producer, query, seed_position, wait_for
from tests.test_e2e_loop import base_env, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def json_lines(text: str) -> list[dict]:
    """Every line of a process's output that is a JSON object (the banner Celery prints is not)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


# --- the background writer ---------------------------------------------------------------------------------------

class StuckDatabase:
    """A ``write_rows`` that hangs (as a slow or silent PostgreSQL does) until released; records what it got."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.rows: list[dict] = []

    def __call__(self, rows: list[dict]) -> None:
        self.entered.set()
        assert self.release.wait(60), "never released"
        self.rows.extend(rows)


@pytest.fixture
def stuck(monkeypatch):
    """Structlog as a Celery process has it (agent_logs through the background writer), its database stuck."""
    database = StuckDatabase()
    writer = logs.AgentLogWriter(database, capacity=5, batch_size=100)
    monkeypatch.setattr(logs, "_writer", writer)
    logs.configure_logging("INFO", "worker")
    yield database, writer
    database.release.set()
    writer.stop(10)


def test_a_log_call_returns_while_the_agent_logs_writer_is_stuck_in_the_database(stuck, capfd):
    database, writer = stuck
    log = structlog.get_logger("test")
    log.warning("first_warning", position_id=1)
    assert database.entered.wait(30), "the writer never picked the row up"

    finished = threading.Event()

    def a_task_logging():
        for i in range(3):
            log.error("task_failed", position_id=i)
        finished.set()

    task = threading.Thread(target=a_task_logging, daemon=True)
    task.start()
    task.join(60)
    # The task finished logging while the database still holds the writer: the calls did not wait for it.
    assert finished.is_set() and not database.release.is_set() and database.rows == []
    assert [e["event"] for e in json_lines(capfd.readouterr().err)] == ["first_warning"] + ["task_failed"] * 3

    database.release.set()
    assert writer.flush(30)
    assert [r["event"] for r in database.rows] == ["first_warning", "task_failed", "task_failed", "task_failed"]
    assert database.rows[0]["level"] == "WARNING" and database.rows[0]["service"] == "worker"
    assert database.rows[1]["level"] == "ERROR" and database.rows[1]["context"]["position_id"] == 0


def test_rows_beyond_the_queue_are_dropped_counted_and_reported_once_the_database_answers(stuck):
    database, writer = stuck
    log = structlog.get_logger("test")
    log.warning("held_by_the_writer")
    assert database.entered.wait(30)
    for i in range(12):  # 5 fit in the queue, 7 do not
        log.warning("during_outage", n=i)
    assert writer.dropped_total == 7

    database.release.set()
    assert wait_for(lambda: any(r["event"] == "agent_logs_dropped" for r in database.rows), 30,
                    what="the drop report")
    assert writer.flush(30)
    events = [r["event"] for r in database.rows]
    assert events[:6] == ["held_by_the_writer"] + ["during_outage"] * 5
    (report,) = [r for r in database.rows if r["event"] == "agent_logs_dropped"]
    assert report["context"]["dropped"] == 7 and report["level"] == "WARNING"
    log.warning("after_recovery")  # no drops since: no second report
    assert writer.flush(30)
    assert events.count("agent_logs_dropped") == 1 and [r["event"] for r in database.rows][-1] == "after_recovery"


@pytest.fixture
def silent_database():
    """A TCP port that accepts connections and never says a word (a PostgreSQL that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)
    yield f"postgresql://catalyst@127.0.0.1:{server.getsockname()[1]}/catalyst"
    server.close()


def test_a_database_that_never_answers_does_not_hold_up_the_log_call(silent_database, monkeypatch, capfd):
    """The real writer against a server that hangs: the log call returns first, the writer gives up later."""
    with environment({"DATABASE_URL": silent_database}):
        writer = logs.AgentLogWriter(logs._RowStore().write, retry_min=30, retry_max=30)
        monkeypatch.setattr(logs, "_writer", writer)
        logs.configure_logging("INFO", "worker")
        structlog.get_logger("test").error("task_failed", position_id=7)
        returned = [e["event"] for e in json_lines(capfd.readouterr().err)]
        # The call has returned and its line is out; the writer is still waiting for the database to answer.
        assert returned == ["task_failed"]
        assert writer.written_total == 0
        gave_up = wait_for(lambda: [e for e in json_lines(capfd.readouterr().err)
                                    if e["event"] == "agent_logs_unavailable"], 60, what="the writer to give up")
        assert "timeout" in gave_up[0]["error"].lower() and writer.written_total == 0
        writer.stop(0)


def test_in_a_command_the_row_is_written_before_the_log_call_returns(pg_url):
    """Outside Celery (the CLI, a shell) there is no thread: the command's warnings are in the table when it ends."""
    with environment({"DATABASE_URL": pg_url}):
        logs.configure_logging("INFO", "cli")
        structlog.get_logger("test").warning("operator_warning", position_id=3)
        (row,) = query(lambda s: s.scalars(select(AgentLog)).all())
    assert (row.event, row.level, row.service, row.context["position_id"]) == ("operator_warning", "WARNING", "cli", 3)


# --- LOG_FORMAT ----------------------------------------------------------------------------------------------------

EMIT = """
import logging, structlog
from catalyst.logs import configure_logging, route_stdlib_logging
configure_logging("INFO", "worker", persist=False)
route_stdlib_logging("INFO")
structlog.get_logger("catalyst.tasks").info("position_checked", position_id=5)
logging.getLogger("celery.app.trace").info("Task %s[%s] succeeded in %ss: %r", "catalyst.heartbeat", "abc", 0.01, "w")
"""


def emitted(log_format: str, tty: bool = False) -> str:
    """stderr of a fresh process logging one structlog event and one Celery-style stdlib record."""
    env = {**os.environ, "LOG_FORMAT": log_format, "PYTHONPATH": ROOT}
    if not tty:
        return subprocess.run([sys.executable, "-c", EMIT], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=True).stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", EMIT], env=env, cwd=ROOT, stderr=follower, stdout=subprocess.DEVNULL,
                       timeout=60, check=True)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)


def test_log_format_json_renders_catalyst_events_and_celery_records_as_json_objects():
    lines = [json.loads(line) for line in emitted("json").splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("position_checked", "info"), ("Task catalyst.heartbeat[abc] succeeded in 0.01s: 'w'", "info")]
    assert lines[0]["position_id"] == 5 and lines[1]["logger"] == "celery.app.trace"
    assert all(e["service"] == "worker" and e["timestamp"].endswith("Z") for e in lines)


@pytest.mark.parametrize("log_format, tty", [("console", False), ("auto", True)])
def test_log_format_console_and_auto_on_a_terminal_give_text_lines(log_format, tty):
    text = emitted(log_format, tty)
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 2 and not any(line.lstrip().startswith("{") for line in lines)
    assert "position_checked" in lines[0] and "position_id=5" in lines[0]
    assert "succeeded in 0.01s" in lines[1] and "celery.app.trace" in lines[1]


ROUTINE = """
import logging, sys
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from catalyst.logs import configure_logging, route_stdlib_logging
from workers.logging_setup import quiet_routine_task_lines
configure_logging(sys.argv[1], "worker", persist=False)
route_stdlib_logging(sys.argv[1])
quiet_routine_task_lines()
for name, result in (("catalyst.monitor_position", "'hold'"), ("catalyst.exit_position", "'hold'"),
                     ("catalyst.monitor_position", "'redrive'")):
    context = {"id": "abc", "name": name, "args": "[5]", "kwargs": "{}", "eta": None, "runtime": 0.01,
               "return_value": result}
    logging.getLogger("celery.worker.strategy").info(LOG_RECEIVED, context, extra={"data": context})
    logging.getLogger("celery.app.trace").info(LOG_SUCCESS, context, extra={"data": context})
logging.getLogger("celery.app.trace").error("Task %s[%s] raised unexpected: %r", "catalyst.monitor_position", "abc",
                                            "boom")
"""


@pytest.mark.parametrize("level, kept", [
    ("INFO", ["exit_position received", "exit_position succeeded", "monitor_position succeeded",
              "monitor_position raised"]),
    ("DEBUG", ["monitor_position received", "monitor_position succeeded", "exit_position received",
               "exit_position succeeded", "monitor_position received", "monitor_position succeeded",
               "monitor_position raised"])])
def test_celery_received_and_succeeded_lines_of_a_routine_check_only_show_at_debug(level, kept):
    """A check that held or exited logs its own position_checked line; Celery's two lines per check are noise at
    10,000 positions. A check that ended otherwise (a redrive) keeps Celery's "succeeded" line: it is its only one."""
    env = {**os.environ, "LOG_FORMAT": "json", "PYTHONPATH": ROOT}
    err = subprocess.run([sys.executable, "-c", ROUTINE, level], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stderr
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    said = [f"{e.split('[')[0].split('.')[-1]} {e.split('] ')[1].split(' ')[0].rstrip(':')}" for e in events]
    assert said == kept


def test_log_format_auto_off_a_terminal_is_json():
    assert [json.loads(line)["event"] for line in emitted("auto").splitlines()][0] == "position_checked"


# --- a real worker -------------------------------------------------------------------------------------------------

@pytest.fixture
def worker_env(tmp_path, pg_url, redis_url):
    env = base_env(tmp_path)
    env.update(DATABASE_URL=pg_url, REDIS_URL=redis_url, LOG_FORMAT="json")
    with environment(env):
        cli("db", "upgrade")
        yield env


def finished(lines: list[dict], task_id: str) -> bool:
    """Celery's "succeeded", our failure lines, or (a routine check, whose Celery lines are dropped) its own."""
    return any(e.get("task_id") == task_id and ("succeeded" in e["event"] or e["event"] in (
        "task_failed", "task_rejected", "position_checked")) for e in lines)


def test_every_line_a_task_logs_carries_its_id_worker_and_position_and_nothing_leaks_into_the_next(worker_env, stack):
    from catalyst.runtime import get_runtime
    from tasks import evaluate_candidates, heartbeat, monitor_position

    position_id = seed_position("TEST", 100.0, get_runtime().clock.now())
    worker = stack.worker(name="logs", concurrency=1)
    with producer(os.environ["REDIS_URL"]) as app:
        sent = [app.send_task(monitor_position.name, args=[position_id]).id,
                app.send_task(monitor_position.name, kwargs={"position_id": str(position_id)}).id,
                app.send_task(evaluate_candidates.name, args=[424242]).id,  # no such cycle: rejected, with its cycle id
                app.send_task(heartbeat.name).id]
    lines = wait_for(lambda: (found := json_lines(worker.log_text())) and all(finished(found, t) for t in sent)
                     and found, 120, what="every task to finish:\n" + worker.log_text()[-3000:])

    monitor_lines = [e for e in lines if e.get("task") == "catalyst.monitor_position"]
    checked = [e for e in lines if e["event"] in ("position_checked", "indicators_computed")]
    assert len([e for e in checked if e["event"] == "position_checked"]) == 2
    for event in checked:  # Catalyst's own lines inside the task; indicators_computed never names the position
        assert event["task"] == "catalyst.monitor_position" and event["task_id"] in sent[:2]
        assert event["worker"].startswith("logs@") and event["position_id"] == position_id
    celery_lines = [e for e in lines if e.get("logger", "").startswith("celery.")]
    (line,) = [e for e in celery_lines if "succeeded" in e["event"] and sent[3] in e["event"]]
    assert line["task_id"] == sent[3] and line["worker"].startswith("logs@"), "Celery's own record, with the context"
    assert [e for e in celery_lines if "received" in e["event"] and sent[3] in e["event"]]
    for task_id in sent[:2]:  # a routine check says what it found in its own line, once; Celery's two are dropped
        assert not [e for e in celery_lines if task_id in e["event"]]
    assert all({"task_id", "worker", "position_id"} <= set(e) for e in monitor_lines)

    (rejected,) = [e for e in lines if e["event"] == "task_rejected"]
    assert rejected["cycle_id"] == 424242 and rejected["task"] == "catalyst.evaluate_candidates"
    assert "position_id" not in rejected
    heartbeat_lines = [e for e in lines if e.get("task_id") == sent[3]]
    assert heartbeat_lines and all("position_id" not in e and "cycle_id" not in e for e in heartbeat_lines)
    assert all("task_id" not in e for e in lines if e["event"] == "worker_online")

    # Celery's own records are JSON too: no line in Celery's default "[date: LEVEL/Process] ..." format.
    assert not [line for line in worker.log_text().splitlines() if line.startswith("[20")]
    assert any(e.get("logger", "").startswith("celery") and "ready" in e["event"] for e in lines)
    # The rejected task's error reached agent_logs with the same context.
    row = wait_for(lambda: query(lambda s: s.scalars(select(AgentLog).where(AgentLog.event == "task_rejected"))
                                 .first()), 30, what="the agent_logs row")
    assert row.context["task_id"] == sent[2] and row.context["cycle_id"] == 424242
    assert row.context["worker"].startswith("logs@") and row.service == "worker"


# --- Flower --------------------------------------------------------------------------------------------------------

def test_flower_access_and_app_lines_are_json_without_its_credentials(worker_env, tmp_path):
    port = free_port()
    auth = "operator:flower-pass-8c1e77"
    log_path = tmp_path / "flower.log"
    with open(log_path, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "catalyst", "flower", f"--port={port}", "--address=127.0.0.1",
             f"--basic-auth={auth}"], env={**os.environ, "FLOWER_BASIC_AUTH": auth, "PYTHONPATH": ROOT},
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def get(with_auth: bool) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/workers")
            if with_auth:
                request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            try:
                return urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        wait_for(lambda: get(False) == 401, 90, what="Flower to answer:\n" + log_path.read_text(errors="replace"))
        assert get(True) == 200
        requests = wait_for(lambda: [e for e in json_lines(log_path.read_text()) if e["event"] == "http_request"
                                     and e["path"] == "/workers" and e["status"] == 200], 30, what="access lines")
    finally:
        os.killpg(flower.pid, 15)
        flower.wait(30)
    lines = json_lines(log_path.read_text())
    refused = [e for e in lines if e["event"] == "http_request" and e["status"] == 401]
    assert refused and refused[0]["level"] == "warning" and requests[0]["method"] == "GET"
    assert any(e.get("logger", "").startswith("flower") for e in lines), "Flower's own records"
    assert all(e.get("service") == "flower" for e in lines), [e for e in lines if e.get("service") != "flower"]
    text = log_path.read_text()
    assert "flower-pass-8c1e77" not in text
    assert not [line for line in text.splitlines() if line.startswith("[I ") or line.startswith("[W ")], \
        "tornado's own format"


# --- defects from the review: one bad row, a fork mid-write, redaction holes, a dying writer, Celery's errors -------

def test_one_unstorable_value_does_not_stop_later_rows_reaching_agent_logs(pg_url):
    """A NaN (invalid JSON for PostgreSQL) or a NUL character in one warning used to fail the batch forever."""
    store = logs._RowStore()
    writer = logs.AgentLogWriter(store.write, retry_min=0.05, retry_max=0.2)
    try:
        with environment({"DATABASE_URL": pg_url}):
            logs._writer, saved = writer, logs._writer
            try:
                logs.configure_logging("INFO", "worker")
                log = structlog.get_logger("test")
                log.warning("odd_value", value=float("nan"), ratio=float("inf"), name="a\x00b")
                log.warning("odd\x00event", n=1)
                for i in range(3):
                    log.warning("normal_warning", n=i)
                assert writer.flush(30), "the writer is stuck on the bad row"
            finally:
                logs._writer = saved
            rows = query(lambda s: [(r.event, r.context) for r in s.scalars(select(AgentLog).order_by(AgentLog.id))])
    finally:
        writer.stop(0)
        store.forget()
    assert [c["n"] for e, c in rows if e == "normal_warning"] == [0, 1, 2]
    assert "oddevent" in [e for e, _ in rows]
    (odd,) = [c for e, c in rows if e == "odd_value"]
    assert odd["name"] == "ab" and odd["value"] in ("nan", None) and odd["ratio"] in ("inf", None)


class _BlockingFile:
    """A stream whose ``write`` blocks (a full pipe, a slow terminal) until the test lets it write to ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd, self.blocking = fd, True
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        if self.blocking:
            self.entered.set()
            self.release.wait(60)
        return os.write(self.fd, text.encode())

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_process_forked_while_another_thread_writes_a_line_can_log(monkeypatch):
    """A pool child forked while a thread of the parent was mid-write must not wait forever for that write."""
    read_end, write_end = os.pipe()
    stream = _BlockingFile(write_end)
    monkeypatch.setattr(sys, "__stderr__", stream)
    logs.configure_logging("INFO", "worker", persist=False)
    writing = threading.Thread(target=lambda: structlog.get_logger("t").warning("heartbeat_slow"), daemon=True)
    writing.start()
    assert stream.entered.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: log one line and exit 0; a hang is the defect
        stream.blocking = False
        structlog.get_logger("t").info("child_started")
        os._exit(0)
    try:
        exited = None
        for _ in range(300):  # up to 30 s, in 0.1 s steps
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                exited = code
                break
            threading.Event().wait(0.1)
        if exited is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert exited is not None and os.waitstatus_to_exitcode(exited) == 0, "the child hung on its first log line"
        assert b"child_started" in os.read(read_end, 65536)
    finally:
        stream.release.set()
        writing.join(30)
        os.close(read_end)
        os.close(write_end)


REDACT = """
import json, logging, sys, structlog
from catalyst import logs
rows = []
logs._store.write = rows.extend
logs.configure_logging("INFO", "worker")
logs.route_stdlib_logging("INFO")
log = structlog.get_logger("t")
SECRET = "alpaca-secret-5b1d2e9c8f"
log.warning("exc_obj", error=Exception("auth failed for " + SECRET))
log.warning("a_tuple", args=(SECRET,), items={SECRET})
log.warning("some_bytes", body=("key=" + SECRET).encode())
log.warning("deep", ctx={"a": {"b": {"c": {"d": {"e": {"f": {"g": SECRET}}}}}}})
log.warning("urls", redis="redis://:redis-pw-77c1a9@127.0.0.1:6379/0", api="https://x/?apikey=query-key-41d9e0&x=1")
def failing(key=SECRET):
    raise RuntimeError("connect failed, key " + key)
try:
    failing()
except RuntimeError:
    log.error("with_traceback", exc_info=True)
    logging.getLogger("celery.app.trace").error("Task x raised", exc_info=True)
    logging.getLogger("celery.worker").info("not an error: %s", "stays out of agent_logs")
print(json.dumps(rows, default=str))
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_secrets_inside_exceptions_tuples_bytes_and_tracebacks_are_masked(log_format):
    secrets = ["alpaca-secret-5b1d2e9c8f", "redis-pw-77c1a9", "query-key-41d9e0"]
    env = {**os.environ, "LOG_FORMAT": log_format, "PYTHONPATH": ROOT, "ALPACA_SECRET_KEY": secrets[0]}
    done = subprocess.run([sys.executable, "-c", REDACT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["event"] for r in rows] == ["exc_obj", "a_tuple", "some_bytes", "deep", "urls", "with_traceback",
                                          "Task x raised"]
    assert "RuntimeError" in done.stderr and "connect failed" in done.stderr, "the traceback is still shown"
    for secret in secrets:
        assert secret not in done.stderr, f"{secret!r} in the {log_format} output"
        assert secret not in done.stdout, f"{secret!r} in an agent_logs row"


class _OddError(Exception):
    """An exception a driver might raise whose text cannot even be rendered."""

    def __str__(self) -> str:
        raise ValueError("no text")


def test_the_writer_survives_an_unexpected_error_and_later_rows_still_arrive(monkeypatch):
    written: list[dict] = []

    def store(rows):
        if any(r["event"] == "strange_row" for r in rows):
            raise _OddError()
        written.extend(rows)

    writer = logs.AgentLogWriter(store, retry_min=0.05, retry_max=0.1)
    monkeypatch.setattr(logs, "_writer", writer)
    logs.configure_logging("INFO", "worker")
    log = structlog.get_logger("test")
    log.warning("strange_row")
    assert wait_for(lambda: writer._queue.unfinished_tasks == 0, 30, what="the strange row to be dealt with")
    for i in range(3):
        log.warning("later_row", n=i)
    assert writer.flush(30)
    assert [r["context"]["n"] for r in written if r["event"] == "later_row"] == [0, 1, 2]
    writer.stop(0)


def test_celery_error_records_reach_agent_logs(monkeypatch):
    rows: list[dict] = []
    monkeypatch.setattr(logs, "_writer", None)
    monkeypatch.setattr(logs._store, "write", rows.extend)
    logs.configure_logging("INFO", "worker")
    handler = logs.route_stdlib_logging("INFO")
    try:
        import logging

        logging.getLogger("celery.worker").error("consumer: Cannot connect to %s", "redis://:pw-5e1c0a@host:6379/0")
        logging.getLogger("kombu.connection").critical("broker gone")
        logging.getLogger("celery.worker").warning("a warning of Celery's: only on stderr")
        logging.getLogger("some.library").error("not Celery's: only on stderr")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [(r["level"], r["service"]) for r in rows] == [("ERROR", "worker"), ("CRITICAL", "worker")]
    assert rows[0]["event"].startswith("consumer: Cannot connect to redis://") and "pw-5e1c0a" not in str(rows)
    assert rows[0]["context"]["logger"] == "celery.worker"


def test_an_error_inside_the_writer_loop_does_not_end_the_thread(monkeypatch):
    """Here the drop report fails once (a bug, a broken stderr): the thread carries on with later rows."""
    written: list[dict] = []
    writer = logs.AgentLogWriter(written.extend)
    report, failed = writer._drop_report, []

    def failing_once():
        if not failed:
            failed.append(True)
            raise RuntimeError("unexpected")
        return report()

    monkeypatch.setattr(writer, "_drop_report", failing_once)
    monkeypatch.setattr(logs, "_writer", writer)
    logs.configure_logging("INFO", "worker")
    log = structlog.get_logger("test")
    log.warning("first_row")
    assert wait_for(lambda: failed, 30, what="the failure")
    for i in range(3):
        log.warning("later_row", n=i)
    assert writer.flush(30)
    assert [r["event"] for r in written] == ["first_row", "later_row", "later_row", "later_row"]
    writer.stop(0)
