"""PostgreSQL stopped for 10 s under a real worker and beat: the errors the tasks log meanwhile do not hold them up,
the same worker carries on monitoring when the server returns, and what was logged during the outage reaches
``agent_logs`` afterwards (queued in the worker, not lost).

A private PostgreSQL started by the test (never the shared one); Redis is the test's own database.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from catalyst.db.engine import dispose_all
from catalyst.db.models import AgentLog, PositionMonitorStatus
from tests.support import environment, producer, query, wait_for, write_replay_csv
from tests.test_e2e_loop import SESSION_OPEN, cli
from tests.test_logs import json_lines

pytestmark = pytest.mark.e2e

SPEED = 5
INTERVAL = 10  # market seconds between checks: 2 wall seconds
OUTAGE = 10  # wall seconds


def outage_env(tmp_path, database_url: str, redis_url: str) -> dict[str, str]:
    start = SESSION_OPEN.replace(hour=10)
    csv = write_replay_csv(tmp_path / "FLAT.csv", "FLAT", SESSION_OPEN, [50.0] * 390)
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
            "CATALYST_MARKET_DATA": f"replay:{csv}", "CATALYST_CLOCK": f"sim:{start.isoformat()}@{SPEED}",
            "MONITOR_CHECK_INTERVAL": str(INTERVAL), "CATALYST_AUTO_ENTRIES": "false",
            "CATALYST_HEARTBEAT_INTERVAL": "2", "LOG_FORMAT": "json"}


def checks_so_far() -> int:
    """Checks written so far (a plain hold counts in its status row, not as a decision: the default quiet path,
    whose writes go on the lock's own connection, is the one this drill takes through the outage)."""
    return query(lambda s: s.scalar(select(func.coalesce(func.sum(PositionMonitorStatus.checks), 0))))


def outcome(worker_log: str, task_id: str) -> str | None:
    """How the worker says a task ended: 'succeeded' or 'failed' (Celery's record or our task_failed)."""
    for e in json_lines(worker_log):
        if e.get("task_id") != task_id:
            continue
        if "succeeded" in e["event"]:
            return "succeeded"
        if e["event"] in ("task_failed", "task_rejected") or " raised " in e["event"]:
            return "failed"
    return None


def test_a_worker_keeps_monitoring_through_a_10_second_postgres_outage_and_its_logs_never_hold_a_task(
        tmp_path, private_pg, redis_url, stack):
    from tasks import monitor_position

    url = private_pg.create_database("catalyst")
    with environment(outage_env(tmp_path, url, redis_url)):
        cli("db", "upgrade")
        position_id = json.loads(cli("open", "FLAT", "--qty", "10", "--stop", "45", "--json").stdout)["id"]
        worker, beat = stack.worker(name="outage"), stack.beat()
        wait_for(lambda: checks_so_far() >= 2, 120, what="monitoring to run:\n" + stack.logs())

        dispose_all()  # this process's pooled connections die with the server too
        private_pg.stop()
        down = datetime.now(timezone.utc)
        # Checks sent while the database is down: each must end (failed) instead of hanging on its own error lines.
        with producer(redis_url) as app:
            during = [app.send_task(monitor_position.name, args=[position_id]).id for _ in range(3)]
        time.sleep(OUTAGE)
        ended_while_down = {t: outcome(worker.log_text(), t) for t in during}
        assert worker.alive() and beat.alive(), "a PostgreSQL outage ended a process:\n" + stack.logs()
        private_pg.start()
        back = datetime.now(timezone.utc)

        assert all(ended_while_down.values()), f"tasks still running after {OUTAGE} s: {ended_while_down}"
        assert "failed" in ended_while_down.values(), "the checks could not have succeeded without their database"
        resumed_from = checks_so_far()
        wait_for(lambda: checks_so_far() >= resumed_from + 2, 120,
                 what="monitor checks after the restart:\n" + stack.logs())
        assert worker.alive() and beat.alive(), "the same processes carry on"

        # The errors logged while the server was down were kept in the worker's queue and written afterwards.
        rows = wait_for(lambda: query(lambda s: s.scalars(select(AgentLog).where(
            AgentLog.context["task_id"].as_string().in_(during))).all()), 60,
            what="the outage's task errors in agent_logs")
        assert {r.context["position_id"] for r in rows} == {position_id}
        assert all(down <= r.timestamp <= back for r in rows), "written with the time they were logged"
        unavailable = wait_for(lambda: query(lambda s: s.scalars(select(AgentLog).where(
            AgentLog.event == "agent_logs_unavailable")).all()), 60, what="the writer's own outage note")
        assert "worker" in {r.service for r in unavailable}
        outage_lines = [e for e in json_lines(worker.log_text()) if e["event"] == "agent_logs_unavailable"]
        assert outage_lines, "the worker says on its log that agent_logs could not be written"
