"""The shared Alpaca request budget and the guarded alpaca-py HTTP session.

Real Redis (DB 9), real processes hammering one bucket, a real local HTTP server standing in for
Alpaca, and the real alpaca-py ``TradingClient`` pointed at it with ``url_override``.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from requests.adapters import HTTPAdapter

from catalyst.alpaca_http import (GuardedSession, api_error_code, api_error_status, guard_client,
                                  rate_limit_reset, retry_after_rate_limit)
from catalyst.ratelimit import (LocalTokenBucket, RateLimitTimeout, RedisTokenBucket, TokenBucket,
                                bucket_from_settings)

ROOT = Path(__file__).resolve().parents[1]
LIMIT, WINDOW = 20, 2.0          # small stand-in for Alpaca's 200 per 60 s
DURATION = 5.0                   # hammering time
WORKERS = 4


def max_in_window(times: list[float], window: float) -> int:
    """The largest number of grants in any half-open window [t, t + window)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def window_capacity(duration: float) -> int:
    """The most grants any limiter honouring LIMIT per WINDOW can make in ``duration`` seconds."""
    return LIMIT * math.ceil(duration / WINDOW)


# --------------------------------------------------------------------------- Redis bucket

HAMMER = r"""
import json, sys, time
from catalyst.ratelimit import RedisTokenBucket, RateLimitTimeout
url, name = sys.argv[1:3]
start, end, rate, per = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
bucket = RedisTokenBucket(url, name=name, rate=rate, per=per)
bucket.pause_remaining()  # connect and load the scripts before the start line
time.sleep(max(0.0, start - time.time()))
grants = []
while (left := end - time.time()) > 0:
    try:
        bucket.acquire(timeout=left)
    except RateLimitTimeout:
        break
    grants.append([bucket.last_grant, time.time()])
print(json.dumps(grants))
"""


def undisturbed(redis_url: str, attempt, tries: int = 2):
    """Run ``attempt()`` (which asserts); rerun it if the shared test DB was flushed meanwhile.

    DB 9 is shared with every other test run on this machine, and a concurrent ``FLUSHDB`` wipes
    the bucket's log mid-test. A sentinel key tells such interference apart from a real failure.
    """
    client = redis.Redis.from_url(redis_url)
    for _ in range(tries):
        sentinel = f"test:sentinel:{uuid.uuid4().hex}"
        client.set(sentinel, 1)
        try:
            result = attempt()
        except AssertionError:
            if client.exists(sentinel):
                raise
            continue
        if client.exists(sentinel):
            client.delete(sentinel)
            return result
    pytest.fail(f"the Redis test DB was flushed by another process during all {tries} attempts")


def test_redis_bucket_never_exceeds_the_window_across_processes(redis_url):
    undisturbed(redis_url, lambda: hammer_redis(redis_url))


def hammer_redis(redis_url: str) -> None:
    name = f"hammer-{uuid.uuid4().hex[:8]}"
    start = time.time() + 2.0
    end = start + DURATION
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, redis_url, name, str(start), str(end), str(LIMIT),
                               str(WINDOW)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env)
             for _ in range(WORKERS)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        results.append(json.loads(out))

    server = [g[0] for r in results for g in r]   # the granted slot, Redis TIME
    client = [g[1] for r in results for g in r]   # when acquire() returned in the worker
    assert all(c >= s - 0.005 for r in results for s, c in r)
    assert max_in_window(server, WINDOW) <= LIMIT
    # What the workers actually experienced (a little slack for scheduling delay after the grant).
    assert max_in_window(client, WINDOW - 0.15) <= LIMIT

    # Throughput, measured from the first grant (a slow process start does not count against it).
    span = end - min(server)
    ratio = len(server) / window_capacity(span)
    print(f"\nredis bucket: {len(server)} grants ({[len(r) for r in results]} per process) in {span:.2f}s; "
          f"{ratio:.0%} of the window maximum {window_capacity(span)}, "
          f"{len(server) / (LIMIT / WINDOW * span):.0%} of rate x duration")
    assert ratio >= 0.8, f"limiter too slow: {len(server)} of {window_capacity(span)}"
    # First come, first served: no process is starved for more than about one window.
    for r in results:
        slots = [start] + [g[0] for g in r] + [end]
        assert max(b - a for a, b in zip(slots, slots[1:])) <= WINDOW + 0.5, [len(r) for r in results]


def test_redis_pause_makes_every_acquirer_wait_until_the_reset(redis_url):
    undisturbed(redis_url, lambda: pause_redis(redis_url))


def pause_redis(redis_url: str) -> None:
    name = f"paused-{uuid.uuid4().hex[:8]}"
    other_worker = RedisTokenBucket(redis_url, name=name, rate=100, per=1.0)
    reset = time.time() + 1.0
    other_worker.pause_until(reset)
    other_worker.pause_until(reset - 5)            # an older reset never shortens the pause
    assert 0.8 < other_worker.pause_remaining() <= 1.0

    buckets = [RedisTokenBucket(redis_url, name=name, rate=100, per=1.0) for _ in range(3)]
    t0 = time.monotonic()
    with pytest.raises(RateLimitTimeout):
        buckets[0].acquire(timeout=0.2)            # known not to fit: fails at once, sends nothing
    assert time.monotonic() - t0 < 0.15

    grants: list[tuple[float, float]] = []

    def worker(bucket):
        waited = bucket.acquire()
        grants.append((waited, bucket.last_grant))

    threads = [threading.Thread(target=worker, args=(b,)) for b in buckets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(grants) == 3
    for waited, granted_at in grants:
        assert granted_at >= reset - 1e-6             # (µs resolution)
        assert waited >= 0.7
    assert other_worker.pause_remaining() == 0.0


def test_redis_burst_smoothing_and_cost(redis_url):
    undisturbed(redis_url, lambda: burst_redis(redis_url))


def burst_redis(redis_url: str) -> None:
    bucket = RedisTokenBucket(redis_url, name=f"burst-{uuid.uuid4().hex[:8]}", rate=20, per=2.0, burst=5)
    assert bucket.acquire(cost=5) < 0.05           # the burst is available at once
    t0 = time.monotonic()
    bucket.acquire()                               # then the 6th waits for the 0.5 s sub-window
    assert 0.45 <= time.monotonic() - t0 < 0.8
    with pytest.raises(ValueError):
        bucket.acquire(cost=6)
    with pytest.raises(ValueError):
        RedisTokenBucket(redis_url, rate=10, burst=11)


def test_bucket_from_settings(redis_url):
    assert isinstance(bucket_from_settings(SimpleNamespace(redis_url=redis_url)), RedisTokenBucket)
    local = bucket_from_settings(SimpleNamespace(redis_url=None))
    assert isinstance(local, LocalTokenBucket) and (local.rate, local.per) == (200, 60.0)
    assert isinstance(local, TokenBucket)
    assert redis_url not in repr(bucket_from_settings(SimpleNamespace(redis_url=redis_url)))


# --------------------------------------------------------------------------- local bucket

def test_local_bucket_never_exceeds_the_window_across_threads():
    bucket = LocalTokenBucket(rate=LIMIT, per=WINDOW)
    start = time.monotonic() + 0.2
    end = start + DURATION
    per_thread: list[list[tuple[float, float]]] = [[] for _ in range(WORKERS)]

    def hammer(mine):
        time.sleep(max(0.0, start - time.monotonic()))
        while (left := end - time.monotonic()) > 0:
            try:
                bucket.acquire(timeout=left)
            except RateLimitTimeout:
                return
            mine.append((bucket.last_grant, time.monotonic()))

    threads = [threading.Thread(target=hammer, args=(mine,)) for mine in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DURATION + 5)
    grants = [g for mine in per_thread for g in mine]
    assert max_in_window([g for g, _ in grants], WINDOW) <= LIMIT
    assert max_in_window([c for _, c in grants], WINDOW - 0.15) <= LIMIT
    span = end - min(g for g, _ in grants)
    ratio = len(grants) / window_capacity(span)
    print(f"\nlocal bucket: {len(grants)} grants ({[len(m) for m in per_thread]} per thread), "
          f"{ratio:.0%} of the window maximum")
    assert ratio >= 0.8
    for mine in per_thread:
        slots = [start] + [g for g, _ in mine] + [end]
        assert max(b - a for a, b in zip(slots, slots[1:])) <= WINDOW + 0.5


def test_local_pause_timeout_and_burst():
    bucket = LocalTokenBucket(rate=20, per=2.0, burst=5)
    bucket.acquire(cost=5)
    t0 = time.monotonic()
    with pytest.raises(RateLimitTimeout):
        bucket.acquire(timeout=0.1)
    assert time.monotonic() - t0 < 0.05
    assert 0.45 <= bucket.acquire() < 0.8

    paused = LocalTokenBucket(rate=100, per=1.0)
    reset = time.time() + 0.6
    paused.pause_until(reset)
    paused.pause_until(reset - 10)
    assert 0.4 < paused.pause_remaining() <= 0.6
    waits: list[float] = []
    threads = [threading.Thread(target=lambda: waits.append(paused.acquire())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(waits) == 3 and min(waits) >= 0.45
    assert time.time() >= reset and paused.pause_remaining() == 0.0


# --------------------------------------------------------------------------- guarded HTTP

class FakeAlpaca(ThreadingHTTPServer):
    """A tiny Alpaca stand-in. ``plan(method, path, body) -> (status, headers, body)``; requests
    are recorded as ``(method, path, arrival_time, body)``."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, float, dict | None]] = []
        self.plan = lambda method, path, body: (200, {}, {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, method: str) -> int:
        return sum(1 for m, *_ in self.seen if m == method)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, time.time(), body))
        status, headers, payload = self.server.plan(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve


@pytest.fixture
def fake_alpaca():
    server = FakeAlpaca()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class RecordingAdapter(HTTPAdapter):
    """The real transport, noting the timeout every request was sent with."""

    def __init__(self):
        super().__init__()
        self.timeouts: list = []

    def send(self, request, **kwargs):
        self.timeouts.append(kwargs.get("timeout"))
        return super().send(request, **kwargs)


RATE_LIMITED = {"code": 42910000, "message": "rate limit exceeded"}


def order_json(body: dict) -> dict:
    now = datetime.now(UTC).isoformat()
    return {"id": str(uuid.uuid4()), "client_order_id": body["client_order_id"], "created_at": now,
            "updated_at": now, "submitted_at": now, "asset_id": str(uuid.uuid4()), "symbol": body["symbol"],
            "asset_class": "us_equity", "qty": str(body["qty"]), "filled_qty": "0", "order_class": "simple",
            "order_type": "market", "type": "market", "side": body["side"], "time_in_force": body["time_in_force"],
            "status": "accepted", "extended_hours": False}


def trading_client(url: str) -> TradingClient:
    return TradingClient(api_key="k", secret_key="s", paper=True, url_override=url)


def test_429_pauses_every_worker_until_the_reset(redis_url, fake_alpaca):
    undisturbed(redis_url, lambda: shared_back_off(redis_url, fake_alpaca))


def shared_back_off(redis_url: str, fake_alpaca: FakeAlpaca) -> None:
    fake_alpaca.seen.clear()
    name = f"alpaca-{uuid.uuid4().hex[:8]}"
    reset = int(time.time()) + 2                  # Alpaca sends whole epoch seconds

    def plan(method, path, body):
        if len(fake_alpaca.seen) == 1:
            return 429, {"X-RateLimit-Reset": reset, "X-RateLimit-Remaining": 0}, RATE_LIMITED
        return 200, {}, {"ok": True}

    fake_alpaca.plan = plan
    worker_a = GuardedSession(RedisTokenBucket(redis_url, name=name), timeout=2.0)
    worker_b = GuardedSession(RedisTokenBucket(redis_url, name=name), timeout=2.0)   # another worker
    adapters = [RecordingAdapter(), RecordingAdapter()]
    worker_a.mount("http://", adapters[0])
    worker_b.mount("http://", adapters[1])

    first = worker_a.get(fake_alpaca.url + "/v2/account")
    assert first.status_code == 429 and first.json() == RATE_LIMITED      # returned unchanged
    assert 0 < worker_b.bucket.pause_remaining() <= reset - time.time() + 0.01

    second = worker_b.get(fake_alpaca.url + "/v2/clock")
    assert second.status_code == 200
    assert fake_alpaca.seen[1][2] >= reset                                  # it waited for the reset
    assert [a.timeouts for a in adapters] == [[(2.0, 2.0)], [(2.0, 2.0)]]
    assert worker_a.get(fake_alpaca.url + "/v2/clock", timeout=7).status_code == 200
    assert adapters[0].timeouts[-1] == 7                                    # an explicit timeout wins


def test_guard_client_stops_alpaca_retrying_an_order_submit(fake_alpaca):
    fake_alpaca.plan = lambda method, path, body: (429, {"X-RateLimit-Reset": int(time.time()) + 30}, RATE_LIMITED)
    order = MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                               client_order_id="exit-42")

    # Control: unguarded, alpaca-py re-sends the same order on 429 (wait shortened for the test).
    unguarded = trading_client(fake_alpaca.url)
    unguarded._retry_wait = 0
    with pytest.raises(APIError):
        unguarded.submit_order(order)
    assert fake_alpaca.count("POST") == 4
    fake_alpaca.seen.clear()

    bucket = LocalTokenBucket()
    client = guard_client(trading_client(fake_alpaca.url), timeout=3.0, bucket=bucket)
    assert client._retry == 0 and isinstance(client._session, GuardedSession)
    adapter = RecordingAdapter()
    client._session.mount("http://", adapter)
    with pytest.raises(APIError) as caught:
        client.submit_order(order)
    assert fake_alpaca.count("POST") == 1
    assert api_error_status(caught.value) == 429 and api_error_code(caught.value) == 42910000
    assert 25 < bucket.pause_remaining() <= 30
    assert adapter.timeouts == [(3.0, 3.0)]


def test_retry_after_rate_limit_resubmits_the_same_order_after_the_pause(fake_alpaca):
    reset = time.time() + 1.0

    def plan(method, path, body):
        if fake_alpaca.count("POST") == 1:
            return 429, {"Retry-After": "1"}, RATE_LIMITED
        return 200, {}, order_json(body)

    fake_alpaca.plan = plan
    bucket = LocalTokenBucket()
    client = guard_client(trading_client(fake_alpaca.url), timeout=3.0, bucket=bucket)
    order = MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                               client_order_id="exit-7")
    placed = retry_after_rate_limit(lambda: client.submit_order(order))
    assert placed.client_order_id == "exit-7"
    posts = [s for s in fake_alpaca.seen if s[0] == "POST"]
    assert len(posts) == 2
    assert [p[3]["client_order_id"] for p in posts] == ["exit-7", "exit-7"]
    assert posts[1][2] >= reset - 0.05                 # resent only once the pause was over

    # Other errors are not retried.
    fake_alpaca.seen.clear()
    fake_alpaca.plan = lambda method, path, body: (422, {}, {"code": 40010001, "message": "duplicate"})
    with pytest.raises(APIError) as caught:
        retry_after_rate_limit(lambda: client.submit_order(order))
    assert fake_alpaca.count("POST") == 1
    assert api_error_status(caught.value) == 422 and api_error_code(caught.value) == 40010001

    # Attempts are bounded.
    fake_alpaca.seen.clear()
    fake_alpaca.plan = lambda method, path, body: (429, {"Retry-After": "0.05"}, RATE_LIMITED)
    with pytest.raises(APIError):
        retry_after_rate_limit(lambda: client.get_account(), attempts=3)
    assert fake_alpaca.count("GET") == 3


def test_every_request_has_a_timeout():
    silent = socket.socket()                           # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    # Without a timeout the call would hang forever; closing the socket later resets the
    # connection so such a regression fails instead of hanging the suite.
    closer = threading.Timer(5.0, silent.close)
    closer.start()
    try:
        client = guard_client(trading_client(f"http://127.0.0.1:{silent.getsockname()[1]}"),
                              timeout=0.5, bucket=LocalTokenBucket())
        t0 = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            client.get_account()
        assert time.monotonic() - t0 < 1.5
    finally:
        closer.cancel()
        silent.close()


def test_error_helpers_and_reset_parsing():
    assert api_error_code(APIError("not json")) is None
    assert api_error_status(APIError("{}")) is None
    assert api_error_status(ValueError("x")) is None and api_error_code(ValueError("x")) is None
    now = 1_700_000_000.0
    assert rate_limit_reset({"X-RateLimit-Reset": "1700000042"}, now) == 1_700_000_042
    assert rate_limit_reset({"Retry-After": "3"}, now) == now + 3
    assert rate_limit_reset({"Retry-After": "Tue, 14 Nov 2023 22:14:00 GMT"}, now) == 1_700_000_040
    assert rate_limit_reset({"X-RateLimit-Reset": "soon"}, now) is None
    assert rate_limit_reset({}, now) is None
    with pytest.raises(ValueError):
        GuardedSession(LocalTokenBucket(), timeout=0)
