"""A dead alert receiver must not slow an exit: on real worker and beat processes, with the webhook
accepting connections and answering nothing, `catalyst close` sells once and closes the position;
the alert is delivered once the receiver answers — and no secret reaches a log line or a row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from catalyst.db.models import AgentLog, Notification, PaperOrder, Position, ServiceHealth
from tests.notify_receivers import SMTP_PASSWORD, TOKEN, WebhookReceiver
from tests.support import environment, query, rows, wait_for, write_replay_csv
from tests.test_e2e_loop import cli

pytestmark = pytest.mark.e2e

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        r.hold()  # every request is accepted and left unanswered until the test releases it
        yield r
        r.release()


@pytest.fixture(params=["postgres_redis", "embedded"])
def alert_env(request, tmp_path, receiver):
    csv = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, [100.0] * 240)
    env = {
        "CATALYST_VAR_DIR": str(tmp_path / "var"),
        "CATALYST_MARKET_DATA": f"replay:{csv}",
        "CATALYST_CLOCK": f"sim:{(SESSION_OPEN + timedelta(minutes=1)).isoformat()}@60",
        "CATALYST_AUTO_ENTRIES": "false",
        "CATALYST_HEARTBEAT_INTERVAL": "2",
        "CATALYST_WEBHOOK_URL": receiver.url,
        "SMTP_PASSWORD": SMTP_PASSWORD,  # configured, unused (no SMTP_HOST): must still never show
        "CATALYST_NOTIFY_TIMEOUT": "30",  # the longest a receiver may hold one attempt
        "CATALYST_NOTIFY_MAX_RETRIES": "1",
    }
    if request.param == "postgres_redis":
        env["DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    with environment(env):
        cli("db", "upgrade")
        yield env


def test_an_exit_completes_while_the_receiver_hangs_and_its_alert_follows(alert_env, stack, receiver):
    stack.worker()
    stack.beat()
    wait_for(lambda: query(lambda s: s.scalar(select(func.count()).select_from(ServiceHealth)
                                              .where(ServiceHealth.status.in_(("online", "active"))))) >= 2,
             60, what="worker and beat heartbeats")

    # The receiver is already hanging on an earlier alert, delivered by the worker.
    # (From a process of its own, as every Catalyst process reads its broker once, at start-up.)
    raised = subprocess.run([sys.executable, "-c", "from catalyst.notify import notify; print(notify("
                             "'service_stale', 'warning', 'probe', 'an earlier alert', dedupe_key='probe:1'))"],
                            capture_output=True, text=True, timeout=60, check=True)
    probe = int(next(line for line in raised.stdout.splitlines() if line.strip().isdigit()))
    assert "notification_enqueue_failed" not in raised.stdout + raised.stderr, raised.stdout + raised.stderr
    wait_for(lambda: receiver.held == 1, 60, what="the worker's delivery to hang on the receiver")

    opened = cli("open", "TEST", "--qty", "10", "--json")
    position_id = json.loads(opened.stdout)["id"]
    closed = cli("close", str(position_id), "--json")
    cli_output = raised.stdout + raised.stderr + opened.stdout + opened.stderr + closed.stdout + closed.stderr

    # The exit is done — closed, one sell — while the receiver still holds the first request unanswered.
    position = query(lambda s: s.get(Position, position_id))
    assert (position.status, position.exit_reason) == ("closed", "manual")
    sells = query(lambda s: s.scalar(select(func.count()).select_from(PaperOrder).where(PaperOrder.side == "sell")))
    assert sells == 1
    assert receiver.held == 1 and len(receiver.requests) == 1 and "answered" not in receiver.requests[0]
    (alert,) = rows(Notification, Notification.event == "position_closed")
    assert alert.status == "pending" and alert.context["position_id"] == position_id

    receiver.release()
    sent = wait_for(lambda: query(lambda s: (n := s.get(Notification, alert.id)).status != "pending" and n), 90,
                    what="the exit's alert to be delivered")
    assert sent.status == "sent" and sent.deliveries["webhook"]["status"] == "sent"
    assert query(lambda s: s.get(Notification, probe).status) == "sent"
    # In order: the probe first, the exit's alert after the position had closed; each alert delivered once.
    assert [r["json"]["event"] for r in receiver.requests] == ["service_stale", "position_closed"]
    body = receiver.requests[1]["json"]
    assert f"Position {position_id}: sold 10 TEST at 100" in body["text"] and body["context"]["reason"] == "manual"
    assert query(lambda s: s.scalar(select(func.count()).select_from(PaperOrder)
                                    .where(PaperOrder.side == "sell"))) == 1

    stack.stop()
    recorded = json.dumps([[{c.name: getattr(r, c.name) for c in r.__table__.columns} for r in rows(model)]
                           for model in (Notification, AgentLog)], default=str)
    for secret in (TOKEN, SMTP_PASSWORD):
        assert secret not in stack.logs() and secret not in cli_output and secret not in recorded
    assert "notification_sent" in stack.logs()


def test_with_no_beat_running_a_worker_reports_the_dead_beat_and_a_dead_worker(pg_url, redis_url, tmp_path, stack,
                                                                              receiver):
    """Beat is gone and it is a Saturday (no session, so no check_risk either): the one live worker still
    reports each service that stopped beating, once, to the webhook — and not itself."""
    receiver.release()
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_CLOCK": "sim:2025-03-08T12:00:00-05:00@1", "CATALYST_AUTO_ENTRIES": "false",
           "CATALYST_HEARTBEAT_INTERVAL": "1", "CATALYST_WEBHOOK_URL": receiver.url}
    with environment(env):
        from catalyst.db.engine import session_scope

        quiet = datetime.now(timezone.utc) - timedelta(minutes=10)
        with session_scope() as s:  # a beat and a worker that died without saying goodbye
            s.add(ServiceHealth(service_name="beat", kind="beat", status="active", started_at=quiet,
                                last_heartbeat=quiet))
            s.add(ServiceHealth(service_name="worker@gone", kind="worker", status="online", started_at=quiet,
                                last_heartbeat=quiet))
        stack.worker()
        wait_for(lambda: len(receiver.bodies("service_stale")) >= 2, 90, what="both stale services on the webhook")
        reported = sorted(b["context"]["service"] for b in receiver.bodies("service_stale"))
        assert reported == ["beat", "worker@gone"]
        alerts = rows(Notification, Notification.event == "service_stale")
        assert sorted(n.context["service"] for n in alerts) == ["beat", "worker@gone"]
        wait_for(lambda: {n.status for n in rows(Notification, Notification.event == "service_stale")} == {"sent"},
                 30, what="both alerts recorded as sent")
        live = query(lambda s: s.scalar(select(ServiceHealth.service_name).where(ServiceHealth.kind == "worker",
                                                                                 ServiceHealth.status == "online",
                                                                                 ServiceHealth.service_name
                                                                                 != "worker@gone")))
        assert live and live.startswith("worker@")
        time.sleep(5)  # five more watch rounds: nothing new (one alert per episode), the live worker never stale
        assert len(receiver.bodies("service_stale")) == 2
        assert query(lambda s: s.scalar(select(func.count()).select_from(Notification))) == 2
