"""Honest heartbeats (issue 10): real worker and beat processes say ``offline`` however the platform stops
them (warm SIGTERM, the PaaS's cold shutdown via REMAP_SIGTERM=SIGQUIT, plain SIGQUIT, SIGINT); a SIGKILLed
worker reads ``stale`` after three intervals and is escalated once (notification and ``agent_logs``); and
the retention task forgets the rows of processes that are gone, never a live one."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from catalyst.db.models import AgentLog, Notification, ServiceHealth
from tests.support import environment, query, rows, wait_for

INTERVAL = 1.0  # CATALYST_HEARTBEAT_INTERVAL in these tests: stale after 3 s
SATURDAY = "sim:2025-03-08T12:00:00-05:00@1"  # no session: nothing but heartbeats happens


KILL_INTERVAL = 2.5  # the killed-worker test: stale after 7.5 s, so a few seconds' stall on a loaded CI box is no episode


def _live_env(pg_url, redis_url, tmp_path, interval: float):
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_CLOCK": SATURDAY, "CATALYST_AUTO_ENTRIES": "false",
           "CATALYST_HEARTBEAT_INTERVAL": f"{interval:g}"}
    return environment(env)


@pytest.fixture
def live_env(pg_url, redis_url, tmp_path):
    with _live_env(pg_url, redis_url, tmp_path, INTERVAL) as env:
        yield env


@pytest.fixture
def slow_live_env(pg_url, redis_url, tmp_path):
    with _live_env(pg_url, redis_url, tmp_path, KILL_INTERVAL) as env:
        yield env


def health(service: str) -> ServiceHealth | None:
    return query(lambda s: s.get(ServiceHealth, service))


def status_json() -> dict:
    from catalyst.cli import main

    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def service_in_status(name: str) -> dict:
    (found,) = [s for s in status_json()["services"] if s["name"] == name]
    return found


def worker_name(name: str) -> str:
    return f"{name}@{socket.gethostname()}"


def start_worker(stack, name: str, **kw):
    proc = stack.worker(name, **kw)
    service = worker_name(name)
    wait_for(lambda: (h := health(service)) is not None and h.status == "online", 120,
             what=f"{service} online")
    return proc, service


def wait_exit(proc, what: str) -> int:
    wait_for(lambda: not proc.alive(), 60, what=f"{what} to exit")
    return proc.popen.returncode


# -- workers -----------------------------------------------------------------------------------------------------
COLD = [
    pytest.param({"REMAP_SIGTERM": "SIGQUIT"}, signal.SIGTERM, True, id="paas-sigterm-remapped-to-sigquit"),
    pytest.param({}, signal.SIGQUIT, False, id="sigquit"),
    pytest.param({}, signal.SIGTERM, True, id="warm-sigterm"),
]


@pytest.mark.parametrize("env_extra,sig,whole_group", COLD)
def test_a_stopped_worker_says_offline_and_status_never_calls_it_stale(live_env, stack, env_extra, sig, whole_group):
    """The platform stops the dyno (SIGTERM to every process, remapped to Celery's cold shutdown) or an operator
    sends SIGQUIT to the main process: the worker's row says ``offline``, also once 3 intervals have passed."""
    proc, service = start_worker(stack, "cold", env_extra=env_extra, concurrency=1)
    started = health(service).started_at
    if whole_group:
        os.killpg(proc.popen.pid, sig)  # as a PaaS does: every process of the dyno, pool children included
    else:
        os.kill(proc.popen.pid, sig)
    wait_exit(proc, service)
    assert health(service).status == "offline", proc.log_text()[-3000:]
    time.sleep(4 * INTERVAL)  # well past the stale threshold: a goodbye is not an outage
    assert health(service).status == "offline"  # no pool child (or late heartbeat) brought it back
    assert health(service).started_at == started
    shown = service_in_status(service)
    assert (shown["status"], shown["stale"]) == ("offline", False)


def test_a_killed_worker_goes_stale_and_the_other_worker_escalates_it_once(slow_live_env, stack):
    """SIGKILL leaves no goodbye: after three intervals ``status --json`` says ``stale``, and the surviving
    worker's watch raises one ``service_stale`` notification and one ``service_stale`` agent_logs warning for
    that episode (the one that began with the victim's final heartbeat). Assertions are about that episode
    only: a stall of the loaded test machine may make some process briefly stale, which is a different one."""
    victim, service = start_worker(stack, "victim", concurrency=1)
    _, watcher = start_worker(stack, "watcher", pool="solo")
    assert service_in_status(service)["status"] == "online"
    victim.kill()
    wait_exit(victim, service)
    shown = wait_for(lambda: (s := service_in_status(service))["stale"] and s, 90, what=f"{service} stale in status")
    assert shown["status"] == "stale" and shown["reported_status"] == "online"
    assert shown["age_seconds"] >= 3 * KILL_INTERVAL  # (rounded to 0.1 s)
    last = health(service).last_heartbeat  # the victim's final heartbeat: it is dead, so this never changes

    def episode(model):
        return [r for r in rows(model, model.event == "service_stale")
                if r.context["service"] == service and r.context["last_heartbeat"] == last.isoformat()]

    wait_for(lambda: episode(AgentLog), 90, what="the service_stale agent_logs row")
    time.sleep(3 * KILL_INTERVAL)  # three more watch rounds: still one of each for this episode
    (alert,) = episode(Notification)
    (logged,) = episode(AgentLog)
    assert health(service).last_heartbeat == last
    assert logged.level == "WARNING" and logged.service == service
    assert logged.context["age_seconds"] >= 3 * KILL_INTERVAL and logged.context["kind"] == "worker"
    assert logged.context["notification_id"] == alert.id
    assert service_in_status(watcher)["status"] == "online"  # the watcher is alive (now; a stall is not a death)


# -- beat ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_stopped_beat_says_offline(live_env, stack, sig):
    proc = stack.beat()
    service = wait_for(lambda: query(lambda s: s.scalar(select(ServiceHealth.service_name).where(
        ServiceHealth.kind == "beat", ServiceHealth.status == "active"))), 120, what="beat active")
    os.kill(proc.popen.pid, sig)
    wait_exit(proc, "beat")
    assert health(service).status == "offline", proc.log_text()[-3000:]
    time.sleep(4 * INTERVAL)
    assert (service_in_status(service)["status"], service_in_status(service)["stale"]) == ("offline", False)


# -- one definition of stale -------------------------------------------------------------------------------------
def test_stale_means_older_than_three_intervals_everywhere():
    from catalyst.alerts import is_stale, liveness, stale_after

    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    assert stale_after(10.0) == timedelta(seconds=30) and stale_after(1.0) == timedelta(seconds=3)
    assert not is_stale(now - timedelta(seconds=30), now, 10.0)
    assert is_stale(now - timedelta(seconds=30.5), now, 10.0)
    assert is_stale(now - timedelta(seconds=3.5), now, 1.0)  # no 30 s floor any more (status used to have one)
    assert liveness("online", now - timedelta(seconds=5), now, 1.0) == "stale"
    assert liveness("active", now - timedelta(seconds=2), now, 1.0) == "active"
    assert liveness("offline", now - timedelta(days=2), now, 1.0) == "offline"
    assert liveness("stopped", now - timedelta(days=2), now, 1.0) == "offline"  # what beats used to write
    assert liveness("failing", now - timedelta(seconds=60), now, 1.0) == "stale"


# -- escalation, in process ---------------------------------------------------------------------------------------
def _beat_row(name: str, at: datetime, status: str = "online", kind: str = "worker") -> None:
    from catalyst.db.engine import session_scope

    with session_scope() as s:
        row = s.get(ServiceHealth, name)
        if row is None:
            s.add(ServiceHealth(service_name=name, kind=kind, status=status, started_at=at, last_heartbeat=at,
                                hostname="h", pid=42))
        else:
            row.last_heartbeat, row.status = at, status


def test_a_stale_service_is_escalated_once_per_episode_in_agent_logs(pg_url, tmp_path):
    from catalyst.alerts import check_services
    from catalyst.runtime import get_runtime

    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                      "CATALYST_HEARTBEAT_INTERVAL": "10"}):
        rt = get_runtime()
        now = datetime.now(UTC)
        _beat_row("w1", now - timedelta(seconds=31))
        _beat_row("gone", now - timedelta(hours=1), status="offline")
        _beat_row("old-beat", now - timedelta(hours=1), status="stopped", kind="beat")  # a beat of before this fix
        check_services(rt, now)
        check_services(rt, now + timedelta(seconds=20))  # the same episode
        (first,) = rows(AgentLog, AgentLog.event == "service_stale")
        assert (first.level, first.service) == ("WARNING", "w1")
        assert first.context["last_heartbeat"] == (now - timedelta(seconds=31)).isoformat()
        assert first.context["age_seconds"] == 31.0 and first.context["status"] == "online"
        assert [n.context["service"] for n in rows(Notification, Notification.event == "service_stale")] == ["w1"]
        _beat_row("w1", now + timedelta(seconds=30))  # it came back ...
        check_services(rt, now + timedelta(seconds=31))
        check_services(rt, now + timedelta(seconds=100))  # ... and went quiet again: a second episode
        logged = rows(AgentLog, AgentLog.event == "service_stale")
        assert [r.context["last_heartbeat"] for r in sorted(logged, key=lambda r: r.id)] == [
            (now - timedelta(seconds=31)).isoformat(), (now + timedelta(seconds=30)).isoformat()]


# -- pruning the rows of processes that are gone -------------------------------------------------------------------
def test_retention_prunes_the_rows_of_gone_processes_never_a_live_one(pg_url, tmp_path):
    from catalyst.retention import GONE_SERVICE_KEPT, prune, prune_gone_services

    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                      "CATALYST_HEARTBEAT_INTERVAL": "10"}):
        now = datetime.now(UTC)
        long_ago = now - GONE_SERVICE_KEPT - timedelta(minutes=1)
        recently = now - GONE_SERVICE_KEPT + timedelta(minutes=5)
        _beat_row("offline-long-ago", long_ago, status="offline")
        _beat_row("stopped-long-ago", long_ago, status="stopped", kind="beat")
        _beat_row("crashed-long-ago", long_ago, status="online")  # stale for a day: its process is gone
        _beat_row("offline-recently", recently, status="offline")  # yesterday's goodbye: still shown
        _beat_row("crashed-recently", now - timedelta(minutes=5), status="online")  # stale, not yet pruned
        _beat_row("live", now - timedelta(seconds=2), status="online")
        _beat_row("live-beat", now - timedelta(seconds=2), status="active", kind="beat")
        assert GONE_SERVICE_KEPT == timedelta(hours=24)
        prune(30, wall_now=now)  # what the daily catalyst.prune task runs
        left = sorted(h.service_name for h in rows(ServiceHealth))
        assert left == ["crashed-recently", "live", "live-beat", "offline-recently"]
        assert prune_gone_services(now, 10.0) == 0  # nothing more
        assert prune_gone_services(now + timedelta(hours=1), 10.0) == 1  # an hour later: yesterday's goodbye goes
        assert sorted(h.service_name for h in rows(ServiceHealth)) == ["crashed-recently", "live", "live-beat"]


def test_a_live_service_with_a_long_heartbeat_interval_is_never_pruned(pg_url, tmp_path):
    """An interval longer than the window (a heartbeat every 2 days) still means alive until 3 intervals pass."""
    from catalyst.retention import prune

    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                      "CATALYST_HEARTBEAT_INTERVAL": str(2 * 86400)}):
        now = datetime.now(UTC)
        _beat_row("slow", now - timedelta(days=3), status="online")
        prune(30, wall_now=now)
        assert [h.service_name for h in rows(ServiceHealth)] == ["slow"]
