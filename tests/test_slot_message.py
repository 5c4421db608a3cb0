"""Beat's slot message is the message ``app.send_task`` would have sent: same headers, properties and body,
so a worker cannot tell them apart (real Redis; the messages are read back from the queue as a worker gets them).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.support import queued_messages
from tests.test_beat_slots import production_like_app
from workers.slot_message import publish_slot

TASK, QUEUE = "catalyst.monitor_position", "monitor"
ARGS, KWARGS = [42], {"slot": "2025-03-04T15:15:00+00:00"}
HEADERS = {"catalyst_slot": KWARGS["slot"], "catalyst_entry": "monitor-position-42"}
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "expires"}  # differ message to message


@pytest.fixture
def app(redis_url):
    celery_app = production_like_app(redis_url)
    yield celery_app
    celery_app.close()


def both_ways(app, expires: float) -> tuple[dict, dict]:
    """(send_task's message, publish_slot's), as they sit in the queue."""
    with app.producer_or_acquire() as producer:
        with producer.batch(max_size=16):
            app.send_task(TASK, args=ARGS, kwargs=KWARGS, queue=QUEUE, expires=expires, headers=dict(HEADERS),
                          producer=producer, declare=[])
            publish_slot(app, producer, task=TASK, args=list(ARGS), kwargs=dict(KWARGS), queue=QUEUE,
                         expires=expires, headers=dict(HEADERS))
    newest_first = queued_messages(app.conf.broker_url, QUEUE)  # LPUSH: the last sent is first
    assert len(newest_first) == 2
    return newest_first[1], newest_first[0]


def without(fields: dict, drop: set[str]) -> dict:
    return {k: v for k, v in fields.items() if k not in drop}


def test_a_slot_message_has_the_headers_properties_and_body_send_task_gives_it(app):
    celery, ours = both_ways(app, expires=120.0)
    assert ours["body"] == celery["body"], "args, kwargs and embed decode the same"
    assert without(ours["headers"], PER_MESSAGE) == without(celery["headers"], PER_MESSAGE)
    assert ours["headers"]["catalyst_entry"] == "monitor-position-42"
    assert ours["headers"]["argsrepr"] == "[42]" and ours["headers"]["kwargsrepr"] == repr(KWARGS)
    for key in ("content-type", "content-encoding"):
        assert ours[key] == celery[key]
    assert without(ours["properties"], PER_MESSAGE | {"delivery_info"}) == \
        without(celery["properties"], PER_MESSAGE | {"delivery_info"})
    assert ours["properties"]["delivery_info"] == celery["properties"]["delivery_info"]
    assert ours["headers"]["id"] != celery["headers"]["id"], "each message its own task id"
    assert ours["headers"]["root_id"] == ours["headers"]["id"], "a slot's task is the root of its own work"


def test_a_slot_message_expires_when_send_task_would_expire_it(app):
    celery, ours = both_ways(app, expires=120.0)
    gap = datetime.fromisoformat(ours["headers"]["expires"]) - datetime.fromisoformat(celery["headers"]["expires"])
    assert abs(gap.total_seconds()) < 1, "both 120 s after they were built, a moment apart"
    assert ours["properties"]["expiration"] == celery["properties"]["expiration"]


def test_an_overlong_argument_repr_is_cut_at_celerys_limit(app):
    with app.producer_or_acquire() as producer:
        publish_slot(app, producer, task=TASK, args=["x" * 5000], kwargs=dict(KWARGS), queue=QUEUE, expires=60.0,
                     headers=dict(HEADERS))
    (message,) = queued_messages(app.conf.broker_url, QUEUE)
    assert len(message["headers"]["argsrepr"]) == 1024


def test_the_tasks_beat_sends_set_no_option_send_task_would_have_added_to_their_message():
    """``send_task`` merges a registered task's own execution options (priority, time limits, serializer...) into
    its message; ``publish_slot`` does not. That is the same message only while the tasks beat sends declare none:
    a task that gains one must have ``publish_slot`` pass it on."""
    import beat_schedule
    from catalyst.celery import app as catalyst_app
    from catalyst.settings import Settings

    catalyst_app.loader.import_default_modules()
    names = {e.task for e in beat_schedule.static_entries(Settings(_env_file=None))}
    names.add(beat_schedule.monitor_entry(1, Settings(_env_file=None)).task)
    defaults = {"serializer": catalyst_app.conf.task_serializer}  # what send_task_message uses anyway
    declared = {name: {k: v for k, v in catalyst_app.tasks[name]._get_exec_options().items()
                       if v is not None and defaults.get(k) != v} for name in sorted(names)}
    assert declared == {name: {} for name in sorted(names)}
