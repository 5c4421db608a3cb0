"""Bare Celery: a no-op task with the Catalyst worker's settings, for the same-run baseline.

Same broker (Redis, the bench's database), JSON only, prefetch 1, late acks, results ignored; started
with the same worker flags (prefork, -c, --without-gossip --without-mingle). The task counts itself
done with one Redis INCR (about a tenth of a millisecond) so the bench knows exactly when N have run.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUEUE = os.environ.get("BENCH_NOOP_QUEUE", "bench_noop")
DONE_KEY = "bench:noop:done"

app = Celery("bench_noop", broker=BROKER)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"], task_ignore_result=True,
                result_backend=None, worker_prefetch_multiplier=1, task_acks_late=True,
                task_reject_on_worker_lost=True, worker_send_task_events=False, task_default_queue=QUEUE,
                broker_connection_retry_on_startup=True,
                broker_transport_options={"visibility_timeout": 600, "socket_connect_timeout": 5,
                                          "socket_timeout": 30, "socket_keepalive": True,
                                          "health_check_interval": 10})

_counter: redis.Redis | None = None


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(BROKER)
    _counter.incr(DONE_KEY)
