"""Flower as an operator meets it: started by the Procfile's ``web`` line next to a real worker and beat,
opened in headless Chromium (Debian's ``chromium``).

With credentials the browser shows Catalyst's queues on the Broker page and finished
``catalyst.monitor_position`` tasks of a seeded open position on the Tasks page (the workers run with
``worker_send_task_events = False``; Flower's periodic ``enable_events`` broadcast turns events on). Without
credentials every page and API answers 401 and the browser shows no task list, while Flower's own
``/healthcheck`` and ``/metrics`` answer anyone (upstream behaviour, which the README states).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import chromium
from tests.support import environment, seed_position, wait_for, write_replay_csv

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CATALYST_QUEUES = {"scan", "evaluate", "monitor", "exit", "maintenance"}
EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)  # a Tuesday
USER, PASSWORD = "operator", "flower-test-pw"


@pytest.fixture
def browser() -> str:
    """The Chromium binary; the test skips without one (CI installs it, and there a missing browser fails)."""
    binary = chromium.find()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required on CI")
        pytest.skip("chromium is not installed")
    return binary


def procfile_command(process: str) -> str:
    """The command of ``process`` in the Procfile, exactly as a PaaS would run it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return command.strip()
    raise AssertionError(f"no {process}: line in the Procfile")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, auth: tuple[str, str] | None = None, method: str = "GET") -> tuple[int, Message, str]:
    """(status, headers (case-insensitive), body) of one request, with HTTP basic credentials when given; an
    error status is an answer, no connection is status 0."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode(errors="replace")
    except OSError:
        return 0, Message(), ""


@dataclass
class Flower:
    port: int
    popen: subprocess.Popen
    log_path: Path

    def url(self, path: str, credentials: tuple[str, str] | None = None) -> str:
        userinfo = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_flower(tmp_path, request):
    """Starts the Procfile's ``web`` process in this process's (Catalyst) environment; killed at teardown (its log
    printed when the test failed)."""
    started: list[Flower] = []

    def start() -> Flower:
        port = free_port()
        env = {**os.environ, "PORT": str(port), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        log_path = tmp_path / "flower.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(["sh", "-c", procfile_command("web")], env=env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        flower = Flower(port, popen, log_path)
        started.append(flower)
        wait_for(lambda: popen.poll() is not None or http(flower.url("/healthcheck"))[0] == 200, 120,
                 interval=0.5, what="Flower to answer /healthcheck")
        assert popen.poll() is None, f"Flower exited:\n{flower.log_text()[-3000:]}"
        return flower

    yield start
    for flower in started:
        _stop(flower.popen)
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"===== flower =====\n{flower.log_text()[-6000:]}")


def _stop(popen: subprocess.Popen) -> None:
    """SIGTERM to the web process group (sh and the Flower it exec'd), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            popen.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def session_env(tmp_path, pg_url, redis_url):
    """A flat simulated session (60x) with one seeded open position, monitored every simulated minute."""
    csv = write_replay_csv(tmp_path / "FLAT.csv", "FLAT", SESSION_OPEN, [50.0] * 390)
    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "CATALYST_VAR_DIR": str(tmp_path / "var"),
        "CATALYST_MARKET_DATA": f"replay:{csv}",
        "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=1)).isoformat()}@60",
        "MONITOR_CHECK_INTERVAL": "60",
        "CATALYST_AUTO_ENTRIES": "false",
        "CATALYST_HEARTBEAT_INTERVAL": "2",
    }
    with environment(env):
        env["position_id"] = str(seed_position("FLAT", 50.0, SESSION_OPEN))
        yield env


def finished_monitor_task(flower: Flower, position_id: str) -> dict | None:
    """A successful ``catalyst.monitor_position`` of the position, as Flower's (authenticated) API knows it."""
    status, _, body = http(flower.url("/api/tasks?taskname=catalyst.monitor_position&state=SUCCESS&limit=20"),
                           auth=(USER, PASSWORD))
    if status != 200:
        return None
    return next((t for t in json.loads(body).values() if t["args"] == f"[{position_id}]"), None)


def monitor_events(flower: Flower) -> float:
    """Succeeded ``catalyst.monitor_position`` events counted by Flower's /metrics, read WITHOUT credentials."""
    status, _, body = http(flower.url("/metrics"))
    assert status == 200, f"/metrics answered {status} without credentials"
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == "flower_events_total" and sample.labels.get("task") == "catalyst.monitor_position"
               and sample.labels.get("type") == "task-succeeded")


def test_chromium_shows_catalyst_queues_and_finished_monitor_checks(browser, session_env, stack, start_flower,
                                                                    tmp_path):
    stack.worker()
    stack.beat()
    flower = start_flower()
    creds = (USER, PASSWORD)
    profiles = tmp_path / "chromium"

    wait_for(lambda: finished_monitor_task(flower, session_env["position_id"]), 180, interval=1,
             what="Flower to see a finished catalyst.monitor_position of the seeded position")

    def rendered_monitor_rows():
        dom = chromium.dump_dom(browser, flower.url("/tasks", creds), profiles)
        rows = chromium.table_rows(dom, "tasks-table")
        return [r for r in rows if r.cells[:1] == ["catalyst.monitor_position"] and "SUCCESS" in r.cells]

    # The task list arrives by XHR (/tasks/datatable): the URL's credentials must reach it too.
    rows = wait_for(rendered_monitor_rows, 120, interval=2, what="a finished monitor task in the rendered task list")
    assert rows[0].cells[-1].startswith("worker@"), rows[0]
    task_page = chromium.dump_dom(browser, flower.url(f"/task/{rows[0].id}", creds), profiles)
    details = chromium.definitions(task_page)
    assert details["Name"] == "catalyst.monitor_position"
    assert details["Status"] == "SUCCESS"
    assert details["Arguments"] == f"[{session_env['position_id']}]"  # the seeded position, checked by the worker

    broker_page = chromium.dump_dom(browser, flower.url("/broker", creds), profiles)
    queues = {r.cells[0] for r in chromium.table_rows(broker_page, "queue-table") if r.cells}
    broker_log = [line for line in flower.log_text().splitlines() if "broker" in line.lower()]
    assert CATALYST_QUEUES <= queues, f"Broker page shows {sorted(queues)}:\n" + "\n".join(broker_log[-5:])

    png = chromium.screenshot(browser, flower.url("/tasks", creds), tmp_path / "flower_tasks.png", profiles)
    assert chromium.png_size(png) == (1400, 900)

    # Upstream Flower serves its health check and metrics to anyone (the README says so): prove it, and that
    # the metrics name Catalyst's tasks.
    status, _, body = http(flower.url("/healthcheck"))
    assert (status, body) == (200, "OK")
    assert wait_for(lambda: monitor_events(flower), 60, interval=1, what="monitor events in Flower's /metrics") >= 1


PAGES = ("/", "/workers", "/tasks", "/tasks/datatable", "/broker", "/task/some-id")  # a browser is asked to log in
API = ("/api/workers", "/api/tasks", "/api/task/types", "/api/queues/length")


def test_without_credentials_flower_answers_401_and_chromium_shows_no_task_list(browser, pg_url, redis_url,
                                                                               start_flower, tmp_path):
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var")}
    with environment(env):
        flower = start_flower()
    profiles = tmp_path / "chromium"

    for path in PAGES + API:
        for auth in (None, (USER, "wrong"), ("intruder", PASSWORD)):
            status, headers, body = http(flower.url(path), auth=auth)
            assert status == 401, f"{path} with {auth and auth[0]!r} answered {status}"
            assert "catalyst" not in body.lower(), path
            if path in PAGES:
                assert headers.get("WWW-Authenticate", "").startswith("Basic"), path
    status, _, _ = http(flower.url("/api/worker/shutdown/positions@host"), method="POST")
    assert status == 401  # the control API too: nobody stops a worker without credentials
    assert http(flower.url("/tasks"), auth=(USER, PASSWORD))[0] == 200

    with_credentials = chromium.dump_dom(browser, flower.url("/tasks", (USER, PASSWORD)), profiles)
    assert 'id="tasks-table"' in with_credentials  # the browser can show the list: the checks below can fail
    for credentials in (None, (USER, "wrong")):
        dom = chromium.dump_dom(browser, flower.url("/tasks", credentials), profiles)
        assert "tasks-table" not in dom and "catalyst." not in dom, dom[:500]

    # What stays open, as upstream Flower serves it.
    status, _, body = http(flower.url("/healthcheck"))
    assert (status, body) == (200, "OK")
    assert http(flower.url("/metrics"))[0] == 200
