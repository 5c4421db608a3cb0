"""Notifications: recorded once (log, agent_logs, notifications), delivered to a real local webhook and a
real local SMTP server with bounded retries, never a secret in a log line or a row, and the sources
(exits, refused exits, stale services, the day's summary) raising them."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, update

from catalyst import notify as notify_module
from catalyst import notify_delivery
from catalyst.db.models import AgentLog, Notification, Position, ServiceHealth
from catalyst.notify import deliver_pending, notify
from catalyst.notify_channels import Alert, webhook_payload
from catalyst.notify_delivery import deliver
from catalyst.settings import get_settings
from tests.notify_receivers import (SMTP_PASSWORD, SMTP_USER, TOKEN, HangingSocket, WebhookReceiver, free_port,
                                    self_signed_cert, smtp_server)
from tests.support import environment, query, rows, seed_position

EVENTS = [  # (event, severity, title, context) as the sources raise them
    ("daily_loss_warning", "warning", "Daily loss at 75 % of the limit", {"daily_pnl": -1500.0, "limit": 2000.0}),
    ("emergency_stop", "critical", "EMERGENCY STOP: daily loss limit reached", {"daily_pnl": -2010.5}),
    ("position_closed", "info", "Closed TEST: +12.50 USD (take_profit)", {"position_id": 7, "symbol": "TEST"}),
    ("exit_refused", "critical", "Exit refused: TEST (position 7)", {"reason": "403 pattern day trading"}),
    ("entry_refused", "warning", "Entry refused: TEST", {"reason": "insufficient buying power"}),
    ("service_stale", "warning", "worker w1 is not responding", {"service": "w1", "age_seconds": 45.0}),
    ("service_recovered", "info", "worker w1 is responding again", {"service": "w1"}),
    ("daily_summary", "info", "Daily summary 2025-03-04: 3 trades, P&L +42.00 USD", {"trades": 3}),
]


@pytest.fixture
def enqueued(monkeypatch):
    """Deliveries handed to the broker, by id (no broker in these tests: each test drives delivery itself)."""
    calls: list[int] = []
    monkeypatch.setattr(notify_module, "enqueue_delivery", lambda nid, countdown=None: calls.append(nid))
    monkeypatch.setattr(notify_delivery, "BACKOFF_BASE", 0.02)  # retries within the test, same bound
    return calls


@pytest.fixture(params=["postgres", "sqlite"])
def db_env(request, tmp_path):
    """``with db_env(**settings):`` this process on a fresh migrated database."""
    if request.param == "postgres":
        base = {"DATABASE_URL": request.getfixturevalue("pg_url")}
    else:
        base = {}

    def _env(**extra: str):
        env = {"CATALYST_VAR_DIR": str(tmp_path / "var"), **base, **extra}
        ctx = environment(env)
        ctx.__enter__()
        if request.param == "sqlite":
            from catalyst.db.engine import upgrade

            upgrade(get_settings().sqlalchemy_url)
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))
        return env

    return _env


@pytest.fixture
def webhook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp():
    controller = smtp_server()
    yield controller
    controller.stop()


def smtp_env(controller, **extra) -> dict[str, str]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(controller.port), "SMTP_USERNAME": SMTP_USER,
            "SMTP_PASSWORD": SMTP_PASSWORD, "ALERT_EMAIL_FROM": "catalyst@example.test",
            "ALERT_EMAIL_TO": "ops@example.test, oncall@example.test", **extra}


def drive(notification_id: int) -> Notification:
    """Run deliveries as the worker would (each retry after its pause) until the row settles."""
    for _ in range(50):
        outcome = deliver(notification_id)
        if outcome.retry_in is None and outcome.status != "not_due":
            break
        time.sleep(min(outcome.retry_in or 0.02, 1.0))
    return query(lambda s: s.get(Notification, notification_id))


def everything_recorded() -> str:
    """Every row a secret could hide in, as text."""
    tables = [rows(Notification), rows(AgentLog)]
    return json.dumps([[{c.name: getattr(r, c.name) for c in r.__table__.columns} for r in t] for t in tables],
                      default=str)


# -- recording ----------------------------------------------------------------------------------------
def test_a_notification_is_logged_recorded_in_agent_logs_and_queued_once_per_dedupe_key(db_env, webhook, enqueued,
                                                                                         capfd):
    from catalyst.logs import configure_logging

    db_env(CATALYST_WEBHOOK_URL=webhook.url)
    configure_logging("INFO", "test", persist=False)
    first = notify("emergency_stop", "critical", "EMERGENCY STOP", "Every position is being closed.",
                   context={"daily_pnl": -2010.5}, dedupe_key="emergency_stop:2025-03-04")
    again = notify("emergency_stop", "critical", "EMERGENCY STOP", "Every position is being closed.",
                   context={"daily_pnl": -2100.0}, dedupe_key="emergency_stop:2025-03-04")
    assert notify_module.flush(5)
    assert first is not None and again == first
    (row,) = rows(Notification)
    assert (row.event, row.severity, row.status, row.context) == ("emergency_stop", "critical", "pending",
                                                                 {"daily_pnl": -2010.5})
    logged = [r for r in rows(AgentLog) if r.event == "notification"]
    assert len(logged) == 1 and logged[0].level == "CRITICAL" and logged[0].context["notification_id"] == first
    assert enqueued == [first]  # queued after the commit, once
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["notify_event"] for line in lines if line["event"] == "notification"] == ["emergency_stop"]


def test_with_no_channel_configured_an_alert_is_logged_only(db_env, enqueued):
    db_env()
    nid = notify("position_closed", "info", "Closed TEST", "sold", context={"position_id": 1})
    assert notify_module.flush(5)
    assert query(lambda s: s.get(Notification, nid).status) == "logged"
    assert enqueued == [] and len([r for r in rows(AgentLog) if r.event == "notification"]) == 1


def test_notify_never_raises_and_the_log_line_goes_out_without_a_database(tmp_path, enqueued, capfd):
    from catalyst.logs import configure_logging

    with environment({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
                      "CATALYST_VAR_DIR": str(tmp_path / "var")}):
        configure_logging("INFO", "test", persist=False)
        assert notify("emergency_stop", "critical", "EMERGENCY STOP", "closing all", context={"x": 1}) is None
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    (line,) = [entry for entry in lines if entry["event"] == "notification"]
    assert line["notify_event"] == "emergency_stop" and line["recorded"] is False


def test_notify_returns_while_the_broker_is_hanging(db_env, webhook, monkeypatch):
    """An enqueue that blocks (Redis slow or away) holds only the background thread, never the caller."""
    db_env(CATALYST_WEBHOOK_URL=webhook.url)
    unblock, sent = threading.Event(), []

    def stuck(nid, countdown=None):
        unblock.wait(30)
        sent.append(nid)

    monkeypatch.setattr(notify_module, "enqueue_delivery", stuck)
    ids = [notify("position_closed", "info", f"Closed #{i}", "sold", dedupe_key=f"position_closed:{i}")
           for i in range(5)]
    assert all(ids) and sent == []  # every caller came back with its id while the broker hung
    assert {r.status for r in rows(Notification)} == {"pending"}
    unblock.set()
    assert notify_module.flush(10) and sent == ids


def test_the_sweep_queues_again_only_pending_rows_older_than_a_minute(db_env, webhook, enqueued):
    db_env(CATALYST_WEBHOOK_URL=webhook.url)
    old, new = (notify("position_closed", "info", f"Closed {i}", "sold") for i in range(2))
    assert notify_module.flush(5)
    enqueued.clear()
    with_status = notify("exit_refused", "critical", "Exit refused", "403")
    assert notify_module.flush(5)
    from catalyst.db.engine import session_scope

    with session_scope() as s:
        s.execute(update(Notification).where(Notification.id.in_([old, with_status]))
                  .values(created_at=datetime.now(UTC) - timedelta(minutes=5)))
        s.execute(update(Notification).where(Notification.id == with_status).values(status="sent"))
    enqueued.clear()
    assert deliver_pending(None) == 1 and enqueued == [old]
    assert new not in enqueued


# -- delivery ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("event,severity,title,context", EVENTS, ids=[e[0] for e in EVENTS])
def test_each_event_kind_reaches_the_webhook_and_the_mailbox(event, severity, title, context, db_env, webhook, smtp,
                                                             enqueued):
    db_env(CATALYST_WEBHOOK_URL=webhook.url, **smtp_env(smtp))
    nid = notify(event, severity, title, f"What happened: {title}.", context=context, dedupe_key=f"{event}:1")
    row = drive(nid)
    assert row.status == "sent" and row.sent_at is not None
    assert {c: (d["status"], d["attempts"]) for c, d in row.deliveries.items()} == {"webhook": ("sent", 1),
                                                                                   "email": ("sent", 1)}
    assert row.deliveries["webhook"]["target"] == "127.0.0.1"  # the host, never the path with the token
    (body,) = webhook.bodies()
    assert title in body["text"] and title in body["content"]  # Slack reads text, Discord content
    assert (body["event"], body["severity"], body["notification_id"], body["context"]) == (event, severity, nid,
                                                                                          context)
    (mail,) = smtp.sink.messages
    assert mail["to"] == ["ops@example.test", "oncall@example.test"] and mail["from"] == "catalyst@example.test"
    assert title in mail["message"]["Subject"] and mail["message"]["X-Catalyst-Event"] == event
    assert f"What happened: {title}." in mail["message"].get_content()


def test_slack_and_discord_get_the_field_each_reads():
    alert = Alert(1, "emergency_stop", "critical", "EMERGENCY STOP", "x" * 5000, datetime.now(UTC), {"a": 1})
    slack = webhook_payload("https://hooks.slack.com/services/T0/B0/abc", alert)
    discord = webhook_payload("https://discord.com/api/webhooks/1/abc", alert)
    assert set(slack) == {"text"} and slack["text"].startswith("[CRITICAL] Catalyst: EMERGENCY STOP")
    assert set(discord) == {"content"} and len(discord["content"]) == 2000  # Discord's limit


@pytest.mark.parametrize("failure", ["http_500", "refused", "timeout"])
def test_a_failing_webhook_is_retried_a_bounded_number_of_times_then_recorded_failed(failure, db_env, enqueued,
                                                                                     tmp_path, capfd):
    from catalyst.logs import configure_logging

    receiver = WebhookReceiver(status=500).start()
    try:
        if failure == "refused":
            url = f"http://127.0.0.1:{free_port()}/services/T0001/B0001/{TOKEN}"
        else:
            url = receiver.url
        if failure == "timeout":
            receiver.hold()
        db_env(CATALYST_WEBHOOK_URL=url, CATALYST_NOTIFY_MAX_RETRIES="2", CATALYST_NOTIFY_TIMEOUT="0.3")
        configure_logging("INFO", "test", persist=False)
        nid = notify("emergency_stop", "critical", "EMERGENCY STOP", "closing all", dedupe_key="e:1")
        row = drive(nid)
    finally:
        receiver.release()
        receiver.stop()
    expected = {"http_500": "HTTP 500", "refused": "connection refused", "timeout": "timeout"}[failure]
    assert row.status == "failed" and row.sent_at is None
    assert (row.deliveries["webhook"]["status"], row.deliveries["webhook"]["error"]) == ("failed", expected)
    assert row.deliveries["webhook"]["attempts"] == 3 == row.attempts  # the first try and 2 retries, no more
    assert len(receiver.requests) == (0 if failure == "refused" else 3)
    assert deliver(nid).status == "settled" and len(receiver.requests) == (0 if failure == "refused" else 3)
    logged = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    (failed,) = [line for line in logged if line["event"] == "notification_failed"]
    assert (failed["channel"], failed["error"], failed["attempts"]) == ("webhook", expected, 3)
    assert TOKEN not in json.dumps(logged) and TOKEN not in everything_recorded()


def test_a_transient_500_is_retried_and_then_sent(db_env, enqueued):
    with WebhookReceiver(statuses=[500, 503]) as receiver:
        db_env(CATALYST_WEBHOOK_URL=receiver.url)
        row = drive(notify("daily_loss_warning", "warning", "75 %", "reducing"))
    assert (row.status, row.deliveries["webhook"]["attempts"], len(receiver.requests)) == ("sent", 3, 3)


def test_a_webhook_that_refuses_the_request_is_not_retried(db_env, enqueued):
    with WebhookReceiver(status=404) as receiver:  # a deleted Slack/Discord webhook
        db_env(CATALYST_WEBHOOK_URL=receiver.url)
        row = drive(notify("daily_loss_warning", "warning", "75 %", "reducing"))
    assert (row.status, row.deliveries["webhook"]["error"], len(receiver.requests)) == ("failed", "HTTP 404", 1)


def test_a_channel_that_delivered_is_not_sent_again_while_the_other_is_retried(db_env, webhook, enqueued):
    hanging = HangingSocket()  # an SMTP server that accepts and never greets
    try:
        db_env(CATALYST_WEBHOOK_URL=webhook.url, CATALYST_NOTIFY_TIMEOUT="0.3", CATALYST_NOTIFY_MAX_RETRIES="1",
               SMTP_HOST="127.0.0.1", SMTP_PORT=str(hanging.port), ALERT_EMAIL_TO="ops@example.test")
        row = drive(notify("emergency_stop", "critical", "EMERGENCY STOP", "closing all"))
    finally:
        hanging.close()
    assert row.status == "failed"
    assert (row.deliveries["webhook"]["status"], row.deliveries["webhook"]["attempts"]) == ("sent", 1)
    assert (row.deliveries["email"]["status"], row.deliveries["email"]["error"],
            row.deliveries["email"]["attempts"]) == ("failed", "timeout", 2)
    assert len(webhook.requests) == 1


def test_email_uses_starttls_when_the_server_offers_it(db_env, enqueued, tmp_path, monkeypatch):
    import ssl

    from catalyst import notify_channels

    cert, key = self_signed_cert(tmp_path)
    controller = smtp_server(tls_cert=(cert, key))  # STARTTLS offered, and required before AUTH
    monkeypatch.setattr(notify_channels, "tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    try:
        db_env(**smtp_env(controller))
        row = drive(notify("emergency_stop", "critical", "EMERGENCY STOP", "closing all"))
    finally:
        controller.stop()
    assert row.status == "sent"
    (mail,) = controller.sink.messages
    assert mail["tls"] and "EMERGENCY STOP" in mail["message"]["Subject"]


def test_an_smtp_server_refusing_the_password_fails_once_and_the_password_is_nowhere(db_env, enqueued, capfd):
    from catalyst.logs import configure_logging

    controller = smtp_server(password="the-right-one")
    try:
        db_env(**smtp_env(controller))
        configure_logging("DEBUG", "test", persist=True)
        row = drive(notify("emergency_stop", "critical", "EMERGENCY STOP", "closing all",
                           context={"smtp_password": SMTP_PASSWORD, "note": f"pw={SMTP_PASSWORD}"}))
    finally:
        controller.stop()
    assert (row.status, row.deliveries["email"]["attempts"]) == ("failed", 1)
    assert row.deliveries["email"]["error"].startswith("SMTP authentication refused")
    assert row.context == {"smtp_password": "***", "note": "pw=***"}
    assert SMTP_PASSWORD not in capfd.readouterr().err and SMTP_PASSWORD not in everything_recorded()


def test_only_one_delivery_talks_to_receivers_at_a_time(db_env, enqueued):
    """A receiver that hangs holds one worker process, never the pool the exits run on."""
    with WebhookReceiver() as receiver:
        receiver.hold()
        db_env(CATALYST_WEBHOOK_URL=receiver.url, CATALYST_NOTIFY_TIMEOUT="5")
        first, second = (notify("position_closed", "info", f"Closed {i}", "sold") for i in range(2))
        outcomes = {}
        worker = threading.Thread(target=lambda: outcomes.update(first=deliver(first)))
        worker.start()
        for _ in range(100):
            if receiver.held:
                break
            time.sleep(0.05)
        assert receiver.held == 1
        outcomes["second"] = deliver(second)  # the sender is busy: come back later, nothing sent
        assert (outcomes["second"].status, len(receiver.requests)) == ("busy", 1)
        receiver.release()
        worker.join(10)
        assert outcomes["first"].status == "sent"
        assert drive(second).status == "sent"



def test_two_deliveries_of_one_alert_never_post_it_twice(pg_url, webhook, enqueued, monkeypatch):
    """Two deliveries of the same row run at once (the outbox's and the minute sweep's, or a busy-retry chain):
    B reads the row while A is sending and takes the sender lease just after A gives it back. B must see what
    A recorded (sent) and post nothing. Repeated: the window is a thread switch wide."""
    with environment({"DATABASE_URL": pg_url, "CATALYST_WEBHOOK_URL": webhook.url}):
        real_acquire, real_release, real_send = (notify_delivery.leases.acquire, notify_delivery.leases.release,
                                                 notify_delivery.SENDERS["webhook"])
        for n in range(5):
            nid = notify("emergency_stop", "critical", "Emergency stop", "closing everything", dedupe_key=f"es:{n}")
            assert notify_module.flush(5)
            a_sending, a_released = threading.Event(), threading.Event()

            def send(settings, alert, a_sending=a_sending):
                if threading.current_thread().name == "A":
                    a_sending.set()
                return real_send(settings, alert)

            def acquire(name, holder, ttl, url=None, a_released=a_released):
                if threading.current_thread().name == "B":
                    a_released.wait(10)  # B read the row during A's send; its request lands just after A's release
                return real_acquire(name, holder, ttl, url)

            def release(name, holder, url=None, a_released=a_released):
                real_release(name, holder, url)
                if threading.current_thread().name == "A":
                    a_released.set()

            monkeypatch.setitem(notify_delivery.SENDERS, "webhook", send)
            monkeypatch.setattr(notify_delivery.leases, "acquire", acquire)
            monkeypatch.setattr(notify_delivery.leases, "release", release)
            webhook.hold()
            outcomes = {}
            a = threading.Thread(target=lambda: outcomes.update(A=deliver(nid)), name="A")
            a.start()
            assert a_sending.wait(10)
            b = threading.Thread(target=lambda: outcomes.update(B=deliver(nid)), name="B")
            b.start()
            time.sleep(0.3)  # B has read the row (still pending, nothing delivered) and waits for the lease
            webhook.release()
            a.join(20)
            b.join(20)
            posted = [body for body in webhook.bodies("emergency_stop") if body["notification_id"] == nid]
            assert len(posted) == 1, f"round {n}: posted {len(posted)} times"
            assert (outcomes["A"].status, outcomes["B"].status) == ("sent", "settled")
            row = query(lambda s: s.get(Notification, nid))
            assert (row.status, row.attempts, row.deliveries["webhook"]["attempts"]) == ("sent", 1, 1)


def test_a_delivery_never_overwrites_what_another_recorded_meanwhile(pg_url, webhook, enqueued):
    """The save is conditional on the attempts count its delivery read: a late writer changes nothing."""
    with environment({"DATABASE_URL": pg_url, "CATALYST_WEBHOOK_URL": webhook.url}):
        nid = notify("emergency_stop", "critical", "Emergency stop", "closing everything", dedupe_key="es:late")
        assert deliver(nid).status == "sent"
        stale = {"webhook": {"status": "retrying", "attempts": 1, "next_at": datetime.now(UTC).isoformat()}}
        assert notify_delivery._save(nid, stale, 0, 1, "pending") is False
        row = query(lambda s: s.get(Notification, nid))
        assert (row.status, row.attempts, row.deliveries["webhook"]["status"]) == ("sent", 1, "sent")


# -- sources ----------------------------------------------------------------------------------------------
def test_stale_services_alert_once_per_episode_and_recovery_once(db_env, webhook, enqueued):
    from catalyst.alerts import check_services
    from catalyst.db.engine import session_scope
    from catalyst.runtime import get_runtime

    db_env(CATALYST_WEBHOOK_URL=webhook.url, CATALYST_HEARTBEAT_INTERVAL="10")
    now = datetime.now(UTC)

    def beat(name, at, status="online"):
        with session_scope() as s:
            row = s.get(ServiceHealth, name)
            if row is None:
                s.add(ServiceHealth(service_name=name, kind="worker", status=status, started_at=at, last_heartbeat=at))
            else:
                row.last_heartbeat, row.status = at, status

    rt = get_runtime()
    beat("w1", now - timedelta(seconds=31))  # 3 intervals + 1 s: stale
    beat("w2", now - timedelta(seconds=29))  # fresh
    beat("w3", now - timedelta(seconds=300), status="offline")  # said goodbye: not an outage
    check_services(rt, now)
    assert [(n.event, n.context["service"]) for n in rows(Notification)] == [("service_stale", "w1")]
    with session_scope() as s:  # only w1 from here on
        s.execute(delete(ServiceHealth).where(ServiceHealth.service_name != "w1"))
    check_services(rt, now + timedelta(seconds=60))  # the same episode: no second alert
    assert [(n.event, n.context["service"]) for n in rows(Notification)] == [("service_stale", "w1")]
    beat("w1", now + timedelta(seconds=61))
    check_services(rt, now + timedelta(seconds=62))
    check_services(rt, now + timedelta(seconds=63))
    beat("w1", now + timedelta(seconds=62))  # beating on: nothing new
    check_services(rt, now + timedelta(seconds=64))
    assert [(n.event, n.context["service"]) for n in rows(Notification)] == [("service_stale", "w1"),
                                                                          ("service_recovered", "w1")]
    check_services(rt, now + timedelta(seconds=200))  # quiet again: a new episode
    assert [n.event for n in rows(Notification)] == ["service_stale", "service_recovered", "service_stale"]
    assert all(n.severity == ("info" if n.event == "service_recovered" else "warning") for n in rows(Notification))



# -- the alert watch (workers, not beat) ----------------------------------------------------------------
def _service(name: str, kind: str, at: datetime, status: str = "online") -> None:
    from catalyst.db.engine import session_scope

    with session_scope() as s:
        s.add(ServiceHealth(service_name=name, kind=kind, status=status, started_at=at, last_heartbeat=at))


def test_the_alert_watch_runs_in_one_worker_at_a_time_and_reports_a_dead_beat(pg_url, webhook, enqueued,
                                                                               monkeypatch):
    """Nothing on beat's schedule: the workers' watch finds the beat that stopped beating, from exactly one
    of N workers each round (a lease), and a worker that stops hands the watch over at once."""
    from catalyst import alerts, leases
    from workers.heartbeat import ALERT_WATCH_LEASE, AlertWatchThread
    from tests.support import race

    with environment({"DATABASE_URL": pg_url, "CATALYST_WEBHOOK_URL": webhook.url,
                      "CATALYST_HEARTBEAT_INTERVAL": "10",
                      "CATALYST_CLOCK": "sim:2025-03-08T12:00:00-05:00@1"}):  # a Saturday: no session, no beat
        _service("beat", "beat", datetime.now(UTC) - timedelta(minutes=5), status="active")
        real_check, running, overlaps = alerts.check_services, [], []
        lock = threading.Lock()

        def check(rt, now=None):
            with lock:
                running.append(1)
                overlaps.append(len(running))
            try:
                time.sleep(0.01)
                return real_check(rt, now)
            finally:
                with lock:
                    running.pop()

        monkeypatch.setattr(alerts, "check_services", check)
        watches = [AlertWatchThread(f"w{i}@host", 10, settle=False) for i in range(4)]
        for _ in range(20):
            looked = race(4, lambda i: watches[i].tick())
            assert sorted(looked) == [False, False, False, True], looked
            holder = watches[looked.index(True)]
            assert all(w.tick() is (w is holder) for w in watches)  # the holder keeps it while it lives
            holder.stop()  # a clean shutdown: the next round is someone's at once
            assert leases.current_holder(ALERT_WATCH_LEASE) is None
        assert max(overlaps) == 1 and len(overlaps) == 40
        (stale,) = rows(Notification)
        assert (stale.event, stale.context["service"], stale.context["kind"]) == ("service_stale", "beat", "beat")
        assert enqueued == [stale.id]


def test_the_alert_watch_survives_its_failures_and_never_holds_up_a_heartbeat(pg_url, enqueued, monkeypatch,
                                                                              capfd):
    from catalyst import alerts
    from catalyst import notify as notify_mod
    from catalyst.logs import configure_logging
    from workers.heartbeat import AlertWatchThread, HeartbeatThread

    with environment({"DATABASE_URL": pg_url, "CATALYST_HEARTBEAT_INTERVAL": "0.1"}):
        configure_logging("INFO", "test", persist=False)
        sweeps = []
        monkeypatch.setattr(notify_mod, "deliver_pending", lambda rt=None: sweeps.append(1) or 0)

        def broken(rt, now=None):
            raise RuntimeError("boom")

        monkeypatch.setattr(alerts, "check_services", broken)
        watch = AlertWatchThread("w@host", 0.1, settle=False)
        assert watch.tick() and watch.tick()  # no exception escapes; the sweep still ran, once a minute
        assert len(sweeps) == 1
        assert "alert_watch_failed" in capfd.readouterr().err

        stuck, unstick = threading.Event(), threading.Event()

        def hanging(rt, now=None):
            stuck.set()
            unstick.wait(30)
            return []

        monkeypatch.setattr(alerts, "check_services", hanging)
        heart, watcher = HeartbeatThread("w@host", "worker", 0.1), AlertWatchThread("w2@host", 0.1, settle=False)
        heart.start()
        watcher.start()
        try:
            assert stuck.wait(10)
            first = wait_for_beat("w@host", None)
            assert wait_for_beat("w@host", first) > first  # still beating while the watch hangs
        finally:
            unstick.set()
            watcher.stop()
            heart.stop()
            watcher.join(5)
            heart.join(5)



def test_after_its_start_or_an_outage_the_watch_gives_every_service_time_to_beat_before_judging(pg_url, enqueued,
                                                                                            monkeypatch):
    """Every heartbeat failed while the database was away: the first look after it returns must not report
    them all (itself included) as not responding."""
    from catalyst import leases
    from sqlalchemy.exc import OperationalError
    from workers.heartbeat import AlertWatchThread

    with environment({"DATABASE_URL": pg_url, "CATALYST_HEARTBEAT_INTERVAL": "0.2"}):
        watch = AlertWatchThread("w@host", 0.2, settle=False)
        real_acquire = leases.acquire

        def away(*args, **kwargs):
            raise OperationalError("UPDATE leases", {}, Exception("connection refused"))

        monkeypatch.setattr(leases, "acquire", away)
        assert watch.tick() is False
        monkeypatch.setattr(leases, "acquire", real_acquire)
        _service("w@host", "worker", datetime.now(UTC) - timedelta(seconds=5))  # quiet through the outage
        assert watch.tick() is True
        assert rows(Notification) == []  # back, but not yet judging
        time.sleep(0.7)  # the stale threshold (3 intervals) since the outage: judging again
        assert watch.tick() is True
        assert [n.event for n in rows(Notification)] == ["service_stale"]

        started = AlertWatchThread("w2@host", 0.2)  # just started: the services starting with it get to beat
        watch.stop()
        _service("w3@host", "worker", datetime.now(UTC) - timedelta(seconds=5))
        assert started.tick() is True and len(rows(Notification)) == 1
        time.sleep(0.7)
        assert started.tick() is True
        assert [n.context["service"] for n in rows(Notification)] == ["w@host", "w3@host"]


def wait_for_beat(name: str, after: datetime | None) -> datetime:
    from tests.support import wait_for

    return wait_for(lambda: (row := query(lambda s: s.get(ServiceHealth, name))) is not None
                    and (after is None or row.last_heartbeat > after) and row.last_heartbeat, 10,
                    what=f"a heartbeat of {name}")


def test_the_daily_summary_counts_the_market_day_once(db_env, enqueued):
    from catalyst.alerts import send_daily_summary
    from catalyst.db.engine import session_scope
    from catalyst.runtime import get_runtime

    db_env(CATALYST_CLOCK="sim:2025-03-04T16:05:00-05:00@1")
    day = datetime(2025, 3, 4, 10, 0, tzinfo=UTC) + timedelta(hours=5)  # 10:00 New York
    closed = [("AAA", 100.0, 110.0, "take_profit"), ("BBB", 50.0, 47.5, "stop_loss"), ("CCC", 20.0, 21.0, "manual")]
    for i, (symbol, entry, exit_, reason) in enumerate(closed):
        pid = seed_position(symbol, entry, day, qty=10)
        with session_scope() as s:
            s.execute(update(Position).where(Position.id == pid).values(
                status="closed", exit_price=exit_, exit_reason=reason, realized_pnl=(exit_ - entry) * 10,
                realized_pnl_pct=(exit_ / entry - 1) * 100, closed_at=day + timedelta(hours=1 + i)))
    yesterday = seed_position("OLD", 10.0, day - timedelta(days=1))
    with session_scope() as s:
        s.execute(update(Position).where(Position.id == yesterday).values(
            status="closed", exit_price=11.0, exit_reason="manual", realized_pnl=10.0, realized_pnl_pct=10.0,
            closed_at=day - timedelta(days=1) + timedelta(hours=1)))
    held = seed_position("DDD", 30.0, day, qty=5)
    with session_scope() as s:
        s.execute(update(Position).where(Position.id == held).values(last_price=31.0))
    rt = get_runtime()
    close = datetime(2025, 3, 4, 16, 5, tzinfo=UTC) + timedelta(hours=5)
    nid = send_daily_summary(rt, close)
    assert send_daily_summary(rt, close + timedelta(minutes=3)) == nid  # once per market day
    row = query(lambda s: s.get(Notification, nid))
    c = row.context
    assert (c["market_day"], c["trades"], c["opened"], c["realized_pnl"]) == ("2025-03-04", 3, 4, 85.0)
    assert (c["wins"], c["losses"], c["win_rate"]) == (2, 1, 0.6667)
    assert c["exits_by_reason"] == {"manual": 1, "stop_loss": 1, "take_profit": 1}
    assert c["open_positions"] == 1 and c["open"][0]["symbol"] == "DDD" and c["open"][0]["unrealized_pnl"] == 5.0
    assert row.title == "Daily summary 2025-03-04: 3 trades, P&L +85.00 USD"
    assert "Win rate: 67% (2 won, 1 lost)" in row.text and "DDD x5 @ 30 (+5.00)" in row.text
    assert query(lambda s: s.scalar(select(func.count()).select_from(Notification))) == 1


def test_an_exit_tells_the_operator_once_what_was_sold_and_for_how_much(pg_url, tmp_path, webhook, enqueued):
    from catalyst.entries import open_position
    from catalyst.positions import execute_exit, request_exit
    from catalyst.runtime import get_runtime
    from tests.support import write_replay_csv

    start = datetime(2025, 3, 4, 9, 30, tzinfo=UTC) + timedelta(hours=5)  # 09:30 New York
    csv = write_replay_csv(tmp_path / "TEST.csv", "TEST", start, [100.0] * 5 + [103.0] * 60)
    env = {"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"), "CATALYST_MARKET_DATA": f"replay:{csv}",
           "CATALYST_WEBHOOK_URL": webhook.url}
    with environment({**env, "CATALYST_CLOCK": f"sim:{(start + timedelta(minutes=2, seconds=30)).isoformat()}@1"}):
        position = open_position(get_runtime(), symbol="TEST", qty=10, client_order_id="entry-test-1")
    with environment({**env, "CATALYST_CLOCK": f"sim:{(start + timedelta(minutes=8, seconds=30)).isoformat()}@1"}):
        request_exit(get_runtime(), position.id, "take_profit")
        closed = execute_exit(get_runtime(), position.id)
        execute_exit(get_runtime(), position.id)  # a rerun changes nothing and says nothing again
        assert notify_module.flush(5)
        (row,) = [n for n in rows(Notification) if n.event == "position_closed"]
        assert enqueued == [row.id] and row.dedupe_key == f"position_closed:{position.id}"
        assert row.context == {"position_id": position.id, "symbol": "TEST", "qty": 10.0, "entry_price": 100.0,
                               "exit_price": 103.0, "realized_pnl": 30.0, "realized_pnl_pct": 3.0,
                               "reason": "take_profit", "opened_at": position.opened_at.isoformat(),
                               "closed_at": closed.closed_at.isoformat()}
        assert row.occurred_at == closed.closed_at  # market (simulated) time
        assert drive(row.id).status == "sent"
    (body,) = webhook.bodies("position_closed")
    assert "Closed TEST: +30.00 USD (take_profit)" in body["text"]
    assert "sold 10 TEST at 103 (entry 100)" in body["text"]


def test_a_refused_exit_is_a_critical_alert_naming_the_refusal(fake_alpaca, pg_url, redis_url, tmp_path, webhook,
                                                               enqueued):
    from catalyst.entries import open_position
    from catalyst.positions import ExitRefused, execute_exit, request_exit
    from catalyst.runtime import get_runtime
    from tests.alpaca_support import alpaca_env, alpaca_market

    env = alpaca_env(fake_alpaca, pg_url, redis_url, tmp_path, speed=60, CATALYST_WEBHOOK_URL=webhook.url)
    with alpaca_market(fake_alpaca, env, {"ACME": 100.0}):
        position = open_position(get_runtime(), symbol="ACME", qty=10, client_order_id="entry-c1-ACME")
        request_exit(get_runtime(), position.id, "rsi_overbought")
        fake_alpaca.fail("POST", "/v2/orders", "403_pdt")
        with pytest.raises(ExitRefused):
            execute_exit(get_runtime(), position.id)
        with pytest.raises(ExitRefused):
            execute_exit(get_runtime(), position.id)  # blocked until the next session: no second alert
        (row,) = [n for n in rows(Notification) if n.event == "exit_refused"]
        assert row.severity == "critical" and row.dedupe_key.startswith(f"exit_refused:{position.id}:")
        assert "pattern day trading" in row.context["reason"] and row.context["protective_stop"]
        assert drive(row.id).status == "sent"
        assert fake_alpaca.secret not in everything_recorded()
    (body,) = webhook.bodies("exit_refused")
    assert "Exit refused: ACME" in body["text"] and "A stop protects the shares" in body["text"]



def test_a_closed_positions_leftover_stops_are_cancelled_before_the_operator_is_told(fake_alpaca, pg_url, redis_url,
                                                                                     tmp_path, webhook, enqueued,
                                                                                     monkeypatch):
    """Recording the alert writes to the database; a stop still working meanwhile could fill and open a short.
    So the close cancels what is left of its stops first, and only then notifies."""
    from catalyst import positions
    from catalyst.entries import open_position
    from catalyst.runtime import get_runtime
    from tests.alpaca_support import alpaca_env, alpaca_market

    calls = []
    real_cancel, real_notify = positions.cancel_leftover_stops, positions.notify
    monkeypatch.setattr(positions, "cancel_leftover_stops",
                        lambda rt, pid: calls.append("cancel_leftover_stops") or real_cancel(rt, pid))
    monkeypatch.setattr(positions, "notify", lambda event, *a, **kw: calls.append(event) or real_notify(event, *a, **kw))
    env = alpaca_env(fake_alpaca, pg_url, redis_url, tmp_path, speed=60, CATALYST_WEBHOOK_URL=webhook.url)
    with alpaca_market(fake_alpaca, env, {"ACME": 100.0}):
        position = open_position(get_runtime(), symbol="ACME", qty=10, client_order_id="entry-c1-ACME")
        positions.request_exit(get_runtime(), position.id, "take_profit")
        assert positions.execute_exit(get_runtime(), position.id).status == "closed"
    assert calls == ["cancel_leftover_stops", "position_closed"]


@pytest.fixture
def fake_alpaca():
    from tests.alpaca_support import START
    from tests.fake_alpaca import FakeAlpaca

    with FakeAlpaca(now=START) as api:
        yield api
