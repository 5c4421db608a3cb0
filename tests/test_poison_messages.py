"""Poison messages on real Redis queues cannot take a real worker down (issue 8, point 2).

Malformed raw entries are written straight into the ``exit`` and ``monitor`` Redis lists, ahead
of a real exit and a real monitor check sent through Celery. On today's Celery the first of them
ends the worker (``Unrecoverable error``) and puts itself back at the head of its queue, so the
exit behind it never runs. Each must instead be dropped with one ``activity_log`` row, while
the worker — the same process — goes on to run the exit exactly once.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import Counter

import pytest
import redis
from celery import Celery
from kombu import Message
from sqlalchemy import func, select
from structlog.testing import capture_logs

from catalyst.db.models import ActivityLog, Decision, Order, PaperOrder, Position, ServiceHealth
from tests.support import environment, query, wait_for, write_replay_csv
from tests.test_e2e_loop import SESSION_OPEN, base_env, cli

VALID_BODY = [[1], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def envelope(queue: str, body: bytes, *, task: object = "catalyst.exit_position", task_id: str | None = "fresh",
             content_type: str = "application/json", headers: dict | None = None) -> tuple[str | None, str]:
    """A Redis queue entry laid out as kombu writes one (base64 body, delivery tag in properties)."""
    task_id = str(uuid.uuid4()) if task_id == "fresh" else task_id
    message_headers = {"lang": "py", "task": task, "retries": 0, "timelimit": [None, None], **(headers or {})}
    if task_id is not None:
        message_headers["id"] = task_id
    entry = {"body": base64.b64encode(body).decode(), "content-encoding": "utf-8", "content-type": content_type,
             "headers": message_headers,
             "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                            "delivery_info": {"exchange": "", "routing_key": queue},
                            "delivery_tag": str(uuid.uuid4())}}
    return task_id, json.dumps(entry)


def poison(queue: str) -> list[tuple[str, str | None, str]]:
    """``(kind of rejection, task id, raw entry)`` for every malformed shape, on ``queue``."""
    task = {"exit": "catalyst.exit_position", "monitor": "catalyst.monitor_position"}[queue]
    shapes = [
        ("malformed", envelope(queue, b'{"weird": 1}', task=task)),
        ("malformed", envelope(queue, b'"hello"', task=task)),
        ("malformed", envelope(queue, b"null", task=task)),
        ("malformed", envelope(queue, b"[1]", task=task)),
        ("malformed", envelope(queue, b'[[], "x", {}]', task=task)),
        ("malformed", envelope(queue, b'[[], {}, "x"]', task=task)),
        ("malformed", envelope(queue, json.dumps(VALID_BODY).encode(), task=task, task_id=None)),
        ("malformed", envelope(queue, json.dumps(VALID_BODY).encode(), task=[task])),
        ("malformed", envelope(queue, json.dumps(VALID_BODY).encode(), task=task, headers={"timelimit": 5})),
        ("undecodable", envelope(queue, b"[[1], {", task=task)),
        ("invalid", envelope(queue, b"\x80\x04N.", task=task, content_type="application/x-python-serialize")),
        ("unknown_task", envelope(queue, json.dumps(VALID_BODY).encode(), task="catalyst.no_such_task")),
    ]
    entries = [(kind, task_id, raw) for kind, (task_id, raw) in shapes]
    entries.append(("unreadable_envelope", None, "not json {"))
    entries.append(("unreadable_envelope", None, json.dumps({"body": "", "headers": [1], "properties": {}})))
    # kombu's JSON reader turns tagged objects into Python ones and raises TypeError/AttributeError on bad ones,
    # and a deep enough nesting raises RecursionError: none of these may end the worker either.
    entries.append(("unreadable_envelope", None, json.dumps({"__type__": "uuid", "__value__": "x"})))
    entries.append(("unreadable_envelope", None, json.dumps({"body": "", "properties": {},
                                                              "headers": {"__type__": "uuid", "__value__": 5}})))
    entries.append(("unreadable_envelope", None, "[" * 100_000 + "]" * 100_000))
    return entries


def send(task: str, *args) -> None:
    """Send a task the way Catalyst does (its routes, JSON), through the test's Redis."""
    import celeryconfig

    client = Celery("catalyst-poison-test", set_as_current=False)
    client.config_from_object(celeryconfig)
    client.conf.update(broker_url=os.environ["REDIS_URL"], broker_transport=None)
    try:
        client.send_task(task, args=list(args))
    finally:
        client.close()


@pytest.fixture
def pg_redis_env(tmp_path, pg_url, redis_url):
    env = base_env(tmp_path)
    flat = write_replay_csv(tmp_path / "FLAT.csv", "FLAT", SESSION_OPEN, [50.0] * 300)
    env.update(DATABASE_URL=pg_url, REDIS_URL=redis_url,
               CATALYST_MARKET_DATA=f"{env['CATALYST_MARKET_DATA']},{flat}")
    with environment(env):
        yield env


@pytest.mark.e2e
def test_poison_messages_are_dropped_with_a_trace_and_the_exit_behind_them_runs_once(pg_redis_env, redis_url,
                                                                                        stack):
    exiting = json.loads(cli("open", "TEST", "--qty", "10", "--stop", "95", "--json").stdout)["id"]
    watched = json.loads(cli("open", "FLAT", "--qty", "1", "--json").stdout)["id"]
    client = redis.Redis.from_url(redis_url)
    bad = [(queue, *entry) for queue in ("exit", "monitor") for entry in poison(queue)]
    for queue, _, _, raw in bad:
        client.lpush(queue, raw)  # kombu pushes left and pops right: these are ahead of anything sent below
    send("catalyst.exit_position", exiting)
    send("catalyst.monitor_position", watched)
    assert [client.llen(q) for q in ("exit", "monitor")] == [len(poison(q)) + 1 for q in ("exit", "monitor")]

    worker = stack.worker(concurrency=2)
    closed = wait_for(lambda: query(lambda s: (p := s.get(Position, exiting)).status == "closed" and p), 90,
                      what="the exit queued behind the poison messages to close its position")
    assert closed.exit_reason == "manual"
    wait_for(lambda: query(lambda s: s.scalar(select(func.count()).select_from(Decision).where(
        Decision.kind == "monitor", Decision.position_id == watched))), 60,
        what="the monitor check queued behind the poison messages to run")
    rejections = wait_for(lambda: (rows := query(lambda s: s.scalars(select(ActivityLog).where(
        ActivityLog.event == "message_rejected")).all())) and len(rows) >= len(bad) and rows, 60,
        what="a rejection row for every poison message")

    assert worker.alive(), worker.log_text()[-3000:]
    assert "Unrecoverable error" not in worker.log_text()
    health = query(lambda s: s.scalar(select(ServiceHealth).where(ServiceHealth.kind == "worker")))
    assert health.pid == worker.popen.pid  # the process that came online is the one still consuming
    assert health.errors >= sum(1 for _, kind, *_ in bad if kind != "unreadable_envelope")

    assert len(rejections) == len(bad)
    assert Counter(r.details["kind"] for r in rejections) == Counter(kind for _, kind, *_ in bad)
    assert {r.details["task_id"] for r in rejections} - {None} == {task_id for _, _, task_id, _ in bad} - {None}
    assert all(len(json.dumps(r.details)) < 800 for r in rejections)  # bounded: reasons, never bodies
    assert not any("weird" in json.dumps(r.details) or "hello" in json.dumps(r.details) for r in rejections)

    exits = query(lambda s: s.scalars(select(Order).where(Order.position_id == exiting, Order.purpose == "exit")).all())
    assert [o.status for o in exits] == ["filled"]
    sells = query(lambda s: s.scalars(select(PaperOrder).where(PaperOrder.side == "sell",
                                                               PaperOrder.status == "filled")).all())
    assert len(sells) == 1

    # Nothing poisonous is left to come back: not on a queue, not waiting unacknowledged for redelivery.
    wait_for(lambda: client.llen("exit") == 0 and client.llen("monitor") == 0 and client.hlen("unacked") == 0, 30,
             what="the queues to drain")
    assert worker.alive()


def kombu_message(body: bytes, headers: dict) -> Message:
    return Message(body=body, content_type="application/json", content_encoding="utf-8", headers=headers,
                   delivery_info={"exchange": "", "routing_key": "exit"}, accept=["application/json"])


@pytest.mark.parametrize("options", [{}, {"countdown": 30, "expires": 60, "time_limit": 10, "soft_time_limit": 5,
                                          "retries": 2, "shadow": "x", "parent_id": "p", "root_id": "r"}])
def test_every_message_celery_itself_sends_passes_the_poison_screen(options):
    from catalyst.celery import app
    from workers.poison import defect

    sent = app.amqp.as_task_v2(str(uuid.uuid4()), "catalyst.exit_position", args=[7], kwargs={}, **options)
    body = json.dumps(sent.body).encode()
    assert defect(kombu_message(body, sent.headers), {"catalyst.exit_position"}) is None


def test_a_rejection_is_still_logged_when_postgresql_is_down(tmp_path):
    from workers.poison import describe, record_rejection

    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/catalyst", "CATALYST_VAR_DIR": str(tmp_path)}
    message = kombu_message(b'{"weird": 1}', {"task": "catalyst.exit_position", "id": "abc"})
    with environment(env), capture_logs() as logs:
        record_rejection("malformed", "body is not [args, kwargs, embed]: dict", "worker@x", describe(message))
    assert [entry["event"] for entry in logs] == ["message_rejected", "message_rejection_unrecorded"]
    assert logs[0]["task_id"] == "abc" and logs[0]["queue"] == "exit"


def test_an_empty_poll_is_not_a_poison_message(monkeypatch):
    """kombu raises ``Empty`` when BRPOP times out with nothing to read: that is an idle queue, not an
    unreadable entry, and must write no rejection (it used to, now and then, even during a database outage)."""
    from queue import Empty
    from types import SimpleNamespace

    from kombu.transport import redis as kombu_redis

    import workers.transport as transport

    def idle(self, **options):
        raise Empty()

    rejected = []
    monkeypatch.setattr(kombu_redis.Channel, "_brpop_read", idle)
    monkeypatch.setattr(transport, "record_rejection", lambda *args, **kw: rejected.append(args))
    channel = object.__new__(transport.Channel)
    channel.connection = SimpleNamespace(handed_over=False, connection_errors=(ConnectionError,))
    with pytest.raises(Empty):
        channel._brpop_read()
    assert rejected == []
