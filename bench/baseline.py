"""The same-run bare-Celery baseline: N no-op tasks published in one go through the bench's Redis,
drained by a worker with the Catalyst worker's settings; tasks per second."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from bench import cpu, procs

WARM_UP_TASKS = 50
MIN_TASKS = 1000  # fewer drain in ~0.1 s: start-up noise, not throughput


def _publish(app, count: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task("bench.noop", producer=producer)


def _wait_done(client: redis.Redis, key: str, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while int(client.get(key) or 0) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare Celery ran {int(client.get(key) or 0)} of {target} no-op tasks in {timeout:.0f} s")
        time.sleep(0.005)


def measure(redis_url: str, n: int, concurrency: int, log_dir: Path) -> dict:
    """Start the no-op worker, warm it up, time N tasks from the first publish to the last done, stop it."""
    env = {"BENCH_REDIS_URL": redis_url}
    import os

    os.environ["BENCH_REDIS_URL"] = redis_url  # noop_app reads it at import, here and in the worker
    from bench import noop_app

    noop_app.app.conf.broker_url = redis_url
    client = redis.Redis.from_url(redis_url)
    worker = procs.noop_worker(env, log_dir, concurrency, noop_app.QUEUE)
    try:
        procs.wait_log(worker, "ready.", timeout=60)
        client.delete(noop_app.DONE_KEY)
        _publish(noop_app.app, WARM_UP_TASKS)
        _wait_done(client, noop_app.DONE_KEY, WARM_UP_TASKS, timeout=60)
        client.delete(noop_app.DONE_KEY)
        cpu_before = cpu.snapshot(worker=worker.popen.pid, redis_url=redis_url)
        started = time.perf_counter()
        _publish(noop_app.app, n)
        published = time.perf_counter() - started
        _wait_done(client, noop_app.DONE_KEY, n, timeout=max(60.0, n / 50))
        drain = time.perf_counter() - started
        cpu_ms = cpu.per_item_ms(cpu_before, cpu.snapshot(worker=worker.popen.pid, redis_url=redis_url), n)
    finally:
        procs.stop(worker)
    return {"tasks": n, "drain_s": round(drain, 3), "publish_s": round(published, 3),
            "tasks_per_s": round(n / drain, 1), "cpu_ms_per_task": cpu_ms}
